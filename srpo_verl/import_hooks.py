"""Run a function right after a module's first import, so a patch costs nothing where that module is not used.

The `verl.plugins` entry point runs in every Ray worker: the TaskRunner, TransferQueue, the
training worker, the rollout server, its load balancer, the agent-loop and reward workers. Each
patch the plugin applies only matters in a process that uses the patched module, but importing
that module to patch it eagerly cost every process all of them (~2.5 s of CPU each on the CPU
backend). `when_imported(name, fn)` calls `fn(module)` once the module has been executed, in
whichever process imports it, or at once when it already is.

The function runs inside that module's import, after its body and before its parent package binds
it as an attribute, so it should take the module it is given rather than re-import it through the
parent (`from package import module` still works: Python falls back to sys.modules). An exception
raised by the function fails that import, loudly, where verl would have swallowed it in the plugin.

Why not wrapt's post-import hooks, which do the same: wrapt is not a dependency of verl or of this
plugin (it is installed here only through smart_open), and these 60 lines avoid adding one.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Callable

_pending: dict[str, list[Callable]] = {}
_lock = threading.RLock()


def when_imported(name: str, fn: Callable) -> None:
    """Call fn(module) once module `name` is imported (now, if it is in sys.modules already)."""
    module = sys.modules.get(name)
    if module is not None:
        fn(module)
        return
    with _lock:
        _pending.setdefault(name, []).append(fn)
        if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _Finder())


def pending() -> list[str]:
    """Modules with a function still waiting for their import."""
    with _lock:
        return sorted(_pending)


class _HookedLoader:
    """The module's own loader, with the waiting functions run after its exec_module (every other
    attribute is the wrapped loader's, so source, file name and resources resolve as before)."""

    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        with _lock:
            functions = _pending.pop(self._name, [])
        for fn in functions:
            fn(module)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asks the finders after it and wraps the loader of a waited-for module."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, fullname)
                return spec
        return None

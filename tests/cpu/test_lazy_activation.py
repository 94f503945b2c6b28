"""The plugin patches and registers each verl module when that module is imported, so a Ray worker
pays only for the modules it uses (srpo_verl/import_hooks.py), and the processes that only route
rollout requests import no verl at all."""

import importlib
import json
import os
import subprocess
import sys

from srpo_verl import import_hooks

LAZY = (
    "verl.workers.engine.fsdp.transformer_impl",
    "verl.trainer.ppo.v1",
    "verl.trainer.ppo.core_algos",
    "srpo_verl.integration.trainer",
    "srpo_verl.cpu.hf_rollout",
)


def _fresh_python(code: str, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SRPO_VERL_PLATFORM", "VERL_PLATFORM")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def test_import_verl_with_the_backend_imports_none_of_the_patched_modules_until_used():
    code = (
        "import json, sys\n"
        "import verl\n"
        f"before = {{m: m in sys.modules for m in {LAZY!r}}}\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "import verl.workers.engine\n"
        "from verl.trainer.ppo import core_algos\n"
        "engine = EngineRegistry.get_engine_cls('language_model', 'fsdp2').__name__\n"
        "print(json.dumps({'before': before, 'engine': engine,\n"
        "                  'srpo_adv': 'srpo' in core_algos.ADV_ESTIMATOR_REGISTRY,\n"
        "                  'trainer': 'srpo_verl.integration.trainer' in sys.modules}))\n"
    )
    state = _fresh_python(code, SRPO_VERL_PLATFORM="cpu")
    assert not any(state["before"].values()), state["before"]
    # Imported later, each module is patched or registered on arrival.
    assert state["engine"] == "FSDPEngineWithLMHead"
    assert state["srpo_adv"] is True
    assert state["trainer"] is False  # only a process that imports verl's v1 trainer gets ours


def test_load_balancer_and_server_modules_import_no_verl():
    # A process holding an HFServer handle imports hf_server; verl's load balancer process held one.
    code = (
        "import json, sys\nimport srpo_verl.cpu.router, srpo_verl.cpu.hf_server\n"
        "print(json.dumps({'verl': 'verl' in sys.modules}))\n"
    )
    assert _fresh_python(code, SRPO_VERL_PLATFORM="cpu") == {"verl": False}


def test_when_imported_runs_after_the_module_body_or_at_once(tmp_path, monkeypatch):
    (tmp_path / "hooked_pkg").mkdir()
    (tmp_path / "hooked_pkg" / "__init__.py").write_text("")
    (tmp_path / "hooked_pkg" / "mod.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    import_hooks.when_imported("hooked_pkg.mod", lambda module: seen.append(module.VALUE))
    assert seen == [] and "hooked_pkg.mod" in import_hooks.pending()
    module = importlib.import_module("hooked_pkg.mod")
    assert seen == [41] and "hooked_pkg.mod" not in import_hooks.pending()
    import_hooks.when_imported("hooked_pkg.mod", lambda m: seen.append(m.VALUE + 1))
    assert seen == [41, 42]
    importlib.reload(module)  # a reload does not run the functions again
    assert seen == [41, 42]
    # The wrapped loader still answers for the module's source.
    assert module.__loader__.get_source("hooked_pkg.mod") == "VALUE = 41\n"
    for name in ("hooked_pkg.mod", "hooked_pkg"):
        sys.modules.pop(name, None)

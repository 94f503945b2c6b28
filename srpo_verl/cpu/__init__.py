"""Opt-in CPU backend for verl 0.9.1: CPU platform, gloo, FSDP2 engine on CPU, HF-generate rollout.

Activated only when SRPO_VERL_PLATFORM=cpu is set in the process environment, never because a
process sees no GPU. The `verl.plugins` entry point (`srpo_verl.plugin`) calls
`activate_if_requested()` on every `import verl`, in the driver and in every Ray worker; the
shipped `platform=cpu` config sets the variable for both. See README.md in this folder.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

ENV_VAR = "SRPO_VERL_PLATFORM"

# verl modules the backend patches (each when it is imported; see activate).
PATCHED_MODULES = (
    "verl.utils.distributed",
    "verl.workers.engine.fsdp.transformer_impl",
    "verl.trainer.ppo.v1.replay_buffer",
    "verl.workers.rollout.base",
    "verl.workers.rollout.replica",
)

logger = logging.getLogger(__name__)

# What happened in this process: filled by activate(); read by status().
_state: dict[str, Any] = {"active": False, "error": None}


def requested() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() == "cpu"


def check_verl_version() -> None:
    """Refuse any verl but the one the patches were written against (they hook private API)."""
    import verl

    from srpo_verl.verl_compat import verl_version_problem

    # It patches verl internals: platform singleton, process-group init, engine and rollout registries,
    # ReplayBuffer. Unset ENV_VAR to run verl's own GPU path.
    problem = verl_version_problem(getattr(verl, "__version__", "unknown"), f"srpo_verl's CPU backend ({ENV_VAR}=cpu)")
    if problem:
        raise RuntimeError(problem)


def activate() -> None:
    """Apply every CPU patch in this process (idempotent). Raises if verl is not SUPPORTED_VERL."""
    check_verl_version()
    # Ray pre-starts idle Python workers when a driver connects; each imports Ray (~1 CPU s) and
    # none is ever used (every verl actor gets a new process). The raylet a driver starts reads
    # these variables; a cluster started beforehand with `ray start` is not affected, and in the
    # Ray workers, which start no raylet, they do nothing.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    from srpo_verl import import_hooks
    from srpo_verl.cpu import platform

    # The platform first, so modules imported later resolve device "cpu"; then each patch as its
    # module is imported (at once where it already is). Importing them here instead cost every Ray
    # worker the engine, the v1 trainer and the rollout modules, ~2.5 CPU s each, used by one or two.
    platform.install_platform()
    platform.patch_process_group()
    import_hooks.when_imported("verl.workers.engine_workers", lambda _module: platform.patch_process_group())
    import_hooks.when_imported("verl.workers.engine.fsdp.transformer_impl", _patch_engine)
    import_hooks.when_imported("verl.trainer.ppo.v1.replay_buffer", platform.patch_replay_buffer_poll)
    import_hooks.when_imported("verl.workers.rollout.base", platform.register_rollout_adapter)
    import_hooks.when_imported("verl.workers.rollout.replica", platform.register_rollout_replica)
    _state.update(active=True, error=None)


def _patch_engine(transformer_impl) -> None:
    from srpo_verl.cpu import platform

    platform.register_engines(transformer_impl)
    platform.patch_forward_only_offload(transformer_impl)


def activate_if_requested() -> bool:
    """Activate when SRPO_VERL_PLATFORM=cpu; otherwise do nothing and return False.

    verl swallows exceptions raised by plugins (DEBUG log only), so a failure is logged at ERROR
    here before it is re-raised; `python -m srpo_verl check` shows it through `status()`.
    """
    if not requested():
        return False
    try:
        activate()
    except Exception as exc:
        _state.update(active=False, error=f"{type(exc).__name__}: {exc}")
        logger.error("%s=cpu is set but the srpo_verl CPU backend failed to activate: %s", ENV_VAR, exc)
        raise
    return True


def status() -> dict[str, Any]:
    """What the CPU backend did in this process, and why not if it did nothing."""
    from srpo_verl import SUPPORTED_VERL
    from srpo_verl.verl_compat import is_build_of

    try:
        import verl

        installed = getattr(verl, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        installed = f"not importable ({type(exc).__name__}: {exc})"
    info: dict[str, Any] = {
        "requested": requested(),
        "env": f"{ENV_VAR}={os.environ.get(ENV_VAR, '')!r}",
        "active": _state["active"],
        "verl_version": installed,
        "supported_verl": SUPPORTED_VERL,
        "error": _state["error"],
    }
    if not info["requested"]:
        info["reason"] = f"not requested: set {ENV_VAR}=cpu (or pass platform=cpu to srpo_verl.main_ppo)"
    elif not is_build_of(installed, SUPPORTED_VERL):
        info["reason"] = f"verl {installed} is not a build of the supported {SUPPORTED_VERL}"
    elif not _state["active"]:
        info["reason"] = _state["error"] or "requested but activate() has not run in this process"
    if _state["active"]:
        from srpo_verl.cpu import platform

        # The patched modules are imported here, so that the report says what any process that
        # uses them gets (each patch waits for its module's import otherwise).
        for module in PATCHED_MODULES:
            importlib.import_module(module)
        info["patches"] = {**platform.patches_applied(), "rollout_hf": platform.rollout_registered()}
    return info

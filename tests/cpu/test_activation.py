"""The CPU backend is opt-in: `import verl` changes nothing unless SRPO_VERL_PLATFORM=cpu.

Each state is probed in a fresh interpreter, because activation changes process-wide singletons
(verl's platform, registries) that must not leak into other tests.
"""

import json
import os
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: imports verl as any process would, then reports verl's state.
PROBE = r"""
import json, os
import verl
from verl.plugin.platform import PlatformRegistry, platform_manager
from verl.utils import distributed
from verl.workers.engine.base import EngineRegistry
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplicaRegistry
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from srpo_verl import cpu

state = {
    "platform_registered": "cpu" in PlatformRegistry.registered_names(),
    "platform_singleton": type(platform_manager._current_platform).__name__,
    "fsdp2_cpu_engine": "cpu" in EngineRegistry._engines.get("language_model", {}).get("fsdp2", {}),
    "rollout_hf": ("hf", "async") in _ROLLOUT_REGISTRY,
    "replica_hf": "hf" in RolloutReplicaRegistry._registry,
    "gloo_patch": hasattr(distributed.initialize_global_process_group_ray, "__srpo_verl_cpu_patch__"),
    "replay_patch": hasattr(ReplayBuffer.__init__, "__srpo_verl_cpu_patch__"),
    "status": cpu.status(),
}
if os.environ.get("PROBE_ACTIVE"):
    import torch.distributed as dist
    from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.engine_workers import initialize_global_process_group_ray

    cpu.activate()  # a second activation is a no-op
    state["device_name"] = get_device_name()
    state["backend"] = get_nccl_backend()
    state["engine_cls"] = EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__
    state["rollout_cls"] = get_rollout_class("hf", "async").__name__
    state["replica_cls"] = RolloutReplicaRegistry.get("hf").__name__
    state["device_module_empty_cache"] = get_torch_device().empty_cache() is None
    initialize_global_process_group_ray()
    state["process_group_backend"] = dist.get_backend()
    dist.destroy_process_group()
print("PROBE " + json.dumps(state))
"""


def run_probe(extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SRPO_VERL_PLATFORM", "VERL_PLATFORM")}
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE ") :])


@pytest.fixture(scope="module")
def inactive_state():
    return run_probe({})


@pytest.fixture(scope="module")
def active_state():
    env = {
        "SRPO_VERL_PLATFORM": "cpu",
        "PROBE_ACTIVE": "1",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    return run_probe(env)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_import_verl_without_env_var_leaves_verl_untouched(inactive_state):
    assert inactive_state["platform_registered"] is False
    assert inactive_state["platform_singleton"] != "PlatformCPU"
    for key in ("fsdp2_cpu_engine", "rollout_hf", "replica_hf", "gloo_patch", "replay_patch"):
        assert inactive_state[key] is False, key
    status = inactive_state["status"]
    assert status["requested"] is False and status["active"] is False
    assert "SRPO_VERL_PLATFORM" in status["reason"]


def test_import_verl_with_env_var_activates_everything(active_state):
    assert active_state["platform_registered"] and active_state["platform_singleton"] == "PlatformCPU"
    for key in ("fsdp2_cpu_engine", "rollout_hf", "replica_hf", "gloo_patch", "replay_patch"):
        assert active_state[key] is True, key
    assert active_state["device_name"] == "cpu"
    assert active_state["backend"] == "gloo"
    assert active_state["engine_cls"] == "FSDPEngineWithLMHead"
    assert active_state["rollout_cls"] == "HFServerAdapter"
    assert active_state["replica_cls"] == "HFReplica"
    assert active_state["device_module_empty_cache"] is True
    assert active_state["process_group_backend"] == "gloo"
    status = active_state["status"]
    assert status["active"] is True and status["error"] is None
    assert all(status["patches"].values()), status["patches"]


def test_version_gate_names_both_versions(monkeypatch):
    import verl

    from srpo_verl import SUPPORTED_VERL, cpu

    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(RuntimeError) as excinfo:
        cpu.activate()
    assert "0.9.2" in str(excinfo.value) and SUPPORTED_VERL in str(excinfo.value)


def test_activate_if_requested_logs_and_reraises(monkeypatch, caplog):
    import verl

    from srpo_verl import cpu

    monkeypatch.setattr(verl, "__version__", "0.8.0")
    monkeypatch.setattr(cpu, "_state", {"active": False, "error": None})
    monkeypatch.setenv(cpu.ENV_VAR, "cpu")
    with caplog.at_level("ERROR", logger="srpo_verl.cpu"), pytest.raises(RuntimeError, match="0.8.0"):
        cpu.activate_if_requested()
    assert any("failed to activate" in record.getMessage() for record in caplog.records)
    status = cpu.status()
    assert status["active"] is False and "0.8.0" in status["error"] and "0.8.0" in status["reason"]


def test_activate_if_requested_is_a_noop_without_env_var(monkeypatch):
    from srpo_verl import cpu

    monkeypatch.delenv(cpu.ENV_VAR, raising=False)
    assert cpu.activate_if_requested() is False


def test_rollout_module_imported_before_verl_registers_itself():
    """The HF server's Ray actor imports `srpo_verl.cpu.hf_rollout` before anything else imports
    verl, so verl's plugin activates the backend while that module is half-defined: the activation
    must not fail on it (it did: "partially initialized module ... has no attribute 'register'"),
    and the module registers the `hf` backend once defined."""
    probe = (
        "import json, os, srpo_verl.cpu.hf_rollout\n"
        "from srpo_verl import cpu\n"
        "from srpo_verl.cpu import platform\n"
        "prestart = os.environ.get('RAY_prestart_worker_first_driver')\n"
        "state = {'registered': platform.rollout_registered(), 'status': cpu.status(), 'prestart': prestart}\n"
        "print('PROBE ' + json.dumps(state))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env["SRPO_VERL_PLATFORM"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed to activate" not in proc.stderr, proc.stderr[-3000:]
    state = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")][-1][len("PROBE ") :])
    assert state["registered"] is True
    # Activation also switches off Ray's idle-worker pre-start for the raylet this driver starts.
    assert state["prestart"] == "0"
    assert state["status"]["active"] is True and state["status"]["error"] is None
    assert all(state["status"]["patches"].values()), state["status"]["patches"]

"""verl on CPU: a `PlatformBase` for the CPU, gloo, the FSDP2 engine registered for device `cpu`.

Every patch here is applied by `srpo_verl.cpu.activate()` and only when SRPO_VERL_PLATFORM=cpu;
nothing in this module runs at import time. A patch of a module that is not imported yet waits
for that module's import (`srpo_verl.import_hooks`); the functions take the module for that case.
Each patch is idempotent and says what verl 0.9.1 does without it. The rollout backend
(`rollout.name=hf`) lives in `hf_rollout.py`.
"""

from __future__ import annotations

import functools
import os
import logging
import types
from contextlib import nullcontext
from typing import Any, Optional

import torch

from verl.plugin.platform import PlatformBase, PlatformRegistry
from verl.plugin.platform import platform_manager

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"

# ReplayBuffer poll period on CPU. verl's default is 2.0 s, a hard-coded constructor default; a tiny
# model's whole generation takes ~0.1-0.4 s, so 2.0 s would make every `timing_s/gen` >= 2 s.
REPLAY_BUFFER_POLL_S = 0.05

# Marker set on every function this module wraps, so a second activation recognises its own work.
_PATCHED = "__srpo_verl_cpu_patch__"


def _noop(*_args, **_kwargs) -> None:
    return None


def _zero(*_args, **_kwargs) -> int:
    return 0


def _host_memory() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return vm.available, vm.total


def _build_device_module() -> types.ModuleType:
    """The `torch.<device>`-like namespace verl calls through `get_torch_device()`.

    `torch.cpu` lacks most of what verl calls on an accelerator module (empty_cache, memory stats,
    rng state, mem_get_info, ...). Streams and events come from `torch.cpu`; cache and memory calls
    are no-ops reporting 0 bytes; the RNG is torch's CPU generator.
    """
    mod = types.ModuleType("srpo_verl_cpu_device")
    for name in ("Stream", "Event", "StreamContext", "current_stream", "stream", "device_count"):
        setattr(mod, name, getattr(torch.cpu, name))
    mod.is_available = lambda: True
    mod.is_initialized = lambda: True
    mod.current_device = lambda: "cpu"
    mod.set_device = _noop
    mod.synchronize = _noop
    mod.empty_cache = _noop
    mod.ipc_collect = _noop
    mod.reset_peak_memory_stats = _noop
    mod.reset_accumulated_memory_stats = _noop
    mod.set_per_process_memory_fraction = _noop
    mod.memory_allocated = _zero
    mod.memory_reserved = _zero
    mod.max_memory_allocated = _zero
    mod.max_memory_reserved = _zero
    mod.mem_get_info = lambda *_a, **_k: _host_memory()
    mod.get_device_name = lambda *_a, **_k: "cpu"
    mod.get_device_properties = lambda *_a, **_k: types.SimpleNamespace(name="cpu", total_memory=_host_memory()[1])
    mod.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
    mod.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
    mod.manual_seed = torch.manual_seed
    mod.manual_seed_all = torch.manual_seed
    return mod


class PlatformCPU(PlatformBase):
    """verl's platform interface for a host without an accelerator.

    Ray still schedules training workers on a "GPU" resource: verl's placement groups always ask for
    one accelerator per worker, so `platform=cpu` starts Ray with fake GPUs (`ray_init.num_gpus`).
    """

    _device_module: Optional[types.ModuleType] = None

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        if PlatformCPU._device_module is None:
            PlatformCPU._device_module = _build_device_module()
        return PlatformCPU._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Never picked by verl's auto-detection: the CPU platform is set explicitly, on request.
        return False

    def current_device(self) -> str:
        # Used as `tensor.to(get_device_id())`; "cpu" is a valid target where an index is not.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    def nvtx_range(self, msg: str):
        return nullcontext()

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def install_platform() -> None:
    """Register `PlatformCPU` and make it verl's platform singleton in this process.

    Without it `get_platform()` falls back to "nvidia" on a host without a GPU, and every device
    string (meshes, `.to(...)`, engine lookup) says "cuda".
    """
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    if not isinstance(platform_manager._current_platform, PlatformCPU):
        # set_platform warns when it replaces a platform that something already resolved.
        platform_manager.set_platform(PlatformCPU())


def _gloo(init_fn):
    @functools.wraps(init_fn)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        # verl's default is f"cpu:gloo,{device}:{backend}" = "cpu:gloo,cpu:gloo", which torch
        # rejects ("Duplicate device type cpu").
        kwargs = dict(timeout_second=timeout_second, backend=backend or "gloo")
        try:
            return init_fn(**kwargs)
        except torch.distributed.DistNetworkError as exc:
            # verl picks MASTER_PORT on the driver and the worker binds it later; on a busy host another
            # process can take the port in between (EADDRINUSE). A single rank rendezvous with itself,
            # so any free port will do; with several ranks they must agree, and the error stands.
            single = int(os.environ.get("WORLD_SIZE", 1)) == 1 and not os.environ.get("DIST_INIT_METHOD")
            if not (single and "EADDRINUSE" in str(exc)):
                raise
            from srpo_verl.cpu.local import free_port

            port = free_port()
            logger.warning(
                "MASTER_PORT %s was taken before this rank bound it; retrying on %s",
                os.environ.get("MASTER_PORT"),
                port,
            )
            os.environ["MASTER_PORT"] = str(port)
            return init_fn(**kwargs)

    setattr(initialize_global_process_group_ray, _PATCHED, True)
    return initialize_global_process_group_ray


def patch_process_group() -> None:
    """Initialise torch.distributed with plain gloo in verl's training workers."""
    import sys

    from verl.utils import distributed

    if not getattr(distributed.initialize_global_process_group_ray, _PATCHED, False):
        distributed.initialize_global_process_group_ray = _gloo(distributed.initialize_global_process_group_ray)
    # engine_workers binds the function by name at import; rebind it if it was imported first.
    engine_workers = sys.modules.get("verl.workers.engine_workers")
    if engine_workers is not None:
        engine_workers.initialize_global_process_group_ray = distributed.initialize_global_process_group_ray


def register_engines(transformer_impl=None) -> None:
    """Register verl's FSDP2 engine (actor and critic) for device "cpu".

    verl registers it for cuda/npu only, so `EngineRegistry.new` fails with "No engine registered for
    device='cpu'". Only `fsdp2` is registered: FSDP1 refuses CPU parameters, and an explicit "no
    engine for backend fsdp" is clearer than its error. `transformer_impl`: the module, when the
    caller has it (an import hook runs before its package binds it).
    """
    from verl.workers.engine.base import EngineRegistry

    if transformer_impl is None:
        from verl.workers.engine.fsdp import transformer_impl

    # transformer_impl caches `device_name = get_device_name()` at import (for its Ulysses mesh).
    transformer_impl.device_name = PLATFORM_NAME
    for model_type, engine_cls in (
        ("language_model", transformer_impl.FSDPEngineWithLMHead),
        ("value_model", transformer_impl.FSDPEngineWithValueHead),
    ):
        registered = EngineRegistry._engines.get(model_type, {}).get("fsdp2", {}).get(PLATFORM_NAME)
        if registered is None:
            EngineRegistry.register(model_type=model_type, backend="fsdp2", device=PLATFORM_NAME)(engine_cls)
        elif registered is not engine_cls:
            raise RuntimeError(
                f"EngineRegistry already maps ({model_type}, fsdp2, cpu) to {registered.__name__}; "
                f"srpo_verl's CPU backend would register {engine_cls.__name__}"
            )


def _unpinned(policy_cls):
    """CPUOffloadPolicy without pinned memory (pinning needs an accelerator)."""

    @functools.wraps(policy_cls)
    def make(*args, pin_memory=True, **kwargs):
        return policy_cls(*args, pin_memory=False, **kwargs)

    setattr(make, _PATCHED, True)
    return make


def patch_forward_only_offload(transformer_impl=None) -> None:
    """Let forward-only FSDP2 engines (verl's reference model, SRPO's EMA teacher) build on CPU.

    verl always gives them `CPUOffloadPolicy(pin_memory=True)`; on a host without an accelerator
    `pin_memory()` raises "Cannot access accelerator device". Offloading to the CPU is a no-op
    here, so only the pinning is dropped.
    """
    if transformer_impl is None:
        from verl.workers.engine.fsdp import transformer_impl

    if not getattr(transformer_impl.CPUOffloadPolicy, _PATCHED, False):
        transformer_impl.CPUOffloadPolicy = _unpinned(transformer_impl.CPUOffloadPolicy)


def _fast_poll(init_fn):
    @functools.wraps(init_fn)
    def __init__(self, *args, **kwargs):
        init_fn(self, *args, **kwargs)
        # poll_interval is the 6th parameter; verl never passes it, so only the default is changed.
        if "poll_interval" not in kwargs and len(args) < 6:
            self.poll_interval = REPLAY_BUFFER_POLL_S

    setattr(__init__, _PATCHED, True)
    return __init__


def patch_replay_buffer_poll(replay_buffer=None) -> None:
    """Shorten the v1 ReplayBuffer's TransferQueue poll from 2.0 s to REPLAY_BUFFER_POLL_S.

    The interval is a constructor default that verl neither exposes in the config nor passes. A
    `trainer.v1.sampler.custom_sampler` subclass could set it, but verl constructs custom samplers
    without the DAPO-filter and refill arguments and never picks the async variant for them, so the
    CPU run would train differently from the GPU run. Changing the default keeps the sampler the same.
    Covers ReplayBufferAsync and any subclass that calls `super().__init__`.
    """
    if replay_buffer is None:
        from verl.trainer.ppo.v1 import replay_buffer
    ReplayBuffer = replay_buffer.ReplayBuffer

    if not getattr(ReplayBuffer.__init__, _PATCHED, False):
        ReplayBuffer.__init__ = _fast_poll(ReplayBuffer.__init__)


ROLLOUT_NAME = "hf"
# By name and by loader: registering the rollout imports neither hf_rollout nor transformers' model
# code, which only the training worker and the HF server use.
ROLLOUT_ADAPTER = "srpo_verl.cpu.hf_rollout.HFServerAdapter"


def _load_hf_replica():
    from srpo_verl.cpu.hf_rollout import HFReplica

    return HFReplica


def register_rollout_adapter(base) -> None:
    """`rollout.name=hf` in `verl.workers.rollout.base._ROLLOUT_REGISTRY`: the adapter by FQN.

    Without it: "Rollout hf with mode async not found". The registry is a private dict without a
    `register` function in verl 0.9.1.
    """
    base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ROLLOUT_ADAPTER


def register_rollout_replica(replica) -> None:
    """`hf` in `verl.workers.rollout.replica.RolloutReplicaRegistry`, by a loader of HFReplica."""
    if replica.RolloutReplicaRegistry._registry.get(ROLLOUT_NAME) is not _load_hf_replica:
        replica.RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_hf_replica)


def rollout_registered() -> bool:
    from verl.workers.rollout import base, replica

    return (
        base._ROLLOUT_REGISTRY.get((ROLLOUT_NAME, "async")) == ROLLOUT_ADAPTER
        and replica.RolloutReplicaRegistry._registry.get(ROLLOUT_NAME) is _load_hf_replica
    )


def patches_applied() -> dict[str, bool]:
    """Which of this module's patches are in place in this process (for `srpo_verl.cpu.status`)."""
    import sys

    state = {
        "platform": isinstance(platform_manager._current_platform, PlatformCPU),
        "gloo_process_group": False,
        "fsdp2_engine_for_cpu": False,
        "replay_buffer_poll": False,
        "forward_only_offload_unpinned": False,
    }
    distributed = sys.modules.get("verl.utils.distributed")
    if distributed is not None:
        state["gloo_process_group"] = getattr(distributed.initialize_global_process_group_ray, _PATCHED, False)
    base = sys.modules.get("verl.workers.engine.base")
    if base is not None:
        state["fsdp2_engine_for_cpu"] = (
            base.EngineRegistry._engines.get("language_model", {}).get("fsdp2", {}).get(PLATFORM_NAME) is not None
        )
    replay_buffer = sys.modules.get("verl.trainer.ppo.v1.replay_buffer")
    if replay_buffer is not None:
        state["replay_buffer_poll"] = getattr(replay_buffer.ReplayBuffer.__init__, _PATCHED, False)
    impl = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if impl is not None:
        state["forward_only_offload_unpinned"] = getattr(impl.CPUOffloadPolicy, _PATCHED, False)
    return state

"""verl's SRPO worker and FSDP engine with CUDA placement, on CPU: every move is verl's own.

`python tests/gpu/engine_cuda_probe.py MODEL OUT.pt STRATEGY MICRO_BATCH [OVERRIDE ...]` runs one rank; with
WORLD_SIZE > 1 (RANK, MASTER_ADDR/PORT set by the caller) the ranks form a gloo group and FSDP1
(`fsdp`) or FSDP2 (`fsdp2`) shards the model over them. `test_engine_cuda.py` starts the ranks.

The worker is built by the CPU backend (FSDP on gloo); then verl's platform answers as on CUDA
(`get_device_name()` "cuda", `get_device_id()` 0) and everything runs under
`VirtualCuda(default="cuda")`: the model, its gradients and optimiser state are on the device, the
batches the probe hands the worker are on the host, as TransferQueue hands them over, and every
tensor reaches the device only through verl's or our own moves. A tensor used on the wrong side
raises as CUDA would. The forward-only teacher's shards are on the host, as verl's CPU offload
keeps them on a GPU.

Passes, in a trainer step's order: old-log-prob forward with the top-K hook, teacher pass, actor
update (SGD lr 1: theta_0 - theta_1 is the gradient), EMA step, a second teacher pass (which must see
the EMA-updated teacher), and the teacher's save and load with verl's checkpoint. With a LoRA override
(`actor_rollout_ref.model.lora_rank`) the teacher is the adapter one, swapped into the student's module
on the device (srpo_verl/integration/lora_teacher.py).
"""

import os
import sys

import torch

from srpo_verl.cpu.local import local_env
from srpo_verl.lab.srpo_update import (
    ROWS,
    fixed_batch,
    new_worker,
    old_log_prob_pass,
    srpo_config,
    srpo_setup,
    teacher_pass,
    update_batch,
    update_loss,
)


def register_fsdp1_for_cpu() -> None:
    """verl registers its FSDP engine for cuda/npu; the CPU backend adds fsdp2 only. FSDP1 runs on CPU
    with gloo too, so the probe adds it to exercise verl's default strategy. FSDP1 refuses
    `sync_module_states=True` (verl always sets it) for parameters on the CPU only because NCCL could
    not broadcast them; gloo can, so that one check is lifted here."""
    from torch.distributed.fsdp import _init_utils
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    if EngineRegistry._engines.get("language_model", {}).get("fsdp", {}).get("cpu") is None:
        EngineRegistry.register(model_type="language_model", backend="fsdp", device="cpu")(FSDPEngineWithLMHead)
    _init_utils._check_module_states_for_sync_module_states = lambda module_states: None


def answer_as_cuda() -> None:
    """verl's platform from now on names the device as on a CUDA machine (the CPU backend's device
    module stays: its streams, RNG and memory calls work without an accelerator)."""
    from verl.plugin.platform import platform_manager

    from srpo_verl.cpu.platform import PlatformCPU

    class PlatformVirtualCuda(PlatformCPU):
        @property
        def device_name(self) -> str:
            return "cuda"

        def current_device(self) -> int:
            return 0

    platform_manager._current_platform = PlatformVirtualCuda()


def teacher_shards_on_host(worker) -> None:
    """verl builds forward-only FSDP2 engines with CPUOffloadPolicy: their sharded parameters live on
    the host and FSDP2 copies them in its all-gather. (FSDP1's CPUOffload swaps the flat parameter's
    storage itself; that stays FSDP's own business here.)"""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from srpo_verl.integration.lora_teacher import AdapterTeacher
    from srpo_verl.lab.virtual_cuda import _tag

    if isinstance(worker.teacher, AdapterTeacher):
        return  # the adapter teacher's tensors sit beside the student's adapter shards, on the device
    if isinstance(worker.teacher.engine.module, FSDP):
        return
    for p in worker.teacher.engine.module.parameters():
        _tag(p, "cpu")
        local = getattr(p, "_local_tensor", None)
        if local is not None:
            _tag(local, "cpu")


def gathered(worker, module) -> dict[str, torch.Tensor]:
    """Full float64 parameters of an FSDP1 or FSDP2 module, by their model names (collective)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(module, FSDP):
        with FSDP.summon_full_params(module, writeback=False):
            return {
                name.replace("_fsdp_wrapped_module.", ""): p.detach().double().clone()
                for name, p in module.named_parameters()
            }
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().clone()
        for name, p in module.named_parameters()
    }


def teacher_full(worker) -> dict[str, torch.Tensor]:
    """The teacher's full float64 parameters (collective): the engine's, or the adapter teacher's
    rank-local Shard(0) pieces gathered in rank order."""
    from srpo_verl.integration.lora_teacher import AdapterTeacher

    if not isinstance(worker.teacher, AdapterTeacher):
        return gathered(worker, worker.teacher.engine.module)
    local = {name: t.detach().cpu().double() for name, t in worker.teacher.state.items()}
    pieces = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(pieces, local)
    return {name: torch.cat([p[name] for p in pieces]) for name in local}


def main(model_path: str, out_path: str, strategy: str, micro_batch: int, extra: list[str]) -> None:
    local_env()
    import verl  # noqa: F401  (activates the CPU backend through the plugin)

    from srpo_verl.lab.virtual_cuda import VirtualCuda

    register_fsdp1_for_cpu()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config = srpo_config(
        model_path,
        micro_batch,
        overrides=[
            f"actor_rollout_ref.actor.strategy={strategy}",
            f"actor_rollout_ref.ref.strategy={strategy}",
            *extra,
        ],
    )
    worker = new_worker(config)
    srpo_setup(worker, config)
    answer_as_cuda()
    teacher_shards_on_host(worker)

    mode = VirtualCuda(default="cuda")
    with mode:
        # Made inside the mode: host tensors, as the driver's are.
        prompts, responses, teacher_prompts, advantages, old_offsets, is_weights = fixed_batch()
        sequences = list(zip(prompts, responses))
        theta_pre = gathered(worker, worker.actor.engine.module)
        log_probs, topk = old_log_prob_pass(worker, sequences)
        old = [lp + off for lp, off in zip(log_probs, old_offsets)]
        taught = teacher_pass(worker, topk, teacher_prompts, responses)
        theta0 = gathered(worker, worker.actor.engine.module)  # the teacher pass must leave the student as it was
        mine = list(range(rank * ROWS // world, (rank + 1) * ROWS // world))
        distilled = worker.srpo.distils_rows  # advantage_mix: its taught rows get the mixed advantage only
        output = worker.update_actor(
            update_batch(sequences, old, advantages, is_weights, taught, mine, distilled=distilled)
        )
        theta1 = gathered(worker, worker.actor.engine.module)
        loss = update_loss(output)
        ema = worker.srpo_ema_update()
        taught_after = teacher_pass(worker, topk, teacher_prompts, responses)
        # Gathered after the pass: summon_full_params frees FSDP1's unsharded root, which would hide a
        # stale one from the pass.
        teacher1 = teacher_full(worker)
        # verl's checkpoint with the teacher beside it; a second EMA step moves the teacher, the load
        # must bring back the saved one.
        ckpt = os.environ["SRPO_PROBE_CKPT"]
        worker.save_checkpoint(ckpt, global_step=1)
        saved = worker.srpo_teacher_state()
        worker.srpo_ema_update()
        moved = worker.srpo_teacher_state()
        worker.load_checkpoint(ckpt)
        loaded = worker.srpo_teacher_state()
    host = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}  # noqa: E731
    torch.distributed.all_reduce(loss)
    result = {
        "loss": float(loss) / world,
        "grad": {name: theta0[name] - theta1[name] for name in theta0},
        "theta_pre": theta_pre,
        "theta0": theta0,
        "theta1": theta1,
        "teacher1": teacher1,
        "teacher_fields": taught,
        "teacher_fields_after_ema": taught_after,
        "old": old,
        "ema": ema,
        "saved": host(saved),
        "moved": host(moved),
        "loaded": host(loaded),
        "host_reads": len(mode.host_reads),
        "param_dtypes": (str(worker.actor.engine._autocast_dtype), str(worker._teacher_engine()._autocast_dtype)),
    }
    torch.distributed.destroy_process_group()
    if rank == 0:
        torch.save(result, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])

"""verl's internals, reached from this one module.

Each function wraps one surface the SRPO glue needs and verl does not promise to keep: the
TransferQueue store of the v1 trainer, a private attribute, a method replaced on an engine instance,
the loss function swapped on a worker, a non-tensor flag verl's engine reads. docs/verl_surfaces.md
names each (S-ids below) with the test that breaks when verl changes it.

Bumping verl means reading this module, the overridden hooks in trainer.py and worker.py (verl's own
method names and signatures, which can only live where they are overridden) and the CPU backend's
patches (cpu/platform.py) against the new release. tests/integration/test_verl_surfaces_table.py holds
the rule: no other glue module imports TransferQueue or touches an underscored attribute of verl's.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from copy import deepcopy

import torch
import transfer_queue as tq
from omegaconf import open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta  # also the trainer's type of a step's batch
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.device import get_device_name
from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig

# ----------------------------------------------------------------- TransferQueue (S05, S06, S09, S10)


def read_fields(batch: KVBatchMeta, fields: list[str]) -> TensorDict:
    """The named fields of every row of the step's batch."""
    return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(fields))


def write_fields(batch: KVBatchMeta, fields: dict, rows: list[int] | None = None) -> KVBatchMeta:
    """Store per-row fields for all rows (or `rows`) of the step; returns TransferQueue's record of the
    written rows (its `fields` lists every field they hold)."""
    keys = batch.keys if rows is None else [batch.keys[i] for i in rows]
    return tq.kv_batch_put(keys=keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=len(keys)))


def sub_batch(batch: KVBatchMeta, rows: list[int], fields: list[str], **extra_info) -> KVBatchMeta:
    """The rows `rows` of the step as a batch a worker method reads `fields` of; `extra_info` arrives
    there as non-tensors."""
    return KVBatchMeta(
        keys=[batch.keys[i] for i in rows],
        tags=[batch.tags[i] for i in rows],
        partition_id=batch.partition_id,
        fields=list(fields),
        extra_info=extra_info,
    )


def padding_rows(batch: KVBatchMeta) -> list[bool]:
    """Which rows verl added to even the batch out over the ranks (tag `is_padding`)."""
    return [bool(tag.get("is_padding", False)) for tag in batch.tags]


def reorder_rows(batch: KVBatchMeta, order: list[int]) -> None:
    batch.reorder(order)


def fetch_in_update(batch: KVBatchMeta, fetched: list[str], dropped: tuple[str, ...]) -> None:
    """Make the actor update fetch `fetched` from TransferQueue and never `dropped` (the update reads
    `batch.fields`)."""
    batch.fields = [f for f in batch.fields if f not in dropped and f not in fetched] + list(fetched)


# ----------------------------------------------------------------- the worker group (S08)


def actor_dp_size(worker_group) -> int:
    """The actor's data-parallel size, from the worker group's (private) dispatch cache."""
    info = worker_group._dispatch_info.get("actor")
    if info is None:
        info = worker_group._query_dispatch_info("actor")
        worker_group._dispatch_info["actor"] = info
    return max(info) + 1


# ----------------------------------------------------------------- the actor's loss (S13, S15, S16)


def actor_loss_config(worker):
    """verl's ActorConfig dataclass: the worker's loss is `partial(ppo_loss, config=ActorConfig)`."""
    return worker.loss_fn.keywords["config"]


@contextmanager
def actor_loss_fn(worker, fn):
    """`fn` stands in for the actor's loss function for the duration (verl's inference call passes the
    actor's loss function to the engine when asked to; see `call_logits_processor`)."""
    saved, worker.actor.loss_fn = worker.actor.loss_fn, fn
    try:
        yield
    finally:
        worker.actor.loss_fn = saved


def call_logits_processor(data, *, inference: bool = False) -> None:
    """Make verl's engine call the loss function as its logits processor on each micro-batch of `data`
    (the hook verl's own top-K distillation uses). An inference call (compute_log_prob) hands the
    engine a loss function only when `compute_loss` is set."""
    flags = {"distillation_use_topk": True}
    if inference:
        flags["compute_loss"] = True
    tu.assign_non_tensor(data, **flags)


# ----------------------------------------------------------------- the engine (S17, S21, S22, S48)


def forward_only_engine_like_ref(worker) -> TrainingWorker:
    """A forward-only FSDP engine over the actor's model, built the way verl builds its reference
    (from `config.ref`, its `log_prob_*` keys renamed to the training ones verl's dataclass wants)."""
    ref = deepcopy(worker.config.ref)
    with open_dict(ref):
        ref.ppo_mini_batch_size = worker.config.actor.ppo_mini_batch_size
        ref.ppo_micro_batch_size = ref.pop("log_prob_micro_batch_size", None)
        ref.ppo_micro_batch_size_per_gpu = ref.pop("log_prob_micro_batch_size_per_gpu", None)
        ref.use_dynamic_bsz = ref.pop("log_prob_use_dynamic_bsz", False)
        ref.ppo_max_token_len_per_gpu = ref.pop("log_prob_max_token_len_per_gpu", None)
        # The teacher pass batches by the actor's forward settings, never through this engine's own
        # batching; any valid value satisfies verl's config check.
        if ref.ppo_micro_batch_size is None and ref.ppo_micro_batch_size_per_gpu is None and not ref.use_dynamic_bsz:
            ref.ppo_micro_batch_size_per_gpu = 1
    ref_config = omega_conf_to_dataclass(ref)
    ref_config.model_config = deepcopy(worker.actor.config.model_config)
    cfg = TrainingWorkerConfig(
        model_type="language_model",
        model_config=ref_config.model_config,
        engine_config=ref_config.engine,
        optimizer_config=ref_config.optim,
        checkpoint_config=ref_config.checkpoint,
    )
    cfg.engine_config.use_remove_padding = worker.actor.engine_config.use_remove_padding
    engine = TrainingWorker(config=cfg)
    engine.reset()
    return engine


def forward_autocast(engine):
    """The autocast verl's forward_step runs the engine's model under (its private `_autocast_dtype`,
    with verl's bf16 fallback)."""
    dtype = getattr(engine, "_autocast_dtype", torch.bfloat16)
    return nullcontext() if dtype == torch.float32 else torch.autocast(get_device_name(), dtype=dtype)


def hook_engine_update(engine, *, before_update, before_step) -> None:
    """Replace the engine's `forward_backward_batch` and `optimizer_step` on the instance (once):
    `before_update(data)` runs on each training mini-batch before verl splits it into micro-batches,
    `before_step()` before each optimiser step, whose grad norm is kept for `optimizer_stepped`."""
    if getattr(engine, "_srpo_hooked", False):
        return
    inner, inner_step = engine.forward_backward_batch, engine.optimizer_step

    def forward_backward_batch(data, loss_function, forward_only=False):
        if not forward_only:
            before_update(data)
        return inner(data, loss_function, forward_only)

    def optimizer_step():
        before_step()
        grad_norm = inner_step()
        engine._srpo_last_grad_norm = float(grad_norm)
        return grad_norm

    engine.forward_backward_batch = forward_backward_batch
    engine.optimizer_step = optimizer_step
    engine._srpo_hooked = True


def optimizer_stepped(engine) -> bool:
    """False when verl skipped the last optimiser step (it does on a non-finite grad norm)."""
    return math.isfinite(getattr(engine, "_srpo_last_grad_norm", 0.0))


def free_fsdp1_root(module) -> None:
    """Reshard an FSDP1 root after a forward without backward.

    FSDP1 keeps the root unit's unsharded flat parameter after forward (backward would need it) and
    reuses it at the next forward while it is allocated; verl's eval context frees it only when
    fsdp_size > 1. The EMA step writes the shards, so a teacher root kept from the previous pass would
    score with stale embeddings, final norm and LM head. FSDP2 (and NO_SHARD) never reuse it.
    """
    handle = getattr(module, "_handle", None)  # FullyShardedDataParallel's flat-parameter handle (torch-private)
    if handle is not None and handle.uses_sharded_strategy:
        handle.reshard(True)
        handle.post_reshard()

"""The SRPO worker: verl's ActorRolloutRefWorker plus an EMA self-teacher and its teacher pass.

Everything verl does stays as is; this subclass adds
  - an EMA teacher: a second forward-only FSDP engine built like verl's reference model, starting
    from the same weights as the student and updated after each optimiser step;
  - `compute_srpo_teacher`: for the rows the trainer routes to the teacher, the student's top-K
    ids and the teacher's log-probs at them, its entropy and sampled-token log-prob, computed
    micro-batch by micro-batch inside verl's own forward (logits-processor hook): no (tokens x V)
    tensor leaves the worker;
  - the per-mini-batch mean of the entropy weights, reduced over data-parallel ranks;
  - the teacher in verl checkpoints (saved beside the actor, restored on resume).
"""

from __future__ import annotations

import logging
import math
import os
from copy import deepcopy
from functools import partial

import torch
from omegaconf import open_dict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.device import get_device_id
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker, TrainingWorkerConfig

from srpo_verl import core_algos
from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration.loss import packed_response_positions, response_positions, routed_response_tokens, srpo_loss_fn

logger = logging.getLogger(__name__)

TEACHER_DIR = "srpo_ema_teacher"
TEACHER_FIELDS = ("srpo_topk_ids", "srpo_teacher_topk", "srpo_teacher_entropy", "srpo_teacher_entropy_topk", "srpo_teacher_log_prob")


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of an FSDP2 DTensor parameter (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


class _TeacherPass:
    """Logits processor for the student's no-grad forward over teacher rows.

    Called by verl's engine once per micro-batch with the student's (temperature-scaled) logits;
    runs the teacher on the same rows' teacher prompts and keeps, per response token, what the
    loss needs. Results are keyed by the `srpo_row` field so verl's micro-batch reordering
    (dynamic batch sizes) cannot misalign them.
    """

    def __init__(self, teacher_engine, k: int, chunk_size: int, student_engine=None, mix: float | None = None):
        self.teacher_engine, self.k, self.chunk_size = teacher_engine, k, chunk_size
        # Trust-region teacher: the teacher engine holds the frozen initial weights (q_ref) and the
        # student's own forward on the teacher sequences gives q_theta.
        self.student_engine, self.mix = student_engine, mix
        self.rows: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, student_logits=None, data=None, model_output=None, dp_group=None):
        if student_logits is None:  # the loss role of the same call: nothing to optimise
            return torch.zeros((), device=data["responses"].values().device), {}
        logits = student_logits.squeeze(0)  # (nnz, V)
        k = min(self.k, logits.shape[-1])
        s_pos = response_positions(data)  # (R_total,) on the micro-batch's device
        topk_ids = core_algos.student_topk(logits, k=k, rows=s_pos, chunk_size=self.chunk_size)  # (R_total, K)

        teacher_logits, t_pos = self._teacher_logits(data)  # (nnz_t, V), (R_total,)
        topk_ids = topk_ids.to(teacher_logits.device)
        log_q_topk = core_algos.teacher_topk_log_probs(teacher_logits, topk_ids, rows=t_pos, chunk_size=self.chunk_size)
        entropy = core_algos.teacher_entropy(teacher_logits, rows=t_pos, chunk_size=self.chunk_size)
        entropy_topk = core_algos.topk_tail_entropy(core_algos.add_tail_bucket(log_q_topk))
        sampled = data["responses"].values().to(teacher_logits.device).long().unsqueeze(-1)  # (R_total, 1)
        log_q_sampled = core_algos.teacher_topk_log_probs(
            teacher_logits, sampled, rows=t_pos, chunk_size=self.chunk_size
        ).squeeze(-1)

        lens = data["responses"].offsets().diff().tolist()
        per_token = {  # host-side: kept until the trainer stores them
            "srpo_topk_ids": topk_ids.to(torch.int32).cpu(),
            "srpo_teacher_topk": log_q_topk.float().cpu(),
            "srpo_teacher_entropy": entropy.float().cpu(),
            "srpo_teacher_entropy_topk": entropy_topk.float().cpu(),
            "srpo_teacher_log_prob": log_q_sampled.float().cpu(),
        }
        for row, pieces in zip(data["srpo_row"].tolist(), zip(*(v.split(lens) for v in per_token.values()))):
            self.rows[row] = dict(zip(per_token, pieces))
        return {}

    def _teacher_logits(self, data):
        """Teacher logits over the packed teacher sequences, and where its response tokens sit."""
        teacher_ids = data["srpo_teacher_input_ids"]
        seq_lens = teacher_ids.offsets().diff()
        response_lens = data["responses"].offsets().diff()
        position_ids = torch.nested.as_nested_tensor(
            [torch.arange(int(n), device=teacher_ids.device) for n in seq_lens.tolist()], layout=torch.jagged
        )
        mb = tu.get_tensordict({"input_ids": teacher_ids, "position_ids": position_ids})
        for key in ("temperature", "use_remove_padding", "pad_mode", "use_fused_kernels", "sp_size"):
            value = tu.get(data, key)
            if isinstance(value, torch.Tensor):
                mb[key] = value
            elif value is not None:
                tu.assign_non_tensor(mb, **{key: value})
        if not tu.get_non_tensor_data(data=mb, key="use_remove_padding", default=True):
            raise NotImplementedError("the SRPO teacher pass needs actor_rollout_ref.model.use_remove_padding=True")
        engine = self.teacher_engine
        inputs, output_args = engine.prepare_model_inputs(micro_batch=mb)
        logits = engine.module(**inputs, use_cache=False).logits.squeeze(0)  # (nnz_t, V)
        if self.mix is not None:
            # log_softmax((1 - m) a + m b) = log_softmax((1 - m) log_softmax(a) + m log_softmax(b)):
            # mixing raw logits is the geometric mixture of the two distributions.
            student = self.student_engine.module(**inputs, use_cache=False).logits.squeeze(0)
            logits = core_algos.trust_region_teacher_log_probs(logits, student, mix=self.mix)
        temperature = output_args["temperature_rmpad"].reshape(-1, 1)  # (nnz_t, 1), as verl scales
        logits.div_(temperature.to(logits.dtype))  # forward-only tensor of ours: in place, no second copy
        t_pos = packed_response_positions(seq_lens.to(logits.device), response_lens.to(logits.device))
        return logits, t_pos


class SRPOActorRolloutRefWorker(ActorRolloutRefWorker):
    """ActorRolloutRefWorker with an EMA self-teacher (see the module docstring)."""

    srpo: SRPOConfig | None = None
    teacher: TrainingWorker | None = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def srpo_setup(self, srpo_config: dict, vocab_k: int) -> dict:
        """Build the EMA teacher and install the SRPO loss (called once after init_model)."""
        self.srpo = SRPOConfig.from_node(srpo_config)
        self.srpo_k = vocab_k
        if self.teacher is None:
            self.teacher = self._build_teacher()
        actor_config = self.loss_fn.keywords["config"]  # verl's own ActorConfig dataclass
        self.set_loss_fn(partial(srpo_loss_fn, actor_config, self.srpo))
        self._install_engine_hooks()
        return {"teacher_params": sum(p.numel() for p in self.teacher.engine.module.parameters())}

    def _build_teacher(self) -> TrainingWorker:
        """A forward-only FSDP engine over the same model, built the way verl builds its reference."""
        ref = deepcopy(self.config.ref)
        with open_dict(ref):
            ref.ppo_mini_batch_size = self.config.actor.ppo_mini_batch_size
            ref.ppo_micro_batch_size = ref.pop("log_prob_micro_batch_size", None)
            ref.ppo_micro_batch_size_per_gpu = ref.pop("log_prob_micro_batch_size_per_gpu", None)
            ref.use_dynamic_bsz = ref.pop("log_prob_use_dynamic_bsz", False)
            ref.ppo_max_token_len_per_gpu = ref.pop("log_prob_max_token_len_per_gpu", None)
            # The teacher runs inside the actor's micro-batches (see _TeacherPass), never through its
            # own batching; any valid value satisfies verl's config check.
            if ref.ppo_micro_batch_size is None and ref.ppo_micro_batch_size_per_gpu is None and not ref.use_dynamic_bsz:
                ref.ppo_micro_batch_size_per_gpu = 1
        ref_config = omega_conf_to_dataclass(ref)
        actor_model = self.actor.config.model_config
        ref_config.model_config = deepcopy(actor_model)
        cfg = TrainingWorkerConfig(
            model_type="language_model",
            model_config=ref_config.model_config,
            engine_config=ref_config.engine,
            optimizer_config=ref_config.optim,
            checkpoint_config=ref_config.checkpoint,
        )
        cfg.engine_config.use_remove_padding = self.actor.engine_config.use_remove_padding
        teacher = TrainingWorker(config=cfg)
        teacher.reset()
        self._copy_student_into_teacher(teacher)
        return teacher

    def _param_pairs(self, teacher: TrainingWorker | None = None):
        teacher = teacher or self.teacher
        t_params = dict(teacher.engine.module.named_parameters())
        s_params = dict(self.actor.engine.module.named_parameters())
        if t_params.keys() != s_params.keys():
            raise RuntimeError("EMA teacher and student have different parameter names")
        for name, s in s_params.items():
            t = t_params[name]
            if _local(t).data_ptr() == _local(s).data_ptr():
                # A teacher sharing storage with the student is the live student (docs/spec.md §4).
                raise RuntimeError(f"EMA teacher parameter {name} is the live student's tensor")
            if _local(t).shape != _local(s).shape:
                # The EMA pairs rank-local shards by name: both engines must shard alike.
                raise RuntimeError(
                    f"EMA teacher shard of {name} has shape {tuple(_local(t).shape)} but the student's has "
                    f"{tuple(_local(s).shape)}: the teacher (built from actor_rollout_ref.ref) must use the "
                    "actor's fsdp_config.fsdp_size and wrap_policy"
                )
            yield name, _local(t), _local(s)

    @torch.no_grad()
    def _copy_student_into_teacher(self, teacher: TrainingWorker) -> None:
        for _, t, s in self._param_pairs(teacher):
            t.copy_(s.to(t.device, t.dtype))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    @torch.no_grad()
    def srpo_ema_update(self) -> dict:
        """theta' <- (1 - rate) theta' + rate theta, shard by shard (no communication).

        The trust-region teacher keeps theta' = theta_0 (its reference) and only reports the gap. When the
        optimiser skipped its step (verl does on a non-finite gradient norm) the teacher stays too: the
        EMA follows the student's optimiser steps, and the student did not move."""
        skipped = not math.isfinite(getattr(self.actor.engine, "_srpo_last_grad_norm", 0.0))
        rate = self.srpo.ema_rate if self.srpo.teacher == "ema" and not skipped else 0.0
        gap = 0.0
        for _, t, s in self._param_pairs():
            if rate:
                t.lerp_(s.to(t.device, t.dtype), rate)  # verl offloads forward-only engines to host
            gap += float((t.float() - s.to(t.device).float()).pow(2).sum())
        return {"srpo/teacher_student_l2": math.sqrt(gap), "srpo/ema_skipped": float(skipped)}

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def srpo_teacher_state(self) -> dict:
        """Rank-local teacher shards (for tests and the resume check)."""
        return {name: t.detach().cpu().clone() for name, t, _ in self._param_pairs()}

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_srpo_teacher(self, data):
        """Teacher pass over the rows the trainer sent (only rows that need a teacher)."""
        n = data.batch_size[0]
        data["srpo_row"] = torch.arange(n)  # host: the batch arrives from TransferQueue on the host
        tu.assign_non_tensor(
            data, compute_loss=True, calculate_entropy=False, distillation_use_topk=True, distillation_only=True
        )
        trust_region = self.srpo.teacher == "trust_region"
        collector = _TeacherPass(
            self.teacher.engine,
            self.srpo_k,
            self.srpo.chunk_size,
            student_engine=self.actor.engine if trust_region else None,
            mix=self.srpo.trust_region_mix if trust_region else None,
        )
        saved, self.actor.loss_fn = self.actor.loss_fn, collector
        try:
            with self.teacher.engine.eval_mode():
                for part in self._teacher_parts(data):
                    self.actor.infer_batch(part)
        finally:
            self.actor.loss_fn = saved
        self.srpo_teacher_rows_total = getattr(self, "srpo_teacher_rows_total", 0) + len(collector.rows)
        missing = set(range(n)) - set(collector.rows)
        if missing:
            raise RuntimeError(f"teacher pass produced no output for rows {sorted(missing)[:8]}")
        fields = {
            key: torch.nested.as_nested_tensor([collector.rows[i][key] for i in range(n)], layout=torch.jagged)
            for key in TEACHER_FIELDS
        }
        return tu.get_tensordict(fields)

    def _teacher_parts(self, data):
        """The rows in pieces verl's fixed-size micro-batching accepts.

        With fixed micro-batches verl requires rows % micro_batch_size == 0; the teacher rows are
        as many as the routing says, so the remainder goes in its own piece (never padded with
        rows the teacher does not need). Dynamic batch sizes take any row count.
        """
        engine_config = self.actor.engine_config
        n = data.batch_size[0]
        size = engine_config.infer_micro_batch_size_per_gpu
        if engine_config.use_dynamic_bsz or not size or n % size == 0:
            yield data
            return
        for start in range(0, n, size):
            part = tu.index_select_tensor_dict(data, list(range(start, min(start + size, n))))
            tu.assign_non_tensor(part, micro_batch_size_per_gpu=min(size, n - start))
            yield part

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data):
        """verl's update; with top-K distillation on, the engine also calls the SRPO loss as its
        logits processor (the hook verl's own top-K distillation uses)."""
        if self.srpo is not None and self.srpo.distils_logits:
            tu.assign_non_tensor(data, distillation_use_topk=True)
        return super().update_actor(data)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def srpo_teacher_rows_seen(self) -> int:
        """Rows the teacher has scored on this rank since start (the count the trainer logs)."""
        return getattr(self, "srpo_teacher_rows_total", 0)

    def _install_engine_hooks(self) -> None:
        """Engine hooks: the mini-batch-global entropy-weight normaliser, and the last grad norm.

        Each optimiser mini-batch gets `core_algos.entropy_weight_log_mean` over its routed tokens
        and the number of those tokens, reduced over data-parallel ranks (on the accelerator, as NCCL
        needs). verl's engine computes
        the mini-batch token count the same way (all-reduce in forward_backward_batch) before
        splitting into micro-batches; the weights need the same mini-batch-global view
        (docs/spec.md §1.7), whatever the micro-batch and rank split. The grad norm tells the EMA
        step whether the optimiser stepped (verl skips the step on a non-finite norm).
        """
        engine = self.actor.engine
        if getattr(engine, "_srpo_normaliser", False):
            return
        inner, inner_step = engine.forward_backward_batch, engine.optimizer_step
        beta = self.srpo.beta

        def all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
            group = engine.get_data_parallel_group()
            if group is None or not torch.distributed.is_initialized():
                return t
            t = t.to(get_device_id())
            reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
            torch.distributed.all_reduce(t, op=reduce_op, group=group)
            return t

        def forward_backward_batch(data, loss_function, forward_only=False):
            if not forward_only and "srpo_teacher_entropy" in data.keys():
                routed = routed_response_tokens(data) & data["response_mask"].values().bool()  # (R_total,)
                entropy = data["srpo_teacher_entropy"].values()
                log_mean = core_algos.entropy_weight_log_mean(entropy, routed, beta=beta, all_reduce=all_reduce)
                # The distilled tokens of the whole mini-batch: sdpo's denominator (SRPOConfig).
                distilled = all_reduce(routed.sum().double(), "sum")
                tu.assign_non_tensor(
                    data, srpo_log_mean_weight=float(log_mean), srpo_num_distilled_tokens=float(distilled)
                )
            return inner(data, loss_function, forward_only)

        def optimizer_step():
            grad_norm = inner_step()
            engine._srpo_last_grad_norm = float(grad_norm)
            return grad_norm

        engine.forward_backward_batch = forward_backward_batch
        engine.optimizer_step = optimizer_step
        engine._srpo_normaliser = True

    # ------------------------------------------------------------------ checkpoints
    def _teacher_path(self, local_path: str) -> str:
        return os.path.join(local_path, TEACHER_DIR, f"rank_{torch.distributed.get_rank()}.pt")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if self.teacher is None:
            return
        path = self._teacher_path(local_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state = {name: t.detach().cpu().clone() for name, t, _ in self._param_pairs()}
        # Write then rename: a kill while saving never leaves a readable but partial teacher.
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    @torch.no_grad()
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        if self.teacher is None:
            return
        path = self._teacher_path(local_path)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"resuming SRPO from a checkpoint without its EMA teacher ({path}); refusing to restart the "
                "teacher from the student (it would silently become a different run)"
            )
        state = torch.load(path, map_location="cpu")
        for name, t, _ in self._param_pairs():
            t.copy_(state[name].to(t.device, t.dtype))

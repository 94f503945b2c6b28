"""The SRPO worker: verl's ActorRolloutRefWorker plus an EMA self-teacher and its teacher pass.

Everything verl does stays as is; this subclass adds
  - the student's top-K ids of the teacher rows, taken inside verl's own old-log-prob forward
    (`compute_log_prob`, logits-processor hook): the routing is known once rewards are, so no
    second student forward is needed;
  - an EMA teacher: a second forward-only FSDP engine built like verl's reference model, starting
    from the same weights as the student and updated after each optimiser step; for a LoRA student,
    an EMA copy of the adapter only, swapped into the student's module for the teacher pass
    (`lora_teacher.py`: no second model);
  - `compute_srpo_teacher`: for the rows the trainer routes to the teacher, the teacher's log-probs
    at the student's top-K ids, its entropy and sampled-token log-prob. The teacher runs on its own
    micro-batches, budgeted by teacher tokens, and computes logits only at the response positions:
    no (tokens x V) tensor beyond those positions is made, and none leaves the worker;
  - the per-mini-batch mean of the entropy weights, reduced over data-parallel ranks;
  - the teacher in verl checkpoints (saved beside the actor, restored on resume).
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, nullcontext
from functools import partial

import torch
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.engine_workers import ActorRolloutRefWorker

from srpo_verl import core_algos
from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration import teacher_forward, verl_adapter, wire
from srpo_verl.integration.verl_adapter import TrainingWorker
from srpo_verl.integration.lora_teacher import AdapterTeacher
from srpo_verl.lent_gradient import LendBook
from srpo_verl.integration.loss import (
    packed_response_positions,
    response_positions,
    response_tokens_of,
    routed_response_tokens,
    srpo_loss_fn,
    teacher_token_mask,
)

logger = logging.getLogger(__name__)

TEACHER_DIR = "srpo_ema_teacher"


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of an FSDP2 DTensor parameter (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


class _StudentTopK:
    """Logits processor for verl's old-log-prob forward: the student's top-K ids at the response
    tokens of the rows marked `wire.TAUGHT` (the rows the teacher will score), keyed by `wire.ROW`
    so verl's micro-batch reordering cannot misalign them. The loss role returns nothing to optimise."""

    def __init__(self, k: int, chunk_size: int):
        self.k, self.chunk_size = k, chunk_size
        self.rows: dict[int, torch.Tensor] = {}

    def __call__(self, student_logits=None, data=None, model_output=None, dp_group=None):
        if student_logits is None:
            return torch.zeros((), device=data["responses"].values().device), {}
        logits = student_logits.squeeze(0)  # (nnz, V), at the rollout temperature
        taught = data[wire.TAUGHT.name].bool()  # (B,)
        tokens = response_tokens_of(data, taught)  # (R_total,)
        ids = core_algos.student_topk(
            logits, k=min(self.k, logits.shape[-1]), rows=response_positions(data)[tokens], chunk_size=self.chunk_size
        )  # (n, K)
        lens = (data["responses"].offsets().diff() * taught).tolist()
        for row, piece in zip(data[wire.ROW].tolist(), ids.to(torch.int32).cpu().split(lens)):
            self.rows[row] = piece
        return {}


def teacher_micro_batches(data, *, use_dynamic_bsz: bool, micro_batch_size: int | None, dp_group=None):
    """The teacher rows in micro-batches for the teacher's forward.

    With dynamic batch sizes, verl's own balancing on the teacher sequences (`input_ids` here), so
    the per-GPU token budget bounds teacher tokens (prompt + demonstration + response), not the
    student's; verl makes the count equal on all data-parallel ranks (FSDP forwards are collective).
    With fixed sizes, `micro_batch_size` rows each and the remainder in its own last piece (never
    padded with rows the teacher does not need); every rank holds the same number of rows.
    """
    if use_dynamic_bsz:
        return prepare_micro_batches(data, dp_group=dp_group, same_micro_num_in_dp=True)[0]
    n = data.batch_size[0]
    size = micro_batch_size or n
    return [tu.index_select_tensor_dict(data, list(range(i, min(i + size, n)))) for i in range(0, n, size)]


class SRPOActorRolloutRefWorker(ActorRolloutRefWorker):
    """ActorRolloutRefWorker with an EMA self-teacher (see the module docstring)."""

    srpo: SRPOConfig | None = None
    teacher: TrainingWorker | AdapterTeacher | None = None
    srpo_lends: LendBook | None = None
    srpo_teacher_rows_total: int = 0  # teacher sequences run since the last EMA step (a forward hook counts)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        """verl's init_model; a new LoRA adapter is first seeded. verl draws lora_A from torch's global
        RNG unseeded, so two launches of one run would start from different adapters (and teachers),
        and a resumed run could never equal an uninterrupted one. The seed is the actor engine's."""
        model = self.config.model
        if (model.get("lora_rank", 0) or 0) > 0 and model.get("lora_adapter_path", None) is None:
            torch.manual_seed(int((self.config.actor.get("fsdp_config", None) or {}).get("seed", 42)))
        return super().init_model()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def srpo_setup(self, srpo_config: dict, vocab_k: int) -> dict:
        """Build the EMA teacher and install the SRPO loss (called once after init_model)."""
        self.srpo = SRPOConfig.from_node(srpo_config)
        self.srpo_k = vocab_k
        if self.teacher is None:
            self.teacher = self._build_teacher()
            # Counted where the teacher module actually runs: sequences in each packed forward (the
            # adapter teacher shares the student's module: counted only while its adapter is in).
            self._teacher_engine().module.register_forward_pre_hook(self._count_teacher_rows, with_kwargs=True)
        actor_config = verl_adapter.actor_loss_config(self)
        self.srpo_lends = LendBook()
        self.set_loss_fn(partial(srpo_loss_fn, actor_config, self.srpo, lends=self.srpo_lends))
        self._install_engine_hooks()
        if isinstance(self.teacher, AdapterTeacher):
            return {"teacher_params": sum(t.numel() for t in self.teacher.state.values())}
        return {"teacher_params": sum(p.numel() for p in self.teacher.engine.module.parameters())}

    def _teacher_engine(self):
        """The engine whose module the teacher pass runs: the student's own for the adapter teacher."""
        return self.actor.engine if isinstance(self.teacher, AdapterTeacher) else self.teacher.engine

    def _teacher_weights(self):
        """Context in which the teacher engine's module holds the teacher's weights."""
        return self.teacher.swapped_in() if isinstance(self.teacher, AdapterTeacher) else nullcontext()

    def _count_teacher_rows(self, module, args, kwargs):
        if isinstance(self.teacher, AdapterTeacher) and not self.teacher.active:
            return
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:  # packed sequences: each starts at position 0 (reset by the EMA step)
            self.srpo_teacher_rows_total += int((position_ids == 0).sum())

    def _build_teacher(self) -> TrainingWorker | AdapterTeacher:
        """A forward-only FSDP engine over the same model, built the way verl builds its reference; for a
        LoRA student, base + EMA(adapter) inside the student's module (lora_teacher.py)."""
        if (self.actor.config.model_config.lora_rank or 0) > 0:
            return AdapterTeacher(self.actor.engine.module)
        teacher = verl_adapter.forward_only_engine_like_ref(self)
        self._copy_student_into_teacher(teacher)
        return teacher

    def _param_pairs(self, teacher: TrainingWorker | AdapterTeacher | None = None):
        teacher = teacher or self.teacher
        if isinstance(teacher, AdapterTeacher):
            for name, t, s in teacher.pairs():
                if t.numel() > 0 and t.data_ptr() == s.data_ptr():  # never the live student's adapter
                    raise RuntimeError(f"EMA teacher adapter tensor {name} is the live student's tensor")
                yield name, t, s
            return
        t_params = dict(teacher.engine.module.named_parameters())
        s_params = dict(self.actor.engine.module.named_parameters())
        if t_params.keys() != s_params.keys():
            raise RuntimeError("EMA teacher and student have different parameter names")
        for name, s in s_params.items():
            t = t_params[name]
            # A teacher sharing storage with the student is the live student (docs/spec.md §4). An empty
            # shard (FSDP leaves trailing ranks none of a small parameter) has data_ptr 0 on both sides
            # and shares nothing.
            if t is s or (_local(t).numel() > 0 and _local(t).data_ptr() == _local(s).data_ptr()):
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
    def _copy_student_into_teacher(self, teacher: TrainingWorker | AdapterTeacher) -> None:
        for _, t, s in self._param_pairs(teacher):
            t.copy_(s.to(t.device, t.dtype))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    @torch.no_grad()
    def srpo_ema_update(self) -> dict:
        """theta' <- (1 - rate) theta' + rate theta, shard by shard (no communication).

        One difference d = theta - theta' per shard gives both the step (theta' += rate d, which is
        `lerp_`) and the gap metric (||theta - theta'_new|| = (1 - rate) ||d||), accumulated where the
        teacher lives and read once: when both shards are on the accelerator nothing crosses to the
        host but that one number. (verl offloads forward-only engines to host by default; the student
        shard is then copied over, one shard at a time.)

        The trust-region teacher keeps theta' = theta_0 (its reference) and only reports the gap. When the
        optimiser skipped its step (verl does on a non-finite gradient norm) the teacher stays too: the
        EMA follows the student's optimiser steps, and the student did not move."""
        skipped = not verl_adapter.optimizer_stepped(self.actor.engine)
        rate = 0.0 if skipped else self.srpo.teacher_ema_rate
        pairs = [(t, s) for _, t, s in self._param_pairs()]
        gap = core_algos.ema_teacher_update_(pairs, rate) if pairs else 0.0
        # The teacher rows of the step just updated, reported here rather than by a call of its own.
        ran, self.srpo_teacher_rows_total = self.srpo_teacher_rows_total, 0
        return {
            "srpo/teacher_student_l2": float(gap),
            "srpo/ema_skipped": float(skipped),
            wire.TEACHER_FORWARD_ROWS: ran,
        }

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def srpo_teacher_state(self) -> dict:
        """Rank-local teacher shards (for tests and the resume check)."""
        return {name: t.detach().cpu().clone() for name, t, _ in self._param_pairs()}

    # ------------------------------------------------------------------ student top-K
    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data):
        """verl's old-log-prob forward; when the trainer marked teacher rows (`srpo_taught`), the
        same forward also returns the student's top-K ids at their response tokens (`srpo_topk_ids`,
        an empty row for every other row)."""
        if self.srpo is None or wire.TAUGHT.name not in data.keys():
            return super().compute_log_prob(data)
        n = data.batch_size[0]
        data[wire.ROW] = torch.arange(n)  # host: the batch arrives from TransferQueue on the host
        verl_adapter.call_logits_processor(data, inference=True)
        collector = _StudentTopK(self.srpo_k, self.srpo.chunk_size)
        with verl_adapter.actor_loss_fn(self, collector):
            output = super().compute_log_prob(data)
        if output is not None:  # host: verl's output is on the host (.cpu()), as are the collected ids
            empty = torch.zeros(0, self.srpo_k, dtype=torch.int32)  # host: see above
            output[wire.TOPK_IDS.name] = _nested([collector.rows.get(i, empty) for i in range(n)])
        return output

    # ------------------------------------------------------------------ teacher pass
    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_srpo_teacher(self, data):
        """Teacher pass over the rows the trainer sent (only rows that need a teacher).

        data: wire.TEACHER_INPUT_IDS (the teacher sequences [teacher prompt | response]), responses,
        srpo_topk_ids; the non-tensor `temperature`. Returns wire.TEACHER_OUTPUT_NAMES per row."""
        n = data.batch_size[0]
        engine_config = self.actor.engine_config
        batch = tu.get_tensordict(
            {
                "input_ids": data[wire.TEACHER_INPUT_IDS.name],  # verl balances micro-batches by this length
                "responses": data["responses"],
                wire.TOPK_IDS.name: data[wire.TOPK_IDS.name],
                wire.ROW: torch.arange(n),  # host: TransferQueue hands the batch over on the host
            }
        )
        budget = engine_config.infer_max_token_len_per_gpu
        dp_group = self.actor.engine.get_data_parallel_group()
        longest = int(batch["input_ids"].offsets().diff().max()) if n else 0
        if engine_config.use_dynamic_bsz and dp_group is not None and torch.distributed.is_initialized():
            # Every rank decides on the longest sequence of all: one rank raising alone would leave the
            # others waiting in the next collective.
            longest_t = torch.tensor([longest], device=get_device_id())
            torch.distributed.all_reduce(longest_t, op=torch.distributed.ReduceOp.MAX, group=dp_group)
            longest = int(longest_t.item())
        if engine_config.use_dynamic_bsz and budget is not None and longest > budget:
            raise ValueError(
                f"a teacher sequence of {longest} tokens (teacher prompt + response) exceeds the per-GPU "
                f"forward token budget actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={budget}; "
                "raise it or lower algorithm.srpo.max_teacher_prompt_length"
            )
        temperature = tu.get(data, "temperature")
        if isinstance(temperature, torch.Tensor):  # per-row temperatures travel with their rows
            batch["temperature"] = temperature
        else:
            tu.assign_non_tensor(batch, temperature=temperature)
        tu.assign_non_tensor(
            batch,
            use_dynamic_bsz=engine_config.use_dynamic_bsz,
            max_token_len_per_gpu=budget,
            micro_batch_size_per_gpu=engine_config.infer_micro_batch_size_per_gpu,
        )
        micro_batches = teacher_micro_batches(
            batch,
            use_dynamic_bsz=engine_config.use_dynamic_bsz,
            micro_batch_size=engine_config.infer_micro_batch_size_per_gpu,
            dp_group=dp_group,
        )
        trust_region = self.srpo.student_mix is not None
        rows: dict[int, dict[str, torch.Tensor]] = {}
        teacher_engine = self._teacher_engine()
        with ExitStack() as stack:
            stack.enter_context(teacher_engine.eval_mode())
            if trust_region and teacher_engine is not self.actor.engine:
                # q_theta on the teacher sequences: the student's weights are needed too
                stack.enter_context(self.actor.engine.eval_mode())
            for mb in micro_batches:
                rows.update(self._score_teacher_micro_batch(mb, trust_region))
        verl_adapter.free_fsdp1_root(teacher_engine.module)
        missing = set(range(n)) - set(rows)
        if missing:
            raise RuntimeError(f"teacher pass produced no output for rows {sorted(missing)[:8]}")
        return tu.get_tensordict({key: _nested([rows[i][key] for i in range(n)]) for key in wire.TEACHER_OUTPUT_NAMES})

    @torch.no_grad()
    def _score_teacher_micro_batch(self, mb, trust_region: bool) -> dict[int, dict]:
        """The teacher's forward on one micro-batch of packed teacher sequences, logits at the response
        positions only (transformers' `logits_to_keep` with an index tensor), and what the loss needs."""
        engine = self._teacher_engine()
        mb = mb.to(get_device_id())
        teacher_ids = mb["input_ids"]
        seq_lens, response_lens = teacher_ids.offsets().diff(), mb["responses"].offsets().diff()
        position_ids = _nested([torch.arange(int(s), device=teacher_ids.device) for s in seq_lens.tolist()])
        model_mb = tu.get_tensordict({"input_ids": teacher_ids, "position_ids": position_ids})
        tu.assign_non_tensor(model_mb, use_remove_padding=True, use_fused_kernels=False, sp_size=1)
        temperature = mb["temperature"]
        if isinstance(temperature, torch.Tensor):
            model_mb["temperature"] = temperature
        else:
            tu.assign_non_tensor(model_mb, temperature=temperature)
        inputs, output_args = engine.prepare_model_inputs(micro_batch=model_mb)
        # Pad rows (added for an even split over ranks) carry no top-K ids: run, not scored.
        scored = mb[wire.TOPK_IDS.name].offsets().diff() > 0  # (B,)
        tokens = response_tokens_of(mb, scored)  # (R_all,)
        positions = packed_response_positions(seq_lens, response_lens)[tokens]  # (R,) in the packed sequence
        with verl_adapter.forward_autocast(engine):
            with self._teacher_weights():  # the adapter teacher's swap stays around its own forward only
                logits = teacher_forward.response_logits(engine.module, inputs, positions)  # (R, V)
            if trust_region:
                # q_theta of the current student on the teacher sequences, mixed in place (geometric mixture).
                student = teacher_forward.response_logits(self.actor.engine.module, inputs, positions)
                core_algos.trust_region_teacher_logits_(logits, student, mix=self.srpo.student_mix)
                del student
        per_token = teacher_forward.score_response_tokens(
            logits,
            output_args["temperature_rmpad"].reshape(-1)[positions].unsqueeze(-1),  # (R, 1), as verl scales
            mb[wire.TOPK_IDS.name].values().long(),
            mb["responses"].values()[tokens].long(),
            chunk_size=self.srpo.chunk_size,
        )
        lens = (response_lens * scored).tolist()
        pieces = zip(*(v.cpu().split(lens) for v in per_token.values()))  # host-side until the trainer stores them
        return {row: dict(zip(per_token, p)) for row, p in zip(mb[wire.ROW].tolist(), pieces)}

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data):
        """verl's update; with top-K distillation on and a routed row in this worker's share, the engine
        also calls the SRPO loss as its logits processor (the hook verl's own top-K distillation uses).
        With none routed the update is GRPO's: no processor call per micro-batch."""
        if self.srpo is not None and self.srpo.distils_logits and bool(data[wire.ROUTE.name].any()):
            verl_adapter.call_logits_processor(data)
        return super().update_actor(data)

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
        beta, lends, entropy_field = self.srpo.beta, self.srpo_lends, self.srpo.weight_entropy_field

        def all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
            group = engine.get_data_parallel_group()
            if group is None or not torch.distributed.is_initialized():
                return t
            # verl hands forward_backward_batch the mini-batch on the host; NCCL reduces accelerator
            # tensors. Reduce there, and give the result back where the caller's tensors are.
            reduced = t.to(get_device_id())
            reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
            torch.distributed.all_reduce(reduced, op=reduce_op, group=group)
            return reduced.to(t.device)

        def before_update(data):
            lends.clear()  # a step whose backward failed leaves nothing for this one
            if entropy_field in data.keys():
                routed = routed_response_tokens(data) & data["response_mask"].values().bool()  # (R_total,)
                # The teacher's values exist for the taught rows' tokens only (routed rows among them).
                routed = routed[teacher_token_mask(data, entropy_field)]
                entropy = data[entropy_field].values()
                log_mean = core_algos.entropy_weight_log_mean(entropy, routed, beta=beta, all_reduce=all_reduce)
                # The distilled tokens of the whole mini-batch: sdpo's denominator (SRPOConfig).
                distilled = all_reduce(routed.sum().double(), "sum")
                tu.assign_non_tensor(
                    data, **{wire.LOG_MEAN_WEIGHT: float(log_mean), wire.NUM_DISTILLED_TOKENS: float(distilled)}
                )

        def before_step():
            if lends.incomplete():
                # A distillation gradient that never reached the parameters: stop rather than step without it.
                raise RuntimeError(
                    f"{lends.incomplete()} SRPO distillation gradient(s) are incomplete: the part "
                    "lent to the token log-prob and the part added to the logits' gradient did not both arrive"
                )

        verl_adapter.hook_engine_update(engine, before_update=before_update, before_step=before_step)

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

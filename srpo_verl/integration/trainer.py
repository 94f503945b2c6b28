"""The SRPO step as verl v1 trainers: `trainer.v1.trainer_mode=srpo` (sync) and `srpo_colocate_async`.

verl's step is kept whole; SRPO hooks in where docs/design.md's "One step" puts it (the numbers in
the comments below are that list's):
  _compute_old_log_prob  routing (the rewards are known) -> mark the teacher rows -> verl's old-log-prob
                         forward, which also takes the student's top-K ids of those rows;
  _compute_advantage     verl's GRPO advantage -> teacher prompts -> teacher pass (teacher rows only)
                         -> each row's route and advantage for the loss;
  _update_actor          verl's update with the SRPO loss (installed by `srpo_setup`), then the EMA step;
  _load_checkpoint       builds the EMA teacher before verl restores a checkpoint (so it is restored too);
                         not for a validation-only run.
The constructor runs the driver's config and data checks before any worker starts (verl's own entry
point skips srpo_verl.main_ppo, which runs them in the driver).
"""

# device: host-side module (the trainer runs in the driver on TransferQueue's host tensors);
# see tests/gpu/test_device_discipline.py
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import ray
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer

from srpo_verl import core_algos
from srpo_verl import guard as collapse_guard
from srpo_verl.integration.config_checks import DRIVER_CHECKED_KEY, check_trainer_config
from srpo_verl.integration.data_checks import check_data_files
from srpo_verl.integration.step_checks import METRIC_PREFIX, check_step_inputs, route_step
from srpo_verl.integration.teacher_prompt import has_demonstration_content, teacher_prompt_ids, text_has_content
from srpo_verl.integration import wire
from srpo_verl.integration.worker import SRPOActorRolloutRefWorker

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))


def reward_extra(extra_fields, key: str) -> str:
    """One row's `key` from the reward function's extra output ("" when absent).

    verl stores what compute_score returns beside the score per sample under
    extra_fields["reward_extra_info"] (the place its own DAPO filter reads).
    """
    extra_fields = getattr(extra_fields, "data", extra_fields)  # NonTensorData unwrapped
    info = extra_fields.get("reward_extra_info", {}) if isinstance(extra_fields, dict) else {}
    value = info.get(key) if isinstance(info, dict) else None
    return "" if value is None else str(value)


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def teacher_pass_padding(teacher_idx: list[int], n: int, dp_size: int) -> list[int]:
    """Rows that pad the teacher pass to a multiple of the data-parallel size.

    verl dispatches a batch in equal shares to the ranks. The pad rows are distinct rows outside the
    teacher set (TransferQueue refuses a key twice, so repeating a teacher row crashes the step);
    verl pads the batch itself to a multiple of the data-parallel size, so there are always enough.
    """
    need = -len(teacher_idx) % dp_size
    taught = set(teacher_idx)
    pad = [i for i in range(n) if i not in taught][:need]
    if len(pad) < need:
        raise RuntimeError(
            f"cannot pad {len(teacher_idx)} teacher rows to a multiple of {dp_size} ranks with a batch of {n} rows"
        )
    return pad


@dataclass
class StepRouting:
    """One step's routing, decided once the rewards are known (before verl's old-log-prob pass)."""

    routing: core_algos.Routing
    route: torch.Tensor  # (B,) bool: rows on the distillation branch
    taught: torch.Tensor  # (B,) bool: rows the teacher scores
    groups: torch.Tensor  # (B,) long: group index per row
    uid: np.ndarray  # (B,) group labels (padding rows in their own "__pad_<i>" groups)
    real: torch.Tensor  # (B,) bool: not a padding row verl added
    feedback: list[str]  # per row, "" unless use_feedback

    @property
    def teacher_idx(self) -> list[int]:
        return self.taught.nonzero().flatten().tolist()


class SRPOStepMixin:
    """SRPO's additions to a verl v1 trainer (see the module docstring)."""

    # -------------------------------------------------------------- setup
    def __init__(self, config, *args, **kwargs):
        # Before any worker starts, also on verl's own entry point (which skips srpo_verl.main_ppo's
        # driver checks): the config and, unless the driver already read them, the data files.
        self.srpo = check_trainer_config(config)
        self._srpo_guard = collapse_guard.Guard(self.srpo.guard, routes=self.srpo.method != "advantage_mix")
        if not OmegaConf.select(config, DRIVER_CHECKED_KEY, default=False):
            check_data_files(config)
        super().__init__(config, *args, **kwargs)

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(SRPOActorRolloutRefWorker)

    def _load_checkpoint(self):
        trainer = self.config.trainer
        if trainer.get("val_only", False) and trainer.get("val_before_train", True):
            # verl validates and returns before any update: no loss to install, no EMA teacher to build.
            return super()._load_checkpoint()
        k = self.srpo.support_size(len(self.tokenizer))
        node = OmegaConf.to_container(self.config.algorithm.srpo, resolve=True)
        self.actor_rollout_wg.srpo_setup(node, k)
        self._srpo_k = k
        return super()._load_checkpoint()

    # -------------------------------------------------------------- step
    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        """Put the rows in a content-defined order before verl balances them across ranks.

        verl's agent loop stores rows in the order requests finish, which varies between launches;
        every later sum (log-prob micro-batches, the loss, the gradient) then adds in a different
        order, and an interrupted-and-resumed run drifts from an uninterrupted one in the last
        bits. Sorting by (prompt, response) tokens first makes a step a function of its data only.
        """
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["prompts", "responses"])
        rows = [
            (p.tolist(), r.tolist(), i)
            for i, (p, r) in enumerate(zip(data["prompts"].unbind(), data["responses"].unbind()))
        ]
        batch.reorder([i for *_, i in sorted(rows)])
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        # 1-2. Check the step's inputs and route (rewards, groups and responses are all known now).
        with marked_timer("srpo_route", self.timing_raw, color="purple"):
            self._srpo_routing = self._srpo_route(batch, metrics)
            if self._srpo_routing.taught.any():
                # 3. verl's old-log-prob forward also returns the student's top-K ids of these rows.
                self._srpo_put(batch, {wire.TAUGHT.name: self._srpo_routing.taught.long()})
        return super()._compute_old_log_prob(batch, metrics)

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_advantage(batch, metrics)  # 4. verl's GRPO advantage, every row
        step = self._srpo_routing
        with marked_timer("srpo_teacher", self.timing_raw, color="purple"):
            data = tq.kv_batch_get(
                keys=batch.keys,
                partition_id=batch.partition_id,
                select_fields=["responses", "response_mask", "old_log_probs", "advantages", "raw_prompt"],
            )
            responses = list(data["responses"].unbind())
            truncated = self._srpo_put_teacher_prompts(batch, step, list(data["raw_prompt"]), responses)  # 5
            scored = self._srpo_teacher_pass(batch, step, responses)  # 6
            teacher = tq.kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=list(wire.TEACHER_OUTPUT_NAMES)
            )
            self._srpo_put_loss_fields(batch, step, data, teacher)  # each row's route and advantage, for 7
            self._srpo_log_step(metrics, step, data, teacher, scored=scored, truncated=truncated)
        return batch

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._update_actor(batch, metrics)  # 7. the SRPO loss
        with marked_timer("srpo_ema", self.timing_raw, color="purple"):
            metrics.update(self.actor_rollout_wg.srpo_ema_update()[0])  # 8. the EMA teacher
        return batch

    # -------------------------------------------------------------- the named steps
    def _srpo_route(self, batch: KVBatchMeta, metrics: dict) -> StepRouting:
        """Checked rewards and groups -> `core_algos.routing_mask` -> the method's route and teacher rows."""
        srpo = self.srpo
        fields = ["uid", "rm_scores", "response_mask", "responses", "prompts"]
        if srpo.use_feedback:
            fields.append("extra_fields")  # the reward function's extra values live here (verl 0.9)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        responses = list(data["responses"].unbind())
        step = check_step_inputs(
            data["rm_scores"],
            list(data["uid"]),
            data["response_mask"],
            real=[not tag.get("is_padding", False) for tag in batch.tags],
            group_size=self.config.actor_rollout_ref.rollout.n,
            responses=data["responses"],
            eos_token_id=self.tokenizer.eos_token_id,
            max_response_length=self.config.actor_rollout_ref.rollout.response_length,
            prompts=data["prompts"],
        )
        metrics.update(step.metrics)
        feedback = [""] * len(responses)
        if srpo.use_feedback:
            feedback = [reward_extra(row, srpo.feedback_key) for row in list(data["extra_fields"])]
        has_feedback = (
            torch.tensor([text_has_content(f, strip_think=srpo.strip_thinking) for f in feedback]) & step.real
        )
        demonstrable = self._srpo_demonstrable(step, responses, metrics)
        # teacher_available and sdpo are limited to real rows with a non-empty response.
        routing = route_step(
            step, success_threshold=srpo.success_threshold, has_feedback=has_feedback, demonstrable=demonstrable
        )
        route, taught = srpo.routes(routing)
        return StepRouting(routing, route, taught, core_algos.group_ids(step.uid), step.uid, step.real, feedback)

    def _srpo_demonstrable(self, step, responses: list[torch.Tensor], metrics: dict) -> torch.Tensor:
        """(B,) bool: responses a teacher can read as a demonstration (checked on the correct, usable
        rows, the only ones that can demonstrate). A correct response that is only EOS, whitespace or
        thinking is no teacher for its siblings; counted in srpo/check/empty_demonstration_rows."""
        srpo = self.srpo
        candidates = core_algos.correctness(step.rewards, success_threshold=srpo.success_threshold) & step.usable
        demonstrable = torch.zeros(len(responses), dtype=torch.bool)
        for i in candidates.nonzero().flatten().tolist():
            ids = responses[i].tolist()
            demonstrable[i] = has_demonstration_content(self.tokenizer, ids, strip_think=srpo.strip_thinking)
        empty = (candidates & ~demonstrable).nonzero().flatten().tolist()
        if empty:
            logger.warning(
                "SRPO step: %d correct response(s) with nothing to show once EOS, whitespace and thinking are "
                "removed (rows %s): not used as demonstrations",
                len(empty),
                empty[:10],
            )
        metrics[METRIC_PREFIX + "empty_demonstration_rows"] = len(empty)
        return demonstrable

    def _srpo_put_teacher_prompts(self, batch, step: StepRouting, raw_prompts, responses) -> int:
        """Tokenise the teacher prompt of each teacher row and store [teacher prompt | response].

        Returns how many teacher prompts were truncated."""
        srpo = self.srpo
        max_len = srpo.max_teacher_prompt_length or (
            self.config.data.max_prompt_length + self.config.data.max_response_length
        )
        template_kwargs = dict(self.config.data.get("apply_chat_template_kwargs", {}) or {})
        rng = np.random.default_rng([int(self.config.data.get("seed", 1) or 1), int(self.global_steps)])
        groups, correct = step.groups.tolist(), step.routing.demonstration.tolist()
        rows, ids, truncated = step.teacher_idx, [], 0
        for i in rows:
            siblings = [j for j in range(len(responses)) if groups[j] == groups[i] and correct[j] and j != i]
            solution = None
            if siblings:
                # The sibling's own token ids: spliced into the template, never re-tokenised as text.
                solution = responses[int(rng.choice(siblings))].tolist()
            try:
                prompt, cut = teacher_prompt_ids(
                    self.tokenizer,
                    list(raw_prompts[i]),
                    solution=solution,
                    feedback=step.feedback[i] if solution is None else None,
                    reprompt_template=srpo.reprompt_template,
                    feedback_template=srpo.feedback_template,
                    strip_think=srpo.strip_thinking,
                    max_length=max_len,
                    overflow=srpo.teacher_prompt_overflow,
                    apply_chat_template_kwargs=template_kwargs,
                )
            except ValueError as err:
                if srpo.max_teacher_prompt_length is None:
                    raise ValueError(
                        f"{err} (unset, the limit is data.max_prompt_length + data.max_response_length = {max_len})"
                    ) from err
                raise
            truncated += int(cut > 0)
            ids.append(torch.cat([torch.tensor(prompt, dtype=responses[i].dtype), responses[i]]))
        if rows:
            self._srpo_put(batch, {wire.TEACHER_INPUT_IDS.name: _nested(ids)}, rows=rows)
        return truncated

    def _srpo_teacher_pass(self, batch, step: StepRouting, responses) -> int:
        """Run the teacher on the teacher rows (padded to the data-parallel size); an empty row of each
        teacher field for every other row. Returns the rows the workers' teacher actually ran on."""
        n, rows, scored = len(batch.keys), step.teacher_idx, 0
        if rows:
            pad = teacher_pass_padding(rows, n, self._srpo_dp_size())
            if pad:
                # A pad row carries no top-K ids, so the worker runs it (FSDP forwards are collective)
                # without scoring it; one token is all its teacher sequence needs.
                self._srpo_put(batch, {wire.TEACHER_INPUT_IDS.name: _nested([responses[i][:1] for i in pad])}, rows=pad)
            meta = KVBatchMeta(
                keys=[batch.keys[i] for i in rows + pad],
                tags=[batch.tags[i] for i in rows + pad],
                partition_id=batch.partition_id,
                fields=[wire.TEACHER_INPUT_IDS.name, "responses", wire.TOPK_IDS.name],
                extra_info={"temperature": self.config.actor_rollout_ref.rollout.temperature},
            )
            before = sum(self.actor_rollout_wg.srpo_teacher_rows_seen())
            self.actor_rollout_wg.compute_srpo_teacher(meta)
            scored = sum(self.actor_rollout_wg.srpo_teacher_rows_seen()) - before - len(pad)
        others = [i for i in range(n) if not step.taught[i]]
        if others:
            empty = {key: _nested([torch.zeros(0) for _ in others]) for key in wire.TEACHER_OUTPUT_NAMES}
            empty[wire.TEACHER_TOPK.name] = _nested([torch.zeros(0, self._srpo_k) for _ in others])
            if not rows:  # verl's old-log-prob forward ran as in GRPO: no top-K ids were stored
                empty[wire.TOPK_IDS.name] = _nested([torch.zeros(0, self._srpo_k, dtype=torch.int32) for _ in others])
            self._srpo_put(batch, empty, rows=others)
        return scored

    def _srpo_put_loss_fields(self, batch, step: StepRouting, data, teacher) -> None:
        """Each row's route and advantage (the method decides: SRPOConfig.advantage), the sampled-token
        advantage and the weight entropy of the teacher rows."""
        srpo, taught = self.srpo, step.taught.tolist()
        old, adv = list(data["old_log_probs"].unbind()), list(data["advantages"].unbind())
        t_logp = list(teacher[wire.TEACHER_LOG_PROB.name].unbind())
        sampled = [
            core_algos.sampled_token_advantage(t_logp[i], old[i]) if taught[i] else old[i][:0] for i in range(len(old))
        ]
        fields = {
            wire.ROUTE.name: step.route.long(),
            wire.SAMPLED_ADV.name: _nested(sampled),
            "advantages": _nested([srpo.advantage(adv[i], sampled[i], taught=taught[i]) for i in range(len(old))]),
        }
        if srpo.weight_entropy_field != wire.TEACHER_ENTROPY.name:
            fields[wire.TEACHER_ENTROPY.name] = _nested(list(teacher[srpo.weight_entropy_field].unbind()))
        stored = self._srpo_put(batch, fields)
        # The update fetches the listed fields: what the driver alone reads stays behind.
        batch.fields = [f for f in stored.fields if f not in wire.HOST_ONLY]

    def _srpo_log_step(self, metrics: dict, step: StepRouting, data, teacher, *, scored: int, truncated: int) -> None:
        """Routing shares, teacher statistics and counts (docs/spec.md §4: teacher entropy, response
        length and routed share foretell collapse)."""
        routing, route, taught, groups = step.routing, step.route, step.taught, step.groups
        real, n = step.real, len(route)
        group_correct = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, routing.correct.float())
        group_size = torch.zeros_like(group_correct).index_add_(0, groups, torch.ones(n))
        real_groups = torch.zeros_like(group_correct).index_add_(0, groups, real.float()) > 0
        n_real, n_groups = max(int(real.sum()), 1), max(int(real_groups.sum()), 1)
        rows = step.teacher_idx
        metrics.update(
            {
                "srpo/routed_share": float(route.sum()) / n_real,
                "srpo/grpo_share": float((~route & real).sum()) / n_real,
                "srpo/correct_share": float((routing.correct & real).sum()) / n_real,
                "srpo/all_wrong_group_share": float(((group_correct == 0) & real_groups).sum()) / n_groups,
                "srpo/all_correct_group_share": float(((group_correct == group_size) & real_groups).sum()) / n_groups,
                "srpo/teacher_rows": len(rows),
                "srpo/distilled_correct_rows": int((route & routing.correct).sum()),
                "srpo/teacher_pass_rows": scored,
                "srpo/feedback_rows": int(
                    (taught & ~core_algos.teacher_availability(routing.demonstration, step.uid)).sum()
                ),
                "srpo/teacher_prompt_truncated": truncated,
            }
        )
        if rows:
            mask = list(data["response_mask"].unbind())
            sel = lambda key: torch.cat([teacher[key].unbind()[i][mask[i].bool()] for i in rows])  # noqa: E731
            metrics.update(
                {
                    "srpo/teacher_entropy_full": sel(wire.TEACHER_ENTROPY.name).mean().item(),
                    "srpo/teacher_entropy_topk": sel(wire.TEACHER_ENTROPY_TOPK.name).mean().item(),
                    "srpo/teacher_tail_mass": (1 - sel(wire.TEACHER_TOPK.name).double().exp().sum(-1))
                    .clamp(min=0)
                    .mean()
                    .item(),
                    "srpo/teacher_response_length": float(np.mean([int(mask[i].sum()) for i in rows])),
                }
            )

    # -------------------------------------------------------------- the collapse guard (srpo_verl/guard.py)
    # verl's loop per step: step() -> save -> validate -> metrics -> log. The guard judges the step's
    # metrics at the end of step(), so with action=stop the breaching step's checkpoint is not saved
    # and the run ends at the next step's start, once verl has logged the breaching step.
    def fit(self, *args, **kwargs):
        try:
            result = super().fit(*args, **kwargs)
        except collapse_guard.GuardStop:
            self._shutdown_dump_executor()
            result = None
        if self._srpo_guard.stop_requested:
            logger.warning(self._srpo_guard.stop_report())
        return result

    def on_train_begin(self):
        super().on_train_begin()
        if self.global_steps > 1:  # resumed: fit has already moved past the restored checkpoint's step
            self._srpo_guard.note_checkpoint(self.global_steps - 1)

    def on_step_begin(self):
        if self._srpo_guard.stop_requested:
            raise collapse_guard.GuardStop()
        super().on_step_begin()

    def step(self, metrics: dict, timing_raw: dict) -> KVBatchMeta:
        batch = super().step(metrics, timing_raw)
        metrics.update(self._srpo_guard_inputs(batch))
        self._srpo_guard.observe(self.global_steps, metrics)
        metrics.update(self._srpo_guard.metrics())
        return batch

    def _save_checkpoint(self):
        if self._srpo_guard.stop_requested:
            logger.warning("SRPO collapse guard: step %d's checkpoint not saved (action=stop)", self.global_steps)
            return
        super()._save_checkpoint()
        self._srpo_guard.note_checkpoint(self.global_steps)

    def _validate(self, *args, **kwargs):
        result = super()._validate(*args, **kwargs)
        self._srpo_guard.note_validation(self.global_steps, result)
        return result

    def _srpo_guard_inputs(self, batch: KVBatchMeta) -> dict:
        """What the guard reads that verl computes only after the save: the mean response length, the
        range of the rewards and, where the reward reports `format_error`, the share of format errors."""
        fields = ["response_mask", "rm_scores", "extra_fields"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        real = [not tag.get("is_padding", False) for tag in batch.tags]
        pick = lambda rows: [row for row, keep in zip(rows, real) if keep]  # noqa: E731
        lengths = [float(m.sum()) for m in pick(data["response_mask"].unbind())]
        scores = [float(r.sum()) for r in pick(data["rm_scores"].unbind())]
        out = {
            collapse_guard.RESPONSE_LENGTH: float(np.mean(lengths)),
            collapse_guard.REWARD_RANGE: max(scores) - min(scores),
        }
        flags = [reward_extra(row, "format_error") for row in pick(list(data["extra_fields"]))]
        known = [f for f in flags if f]  # "": the reward does not report it
        if known:
            out[collapse_guard.FORMAT_ERROR] = sum(f in ("True", "1", "1.0") for f in known) / len(known)
        return out

    # -------------------------------------------------------------- TransferQueue and dispatch
    def _srpo_put(self, batch: KVBatchMeta, fields: dict, rows: list[int] | None = None) -> KVBatchMeta:
        """Store per-row fields for all rows (or `rows`) of the step; returns TransferQueue's record of
        the written rows (its `fields` lists every field they hold)."""
        keys = batch.keys if rows is None else [batch.keys[i] for i in rows]
        return tq.kv_batch_put(
            keys=keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=len(keys))
        )

    def _srpo_dp_size(self) -> int:
        info = self.actor_rollout_wg._dispatch_info.get("actor")
        if info is None:
            info = self.actor_rollout_wg._query_dispatch_info("actor")
            self.actor_rollout_wg._dispatch_info["actor"] = info
        return max(info) + 1


@register_trainer("srpo")
class SRPOTrainerSync(SRPOStepMixin, PPOTrainerSync):
    """verl's synchronous v1 trainer with the SRPO step."""


@register_trainer("srpo_colocate_async")
class SRPOTrainerColocateAsync(SRPOStepMixin, PPOTrainerColocateAsync):
    """verl's colocated asynchronous v1 trainer (partial rollout, staleness 1) with the SRPO step."""

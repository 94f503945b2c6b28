"""The SRPO step as verl v1 trainers: `trainer.v1.trainer_mode=srpo` (sync) and `srpo_colocate_async`.

verl's step is kept whole; three hooks add SRPO after the rewards and the GRPO advantage:
  _compute_advantage  routing -> teacher prompts for the rows that need one -> teacher pass on the
                      workers (only those rows) -> per-row route, entropies, advantages in the batch;
  _update_actor       verl's update with the SRPO loss (installed by `srpo_setup`), then the EMA step;
  _load_checkpoint    builds the EMA teacher before verl restores a checkpoint (so it is restored too).
"""

# device: host-side module (the trainer runs in the driver on TransferQueue's host tensors); see tests/gpu/test_device_discipline.py
from __future__ import annotations

import logging
import os

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
from srpo_verl.integration import checks
from srpo_verl.integration.teacher_prompt import has_demonstration_content, teacher_prompt_ids, text_has_content
from srpo_verl.integration.worker import TEACHER_FIELDS, SRPOActorRolloutRefWorker

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


class SRPOStepMixin:
    """SRPO's additions to a verl v1 trainer (see the module docstring)."""

    # -------------------------------------------------------------- setup
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(SRPOActorRolloutRefWorker)

    def _load_checkpoint(self):
        # Again here: launches through verl's own entry point skip srpo_verl.main_ppo.prepare.
        self.srpo = checks.check_trainer_config(self.config)
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

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        # Rewards and groups are checked before verl's estimator sees them (a NaN is named, not averaged).
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["uid", "rm_scores", "response_mask", "responses", "prompts"],
        )
        self._srpo_inputs = checks.check_step_inputs(
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
        metrics.update(self._srpo_inputs.metrics)
        batch = super()._compute_advantage(batch, metrics)
        with marked_timer("srpo_teacher", self.timing_raw, color="purple"):
            self._srpo_route_and_teach(batch, metrics)
        return batch

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._update_actor(batch, metrics)
        with marked_timer("srpo_ema", self.timing_raw, color="purple"):
            metrics.update(self.actor_rollout_wg.srpo_ema_update()[0])
        return batch

    def _srpo_route_and_teach(self, batch: KVBatchMeta, metrics: dict) -> None:
        srpo = self.srpo
        fields = ["uid", "rm_scores", "responses", "response_mask", "old_log_probs", "advantages", "raw_prompt"]
        if srpo.use_feedback:
            fields.append("extra_fields")  # the reward function's extra values live here (verl 0.9)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        n = len(batch.keys)
        step = self._srpo_inputs
        real, uid = step.real, step.uid  # padding rows carry their own "__pad_<i>" group
        feedback = [""] * n
        if srpo.use_feedback:
            feedback = [reward_extra(row, srpo.feedback_key) for row in list(data["extra_fields"])]
        has_feedback = torch.tensor([text_has_content(f, strip_think=srpo.strip_thinking) for f in feedback]) & real
        demonstrable = self._srpo_demonstrable(list(data["responses"].unbind()), metrics)
        # teacher_available and sdpo are limited to real rows with a non-empty response.
        routing = checks.route_step(
            step, success_threshold=srpo.success_threshold, has_feedback=has_feedback, demonstrable=demonstrable
        )
        route, teacher_rows = srpo.routes(routing)

        responses = list(data["responses"].unbind())
        teacher_idx = teacher_rows.nonzero().flatten().tolist()
        groups = core_algos.group_ids(uid)
        truncated = self._srpo_put_teacher_prompts(
            batch,
            list(data["raw_prompt"]),
            groups.tolist(),
            routing.demonstration.tolist(),
            feedback,
            teacher_idx,
            responses,
        )
        scored = self._srpo_teacher_pass(batch, teacher_idx, responses)

        # Per-row fields for the loss; the method decides each row's advantage.
        out = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=list(TEACHER_FIELDS)
        )
        old = list(data["old_log_probs"].unbind())
        adv = list(data["advantages"].unbind())
        t_logp = list(out["srpo_teacher_log_prob"].unbind())
        sampled_adv = [
            core_algos.sampled_token_advantage(t_logp[i], old[i]) if teacher_rows[i] else torch.zeros_like(old[i])
            for i in range(n)
        ]
        adv = [srpo.advantage(adv[i], sampled_adv[i], taught=bool(teacher_rows[i])) for i in range(n)]
        entropy_key = srpo.weight_entropy_field
        fields_out = {
            "srpo_route": route.long(),
            "srpo_sampled_adv": _nested(sampled_adv),
            "advantages": _nested(adv),
        }
        if entropy_key != "srpo_teacher_entropy":
            fields_out["srpo_teacher_entropy"] = _nested(list(out[entropy_key].unbind()))
        stored = tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields_out, batch_size=n)
        )
        if batch.fields is not None:  # the update fetches only the listed fields; the teacher prompts stay behind
            batch.fields = [f for f in stored.fields if f != "srpo_teacher_input_ids"]

        # Metrics (docs/spec.md §4: teacher entropy, response length and routed share foretell collapse).
        correct = routing.correct.float()
        group_correct = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, correct)
        group_size = torch.zeros_like(group_correct).index_add_(0, groups, torch.ones(n))
        real_groups = torch.zeros_like(group_correct).index_add_(0, groups, real.float()) > 0
        n_real = max(int(real.sum()), 1)
        metrics.update(
            {
                "srpo/routed_share": float(route.sum()) / n_real,
                "srpo/grpo_share": float((~route & real).sum()) / n_real,
                "srpo/correct_share": float((routing.correct & real).sum()) / n_real,
                "srpo/all_wrong_group_share": float(((group_correct == 0) & real_groups).sum())
                / max(int(real_groups.sum()), 1),
                "srpo/all_correct_group_share": float(((group_correct == group_size) & real_groups).sum())
                / max(int(real_groups.sum()), 1),
                "srpo/teacher_rows": len(teacher_idx),
                "srpo/distilled_correct_rows": int((route & routing.correct).sum()),
                "srpo/teacher_pass_rows": scored,
                "srpo/feedback_rows": int((teacher_rows & ~core_algos.teacher_availability(routing.demonstration, uid)).sum()),
                "srpo/teacher_prompt_truncated": truncated,
            }
        )
        if teacher_idx:
            mask = list(data["response_mask"].unbind())
            sel = lambda key: torch.cat([out[key].unbind()[i][mask[i].bool()] for i in teacher_idx])  # noqa: E731
            topk = torch.cat([out["srpo_teacher_topk"].unbind()[i][mask[i].bool()] for i in teacher_idx])
            metrics.update(
                {
                    "srpo/teacher_entropy_full": sel("srpo_teacher_entropy").mean().item(),
                    "srpo/teacher_entropy_topk": sel("srpo_teacher_entropy_topk").mean().item(),
                    "srpo/teacher_tail_mass": (1 - topk.double().exp().sum(-1)).clamp(min=0).mean().item(),
                    "srpo/teacher_response_length": float(np.mean([int(mask[i].sum()) for i in teacher_idx])),
                }
            )

    def _srpo_demonstrable(self, responses: list[torch.Tensor], metrics: dict) -> torch.Tensor:
        """(B,) bool: responses a teacher can read as a demonstration (checked on the correct, usable
        rows, the only ones that can demonstrate). A correct response that is only EOS, whitespace or
        thinking is no teacher for its siblings; counted in srpo/check/empty_demonstration_rows."""
        step, srpo = self._srpo_inputs, self.srpo
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
        metrics[checks.METRIC_PREFIX + "empty_demonstration_rows"] = len(empty)
        return demonstrable

    def _srpo_put_teacher_prompts(self, batch, raw_prompts, groups, correct, feedback, teacher_idx, responses) -> int:
        """Tokenise the teacher prompt of each teacher row and store [teacher prompt | response]."""
        srpo = self.srpo
        n = len(batch.keys)
        max_len = srpo.max_teacher_prompt_length or (
            self.config.data.max_prompt_length + self.config.data.max_response_length
        )
        template_kwargs = dict(self.config.data.get("apply_chat_template_kwargs", {}) or {})
        rng = np.random.default_rng([int(self.config.data.get("seed", 1) or 1), int(self.global_steps)])
        ids: list[torch.Tensor] = [responses[i][:1] for i in range(n)]  # placeholder for other rows
        truncated = 0
        for i in teacher_idx:
            siblings = [j for j in range(n) if groups[j] == groups[i] and correct[j] and j != i]
            solution = None
            if siblings:
                # The sibling's own token ids: spliced into the template, never re-tokenised as text.
                solution = responses[int(rng.choice(siblings))].tolist()
            try:
                prompt, cut = self._srpo_teacher_prompt(raw_prompts[i], solution, feedback[i], max_len, template_kwargs)
            except ValueError as err:
                if srpo.max_teacher_prompt_length is None:
                    raise ValueError(
                        f"{err} (unset, the limit is data.max_prompt_length + data.max_response_length = {max_len})"
                    ) from err
                raise
            truncated += int(cut > 0)
            ids[i] = torch.cat([torch.tensor(prompt, dtype=responses[i].dtype), responses[i]])
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({"srpo_teacher_input_ids": _nested(ids)}, batch_size=n),
        )
        return truncated

    def _srpo_teacher_prompt(self, raw_prompt, solution, feedback, max_len, template_kwargs):
        srpo = self.srpo
        return teacher_prompt_ids(
            self.tokenizer,
            list(raw_prompt),
            solution=solution,
            feedback=feedback if solution is None else None,
            reprompt_template=srpo.reprompt_template,
            feedback_template=srpo.feedback_template,
            strip_think=srpo.strip_thinking,
            max_length=max_len,
            overflow=srpo.teacher_prompt_overflow,
            apply_chat_template_kwargs=template_kwargs,
        )

    def _srpo_teacher_pass(self, batch, teacher_idx, responses) -> int:
        """Run the teacher on the teacher rows (padded to the data-parallel size); zeros for the others."""
        n, k = len(batch.keys), self._srpo_k
        scored, pad = 0, []
        if teacher_idx:
            pad = teacher_pass_padding(teacher_idx, n, self._srpo_dp_size())
            if pad:
                # A padding row is scored on its own [prompt | response] (any valid sequence would do);
                # its outputs are overwritten with zeros below.
                keys = [batch.keys[i] for i in pad]
                prompts = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["prompts"])
                ids = [torch.cat([p, responses[i].to(p.dtype)]) for p, i in zip(prompts["prompts"].unbind(), pad)]
                tq.kv_batch_put(
                    keys=keys,
                    partition_id=batch.partition_id,
                    fields=TensorDict({"srpo_teacher_input_ids": _nested(ids)}, batch_size=len(pad)),
                )
            rows = list(teacher_idx) + pad
            meta = KVBatchMeta(
                keys=[batch.keys[i] for i in rows],
                tags=[batch.tags[i] for i in rows],
                partition_id=batch.partition_id,
                extra_info={"temperature": self.config.actor_rollout_ref.rollout.temperature},
            )
            before = sum(self.actor_rollout_wg.srpo_teacher_rows_seen())
            self.actor_rollout_wg.compute_srpo_teacher(meta)
            # Rows the workers actually scored (padding excluded), logged next to the routing.
            scored = sum(self.actor_rollout_wg.srpo_teacher_rows_seen()) - before - len(pad)
        others = [i for i in range(n) if i not in set(teacher_idx)]
        zeros = {
            "srpo_topk_ids": [torch.zeros(len(responses[i]), k, dtype=torch.int32) for i in others],
            "srpo_teacher_topk": [torch.zeros(len(responses[i]), k) for i in others],
        }
        for key in ("srpo_teacher_entropy", "srpo_teacher_entropy_topk", "srpo_teacher_log_prob"):
            zeros[key] = [torch.zeros(len(responses[i])) for i in others]
        if others:
            tq.kv_batch_put(
                keys=[batch.keys[i] for i in others],
                partition_id=batch.partition_id,
                fields=TensorDict({key: _nested(v) for key, v in zeros.items()}, batch_size=len(others)),
            )
        return scored

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

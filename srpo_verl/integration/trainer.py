"""The SRPO step as verl v1 trainers: `trainer.v1.trainer_mode=srpo` (sync) and `srpo_colocate_async`.

verl's step is kept whole; SRPO hooks in where docs/design.md's "One step" puts it (the numbers in
the comments below are that list's):
  _compute_old_log_prob  routing (the rewards are known) -> mark the teacher rows -> verl's old-log-prob
                         forward, which also takes the student's top-K ids of those rows;
  _compute_advantage     verl's GRPO advantage -> teacher prompts -> teacher pass (teacher rows only);
  _update_actor          verl's update with the SRPO loss (installed by `srpo_setup`; it forms each row's
                         advantage from the fields the update fetches), then the EMA step;
  _load_checkpoint       builds the EMA teacher before verl restores a checkpoint (so it is restored too);
                         not for a validation-only run.
The constructor runs the driver's config and data checks before any worker starts (verl's own entry
point skips srpo_verl.main_ppo, which runs them in the driver).

The hooks are thin I/O (TransferQueue gets and puts, worker calls) around the module's pure functions:
`route_rows`, `teacher_inputs`, `teacher_pass_plan`, `step_metrics`, `guard_inputs`. A step that routes
nothing makes two TransferQueue calls and the EMA call beyond GRPO's step.
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
from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer

from srpo_verl import core_algos
from srpo_verl import guard as collapse_guard
from srpo_verl.integration.config_checks import DRIVER_CHECKED_KEY, check_trainer_config
from srpo_verl.integration.data_checks import check_data_files, prompt_lengths
from srpo_verl.integration.step_checks import METRIC_PREFIX, check_step_inputs, route_step
from srpo_verl.integration.teacher_prompt import (
    gold_teacher_messages,
    has_demonstration_content,
    teacher_prompt_ids,
    text_has_content,
)
from srpo_verl.integration import verl_adapter, wire
from srpo_verl.integration.verl_adapter import KVBatchMeta
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


# ------------------------------------------------------------------ the step's pure functions
def route_rows(data, real: list[bool], srpo, tokenizer, *, group_size: int, max_response_length: int, metrics: dict):
    """Checked rewards and groups -> `core_algos.routing_mask` -> the method's route and teacher rows.

    data: the step's uid, rm_scores, response_mask, responses, prompts (and extra_fields with
    use_feedback), as TransferQueue hands them over. Adds the checks' counts to `metrics`."""
    responses = list(data["responses"].unbind())
    step = check_step_inputs(
        data["rm_scores"],
        list(data["uid"]),
        data["response_mask"],
        real=real,
        group_size=group_size,
        responses=data["responses"],
        eos_token_id=tokenizer.eos_token_id,
        max_response_length=max_response_length,
        prompts=data["prompts"],
    )
    metrics.update(step.metrics)
    feedback = [""] * len(responses)
    if srpo.use_feedback:
        feedback = [reward_extra(row, srpo.feedback_key) for row in list(data["extra_fields"])]
    has_feedback = torch.tensor([text_has_content(f, strip_think=srpo.strip_thinking) for f in feedback]) & step.real
    demonstrable = demonstrable_rows(step, responses, srpo, tokenizer, metrics)
    # teacher_available and sdpo are limited to real rows with a non-empty response.
    routing = route_step(
        step, success_threshold=srpo.success_threshold, has_feedback=has_feedback, demonstrable=demonstrable
    )
    route, taught = srpo.routes(routing)
    return StepRouting(routing, route, taught, core_algos.group_ids(step.uid), step.uid, step.real, feedback)


def demonstrable_rows(step, responses: list[torch.Tensor], srpo, tokenizer, metrics: dict) -> torch.Tensor:
    """(B,) bool: responses a teacher can read as a demonstration (checked on the correct, usable
    rows, the only ones that can demonstrate). A correct response that is only EOS, whitespace or
    thinking is no teacher for its siblings; counted in srpo/check/empty_demonstration_rows."""
    candidates = core_algos.correctness(step.rewards, success_threshold=srpo.success_threshold) & step.usable
    demonstrable = torch.zeros(len(responses), dtype=torch.bool)
    for i in candidates.nonzero().flatten().tolist():
        demonstrable[i] = has_demonstration_content(tokenizer, responses[i].tolist(), strip_think=srpo.strip_thinking)
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


def teacher_inputs(
    step: StepRouting, raw_prompts, responses, srpo, tokenizer, *, max_length: int, template_kwargs: dict, rng
) -> tuple[list[torch.Tensor], int]:
    """[teacher prompt | response] token ids of each teacher row (in `step.teacher_idx` order), and how
    many teacher prompts were truncated. The demonstration is a correct sibling drawn with `rng`."""
    groups, correct = step.groups.tolist(), step.routing.demonstration.tolist()
    ids, truncated = [], 0
    for i in step.teacher_idx:
        siblings = [j for j in range(len(responses)) if groups[j] == groups[i] and correct[j] and j != i]
        # The sibling's own token ids: spliced into the template, never re-tokenised as text.
        solution = responses[int(rng.choice(siblings))].tolist() if siblings else None
        try:
            prompt, cut = teacher_prompt_ids(
                tokenizer,
                list(raw_prompts[i]),
                solution=solution,
                feedback=step.feedback[i] if solution is None else None,
                reprompt_template=srpo.reprompt_template,
                feedback_template=srpo.feedback_template,
                strip_think=srpo.strip_thinking,
                max_length=max_length,
                overflow=srpo.teacher_prompt_overflow,
                apply_chat_template_kwargs=template_kwargs,
            )
        except ValueError as err:
            if srpo.max_teacher_prompt_length is None:
                raise ValueError(
                    f"{err} (unset, the limit is data.max_prompt_length + data.max_response_length = {max_length})"
                ) from err
            raise
        truncated += int(cut > 0)
        ids.append(torch.cat([torch.tensor(prompt, dtype=responses[i].dtype), responses[i]]))
    return ids, truncated


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
class TeacherPassPlan:
    """What the driver stores and sends around one teacher pass (`teacher_pass_plan`)."""

    rows: list[int]  # the teacher rows, then the pad rows: the rows sent to the workers
    pad: list[int]  # pad rows (distinct non-teacher rows) for an even split over the ranks
    pad_inputs: dict  # their teacher sequence: one token (a pad row is run, never scored)
    others: list[int]  # every row outside the teacher set, the pad rows included
    others_fields: dict  # their teacher fields as empty rows, and the route of every row


def teacher_pass_plan(step: StepRouting, responses: list[torch.Tensor], *, dp_size: int, k: int) -> TeacherPassPlan:
    """The teacher pass of a step: which rows run, what pads them, and the empty teacher fields of the
    rows the teacher does not score (the update reads every field on every row)."""
    n, rows = len(responses), step.teacher_idx
    pad = teacher_pass_padding(rows, n, dp_size) if rows else []
    others = [i for i in range(n) if not step.taught[i]]
    fields = {}
    if others:
        fields = {key: _nested([torch.zeros(0) for _ in others]) for key in wire.TEACHER_OUTPUT_NAMES}
        fields[wire.TEACHER_TOPK.name] = _nested([torch.zeros(0, k) for _ in others])
        if not rows:  # verl's old-log-prob forward ran as in GRPO: no top-K ids, no route were stored
            fields[wire.TOPK_IDS.name] = _nested([torch.zeros(0, k, dtype=torch.int32) for _ in others])
            fields[wire.ROUTE.name] = step.route.long()
    return TeacherPassPlan(
        rows=rows + pad,
        pad=pad,
        pad_inputs={wire.TEACHER_INPUT_IDS.name: _nested([responses[i][:1] for i in pad])} if pad else {},
        others=others,
        others_fields=fields,
    )


def step_metrics(step: StepRouting, response_mask: list[torch.Tensor], teacher, *, truncated: int) -> dict:
    """Routing shares, teacher statistics and counts (docs/spec.md §4: teacher entropy, response
    length and routed share foretell collapse). teacher: the teacher fields of every row (None when
    no row was taught)."""
    routing, route, taught, groups = step.routing, step.route, step.taught, step.groups
    real, n = step.real, len(route)
    group_correct = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, routing.correct.float())
    group_size = torch.zeros_like(group_correct).index_add_(0, groups, torch.ones(n))
    real_groups = torch.zeros_like(group_correct).index_add_(0, groups, real.float()) > 0
    n_real, n_groups = max(int(real.sum()), 1), max(int(real_groups.sum()), 1)
    rows = step.teacher_idx
    metrics = {
        "srpo/routed_share": float(route.sum()) / n_real,
        "srpo/grpo_share": float((~route & real).sum()) / n_real,
        "srpo/correct_share": float((routing.correct & real).sum()) / n_real,
        "srpo/all_wrong_group_share": float(((group_correct == 0) & real_groups).sum()) / n_groups,
        "srpo/all_correct_group_share": float(((group_correct == group_size) & real_groups).sum()) / n_groups,
        "srpo/teacher_rows": len(rows),
        "srpo/distilled_correct_rows": int((route & routing.correct).sum()),
        "srpo/feedback_rows": int((taught & ~core_algos.teacher_availability(routing.demonstration, step.uid)).sum()),
        "srpo/teacher_prompt_truncated": truncated,
    }
    if rows:
        sel = lambda key: torch.cat([teacher[key].unbind()[i][response_mask[i].bool()] for i in rows])  # noqa: E731
        tail_mass = (1 - sel(wire.TEACHER_TOPK.name).double().exp().sum(-1)).clamp(min=0)
        metrics.update(
            {
                "srpo/teacher_entropy_full": sel(wire.TEACHER_ENTROPY.name).mean().item(),
                "srpo/teacher_entropy_topk": sel(wire.TEACHER_ENTROPY_TOPK.name).mean().item(),
                "srpo/teacher_tail_mass": tail_mass.mean().item(),
                "srpo/teacher_response_length": float(np.mean([int(response_mask[i].sum()) for i in rows])),
            }
        )
    return metrics


def guard_inputs(response_mask: list[torch.Tensor], rm_scores: list[torch.Tensor], extra_fields, real) -> dict:
    """What the guard reads that verl computes only after the save: the mean response length, the
    range of the rewards and, where the reward reports `format_error`, the share of format errors."""
    pick = lambda rows: [row for row, keep in zip(rows, real) if keep]  # noqa: E731
    lengths = [float(m.sum()) for m in pick(response_mask)]
    scores = [float(r.sum()) for r in pick(rm_scores)]
    out = {
        collapse_guard.RESPONSE_LENGTH: float(np.mean(lengths)),
        collapse_guard.REWARD_RANGE: max(scores) - min(scores),
    }
    flags = [reward_extra(row, "format_error") for row in pick(list(extra_fields))]
    known = [f for f in flags if f]  # "": the reward does not report it
    if known:
        out[collapse_guard.FORMAT_ERROR] = sum(f in ("True", "1", "1.0") for f in known) / len(known)
    return out


def teacher_prompted_batch(batch: dict, srpo) -> dict:
    """A validation batch (verl's collated dict) with each row's chat rewritten as the teacher's, the
    row's gold answer standing in for a sibling's solution (`gold_teacher_messages`). Other fields are
    shared with `batch`."""
    prompts, labels = batch["raw_prompt"], batch.get("reward_model")
    rewritten = np.empty(len(prompts), dtype=object)  # an array of lists, never a 2-D array of messages
    for i, messages in enumerate(prompts):
        chat = gold_teacher_messages(
            list(messages), None if labels is None else labels[i], reprompt_template=srpo.reprompt_template
        )
        if chat is None:
            raise ValueError(
                f"algorithm.srpo.guard.teacher_prompted_validation: validation row {i} has no "
                "reward_model.ground_truth to show the teacher; turn it off for this data"
            )
        rewritten[i] = chat
    return {**batch, "raw_prompt": rewritten}


class SRPOStepMixin:
    """SRPO's additions to a verl v1 trainer (see the module docstring)."""

    _srpo_val_teacher_lengths: list[int] | None = None  # teacher-prompted validation prompts, in tokens

    # -------------------------------------------------------------- setup
    def __init__(self, config, *args, **kwargs):
        # Before any worker starts, also on verl's own entry point (which skips srpo_verl.main_ppo's
        # driver checks): the config and, unless the driver already read them, the data files.
        self.srpo = check_trainer_config(config)
        self._srpo_guard = collapse_guard.Guard(self.srpo.guard, routes=self.srpo.distils_rows)
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
        data = verl_adapter.read_fields(batch, ["prompts", "responses"])
        rows = [
            (p.tolist(), r.tolist(), i)
            for i, (p, r) in enumerate(zip(data["prompts"].unbind(), data["responses"].unbind()))
        ]
        verl_adapter.reorder_rows(batch, [i for *_, i in sorted(rows)])
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        # 1-2. Check the step's inputs and route (rewards, groups and responses are all known now).
        with marked_timer("srpo_route", self.timing_raw, color="purple"):
            data = verl_adapter.read_fields(
                batch, ["uid", "rm_scores", "response_mask", "responses", "prompts", "extra_fields"]
            )
            real = [not pad for pad in verl_adapter.padding_rows(batch)]
            rollout = self.config.actor_rollout_ref.rollout
            self._srpo_step = step = route_rows(
                data,
                real,
                self.srpo,
                self.tokenizer,
                group_size=rollout.n,
                max_response_length=rollout.response_length,
                metrics=metrics,
            )
            # Read here, reported at the step's end (verl computes these only after the save).
            self._srpo_guard_values = guard_inputs(
                list(data["response_mask"].unbind()), list(data["rm_scores"].unbind()), data["extra_fields"], real
            )
            if step.taught.any():
                # 3. verl's old-log-prob forward also returns the student's top-K ids of these rows.
                verl_adapter.write_fields(
                    batch, {wire.TAUGHT.name: step.taught.long(), wire.ROUTE.name: step.route.long()}
                )
        return super()._compute_old_log_prob(batch, metrics)

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_advantage(batch, metrics)  # 4. verl's GRPO advantage, every row
        step, teacher, truncated = self._srpo_step, None, 0
        with marked_timer("srpo_teacher", self.timing_raw, color="purple"):
            fields = ["responses", "response_mask"] + (["raw_prompt"] if step.teacher_idx else [])
            data = verl_adapter.read_fields(batch, fields)
            responses = list(data["responses"].unbind())
            dp_size = verl_adapter.actor_dp_size(self.actor_rollout_wg)
            plan = teacher_pass_plan(step, responses, dp_size=dp_size, k=self._srpo_k)
            if plan.rows:
                truncated = self._srpo_teacher_pass(batch, step, plan, list(data["raw_prompt"]), responses)  # 5-6
            if plan.others:  # after the pass: the workers also write (empty) fields for the pad rows
                verl_adapter.write_fields(batch, plan.others_fields, rows=plan.others)
            if plan.rows:
                teacher = verl_adapter.read_fields(batch, list(wire.TEACHER_OUTPUT_NAMES))
            self._srpo_pad_rows = len(plan.pad)
            # The update fetches the listed fields: SRPO's own that it reads, never the driver-only ones.
            verl_adapter.fetch_in_update(batch, [f.name for f in wire.FIELDS if f.update_fetches], wire.HOST_ONLY)
            metrics.update(step_metrics(step, list(data["response_mask"].unbind()), teacher, truncated=truncated))
        return batch

    def _srpo_teacher_pass(self, batch, step: StepRouting, plan: TeacherPassPlan, raw_prompts, responses) -> int:
        """Store the teacher sequences of the plan's rows and run the teacher pass on them (the workers
        write its fields back). Returns how many teacher prompts were truncated."""
        data_cfg = self.config.data
        ids, truncated = teacher_inputs(
            step,
            raw_prompts,
            responses,
            self.srpo,
            self.tokenizer,
            max_length=self.srpo.max_teacher_prompt_length
            or (data_cfg.max_prompt_length + data_cfg.max_response_length),
            template_kwargs=dict(data_cfg.get("apply_chat_template_kwargs", {}) or {}),
            rng=np.random.default_rng([int(data_cfg.get("seed", 1) or 1), int(self.global_steps)]),
        )
        verl_adapter.write_fields(batch, {wire.TEACHER_INPUT_IDS.name: _nested(ids)}, rows=step.teacher_idx)
        if plan.pad:
            verl_adapter.write_fields(batch, plan.pad_inputs, rows=plan.pad)
        self.actor_rollout_wg.compute_srpo_teacher(
            verl_adapter.sub_batch(
                batch,
                plan.rows,
                [wire.TEACHER_INPUT_IDS.name, "responses", wire.TOPK_IDS.name],
                temperature=self.config.actor_rollout_ref.rollout.temperature,
            )
        )
        return truncated

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._update_actor(batch, metrics)  # 7. the SRPO loss
        with marked_timer("srpo_ema", self.timing_raw, color="purple"):
            ranks = self.actor_rollout_wg.srpo_ema_update()  # 8. the EMA teacher
            # Sequences the teacher module ran on since the last step, counted on every rank.
            ran = sum(r.pop(wire.TEACHER_FORWARD_ROWS) for r in ranks)
            metrics.update(ranks[0])
            metrics["srpo/teacher_pass_rows"] = ran - self._srpo_pad_rows
        return batch

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
        metrics.update(self._srpo_guard_values)
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
        if self.srpo.guard.teacher_prompted_validation:
            result.update(self._srpo_teacher_prompted_validation())
            breach = self._srpo_guard.note_validation(self.global_steps, result)
            result[collapse_guard.METRIC_PREFIX + collapse_guard.TEACHER_PROMPTED_SIGNAL] = int(breach is not None)
        else:
            self._srpo_guard.note_validation(self.global_steps, result)
        return result

    def _srpo_teacher_prompted_validation(self) -> dict:
        """verl's validation again, every prompt rewritten as the teacher's with the gold answer as the
        demonstration: `srpo/val_teacher_prompted/<verl's val-core key>` and their score. Its generations
        are dumped under validation_data_dir/teacher_prompted (when set), never over the plain ones, and
        not logged as tables."""
        loader, trainer_cfg, data_cfg = self.val_dataloader, self.config.trainer, self.config.data
        batches = [teacher_prompted_batch(b, self.srpo) for b in loader]
        # verl's rollout keeps the last data.max_prompt_length tokens of a longer prompt: the gold
        # answer would be cut out and the score mean nothing. Such a validation reports no score.
        # The driver's data check refuses such files up front; this guards what it cannot read (custom
        # dataset classes, remote files). The validation set is fixed, so its lengths are measured once.
        if self._srpo_val_teacher_lengths is None:  # counted as the driver's check and verl's dataset count them
            self._srpo_val_teacher_lengths = prompt_lengths(
                [list(m) for b in batches for m in b["raw_prompt"]],
                self.tokenizer,
                self.processor,
                dict(data_cfg.get("apply_chat_template_kwargs", {}) or {}),
                getattr(self.val_dataset, "tool_schemas", None),  # verl's RLHFDataset; None for others
                "data.val_files (teacher-prompted)",
            )
        lengths = self._srpo_val_teacher_lengths
        over = sum(n > data_cfg.max_prompt_length for n in lengths)
        if over:
            logger.warning(
                "SRPO teacher-prompted validation at step %d: %d of %d teacher prompts (longest %d tokens) exceed "
                "data.max_prompt_length=%d and would be truncated; no score reported",
                self.global_steps,
                over,
                len(lengths),
                max(lengths),
                data_cfg.max_prompt_length,
            )
            return {}
        saved = {key: trainer_cfg.get(key) for key in ("validation_data_dir", "log_val_generations")}
        self.val_dataloader = batches
        with open_dict(trainer_cfg):
            if saved["validation_data_dir"]:
                trainer_cfg.validation_data_dir = os.path.join(saved["validation_data_dir"], "teacher_prompted")
            trainer_cfg.log_val_generations = 0
        try:
            plain = super()._validate()
        finally:
            self.val_dataloader = loader
            with open_dict(trainer_cfg):
                for key, value in saved.items():
                    trainer_cfg[key] = value
        out = {
            "srpo/val_teacher_prompted/" + k[len("val-core/") :]: v
            for k, v in plain.items()
            if k.startswith("val-core/")
        }
        score = collapse_guard.validation_score(plain)
        if score is not None:
            out[collapse_guard.TEACHER_PROMPTED] = score
        return out


@register_trainer("srpo")
class SRPOTrainerSync(SRPOStepMixin, PPOTrainerSync):
    """verl's synchronous v1 trainer with the SRPO step."""


@register_trainer("srpo_colocate_async")
class SRPOTrainerColocateAsync(SRPOStepMixin, PPOTrainerColocateAsync):
    """verl's colocated asynchronous v1 trainer (partial rollout, staleness 1) with the SRPO step."""

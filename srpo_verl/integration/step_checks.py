"""Checks of one SRPO step's batch, run by the trainer before the advantage and the routing
(`SRPOStepMixin`), and the routing of the checked rows. Pure functions: no Ray, no TransferQueue;
the caller passes plain values.

Every bad input ends in one of two ways, never in a silent wrong update:
  - an error naming the field, the offending value and the rows;
  - a documented behaviour counted in the returned metrics (and logged at WARNING when it means a
    row cannot take part in SRPO), e.g. an empty response is never routed to the teacher.
docs/reliability.md lists every case, its outcome and the test that holds it.
"""

# device: host-side module (trainer checks on host tensors); see tests/gpu/test_device_discipline.py
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Iterable, NamedTuple, Optional

import numpy as np
import torch

from srpo_verl import core_algos

logger = logging.getLogger(__name__)

METRIC_PREFIX = "srpo/check/"


def format_rows(indices: Iterable[int], limit: int = 10) -> str:
    """`[3, 7, 9]`, or the first `limit` and a count: error messages stay one line."""
    indices = list(indices)
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}]" if len(indices) <= limit else f"[{shown}, ...] ({len(indices)} rows)"


class StepInputs(NamedTuple):
    """Checked per-row inputs of one SRPO step (B rows)."""

    rewards: torch.Tensor  # (B,) float32, finite: the sequence-level reward r_i
    uid: np.ndarray  # (B,) object: group labels; padding rows get their own "__pad_<i>" group
    real: torch.Tensor  # (B,) bool: not a padding row added by verl
    usable: torch.Tensor  # (B,) bool: real and with >= 1 valid response token
    metrics: dict  # counts to log, keys "srpo/check/..."


def _missing_uid(u) -> bool:
    if u is None or (isinstance(u, float) and math.isnan(u)):
        return True
    text = str(u).strip()
    # "None"/"nan" are what str() makes of a missing value upstream; a real uid is never that.
    return text == "" or text.lower() in ("none", "nan")


def _reward_value(x) -> Optional[float]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        if x.dim() > 1:
            raise ValueError(
                f"rewards: a row has shape {tuple(x.shape)}; pass one scalar or a 1-D token-level row per response"
            )
        return float(x.detach().double().sum())  # token-level rewards: verl puts the score on one token
    if isinstance(x, (bool, int, float, np.integer, np.floating)):
        return float(x)
    raise ValueError(f"rewards: value {x!r} of type {type(x).__name__} is not a number")


def _unbind(rows, name: str, n: int) -> list:
    """Per-row values of a (B, T) tensor, a nested (jagged) tensor or a list, checked to be B."""
    if isinstance(rows, torch.Tensor):
        rows = list(rows.unbind())
    rows = list(rows)
    if len(rows) != n:
        raise ValueError(f"{name}: {len(rows)} rows for a batch of {n}")
    return [torch.as_tensor(r).reshape(-1) for r in rows]


def _check_one_prompt_per_uid(prompts: list[torch.Tensor], labels: np.ndarray, real: torch.Tensor) -> None:
    """ValueError naming the uid and rows when real rows of one uid hold different prompt tokens: one
    prompt's correct answer would become the other's demonstration. verl pads the prompts of a batch
    alike, so equal prompts have equal rows."""
    seen: dict[str, dict[bytes, list[int]]] = {}
    for i, p in enumerate(prompts):
        if real[i]:
            seen.setdefault(labels[i], {}).setdefault(p.to(torch.int64).numpy().tobytes(), []).append(i)
    mixed = {label: list(by.values()) for label, by in seen.items() if len(by) > 1}
    if mixed:
        label, parts = next(iter(mixed.items()))
        detail = " vs ".join(f"rows {format_rows(rows)}" for rows in parts[:3])
        raise ValueError(
            f"uid: {len(mixed)} uid(s) shared by different prompts (e.g. {label!r}: {detail}): one prompt's "
            "responses would become the other's demonstrations"
        )


def check_step_inputs(
    rewards,
    uid,
    response_mask,
    *,
    real=None,
    group_size: Optional[int] = None,
    responses=None,
    eos_token_id=None,
    max_response_length: Optional[int] = None,
    prompts=None,
) -> StepInputs:
    """Check one step's rewards, group labels and responses before the advantage and the routing.

    rewards: B per-row rewards: a (B,) tensor, or a list of numbers / 0-d or 1-D (token-level,
        summed) tensors / None. uid: B group labels (verl's `uid`), or None if the field is absent.
    response_mask: B per-row 0/1 masks (a (B, T) tensor or a list of 1-D tensors, e.g. a nested
        tensor's unbind()). real: (B,) bool, False for padding rows (default all True).
    group_size: actor_rollout_ref.rollout.n; responses, eos_token_id (int or ints) and
        max_response_length: only to count responses truncated without EOS.
    prompts: B per-row prompt token ids (verl's `prompts`: (B, T), nested, or a list), to check
        that the rows of a uid share one prompt (with or without `group_size`).

    Raises ValueError naming the field and the rows for: rewards None / NaN / inf / non-numeric /
    of the wrong length; uid absent, missing (None, NaN, "", "None") on a real row, or shared by
    more than `group_size` real rows or by real rows with different prompts (two prompts would
    exchange demonstrations); response_mask, responses or prompts of the wrong length or not row-aligned.
    Counts (returned `metrics`, WARNING-logged when a row cannot take part in SRPO):
      empty_response_rows  real rows with no valid response token: never routed to the teacher nor
                           used as a demonstration; their tokens contribute nothing to the loss;
      singleton_groups     real groups of one row: no sibling, so no teacher; GRPO advantage 0;
      incomplete_groups    real groups with 1 < size < group_size (routing works within them);
      truncated_rows       responses at max_response_length without EOS: treated as any other
                           response (the reward decides c_i);
      non_binary_rewards   rewards other than 0/1: c_i = [r_i >= success_threshold], A_i uses r_i.
    """
    if uid is None:
        raise ValueError("uid: the batch has no `uid` field; SRPO groups responses by the prompt's uid")
    if isinstance(rewards, torch.Tensor):
        if not rewards.is_nested and rewards.dim() != 1:
            raise ValueError(
                f"rewards: shape {tuple(rewards.shape)}; pass (B,) sequence-level rewards or a list of token-level rows"
            )
        rewards = list(rewards.unbind())
    rewards = list(rewards)
    uid = list(uid)
    n = len(uid)
    if len(rewards) != n:
        raise ValueError(f"rewards: {len(rewards)} values for a batch of {n} rows (uid has {n})")
    real = torch.ones(n, dtype=torch.bool) if real is None else torch.as_tensor(real, dtype=torch.bool).reshape(-1)
    if real.numel() != n:
        raise ValueError(f"real: {real.numel()} flags for a batch of {n} rows")

    values = [_reward_value(r) for r in rewards]
    none_rows = [i for i, v in enumerate(values) if v is None]
    if none_rows:
        raise ValueError(
            f"rewards: None at rows {format_rows(none_rows)}: the reward function returned no score; a missing "
            "reward is not a wrong answer, fix the reward function"
        )
    bad_rows = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad_rows:
        raise ValueError(
            f"rewards: non-finite values at rows {format_rows(bad_rows)} "
            f"({', '.join(str(values[i]) for i in bad_rows[:3])}); "
            "a NaN/inf reward would corrupt the group advantage and the routing"
        )

    missing = [i for i, u in enumerate(uid) if real[i] and _missing_uid(u)]
    if missing:
        raise ValueError(
            f"uid: missing (None, NaN or empty) at rows {format_rows(missing)}; every response needs its prompt's uid"
        )
    # Padding rows (added by verl for divisibility) form their own groups.
    labels = np.array([str(u) if real[i] else f"__pad_{i}" for i, u in enumerate(uid)], dtype=object)
    sizes = Counter(labels[i] for i in range(n) if real[i])
    if group_size is not None:
        oversized = sorted(label for label, size in sizes.items() if size > group_size)
        if oversized:
            rows = [i for i in range(n) if labels[i] in set(oversized)]
            raise ValueError(
                f"uid: {len(oversized)} group(s) have more than actor_rollout_ref.rollout.n={group_size} rows "
                f"(e.g. {oversized[0]!r}: {sizes[oversized[0]]}, rows {format_rows(rows)}): different prompts "
                "share a uid and would use each other's responses as demonstrations"
            )

    if prompts is not None:
        _check_one_prompt_per_uid(_unbind(prompts, "prompts", n), labels, real)

    masks = [m.bool() for m in _unbind(response_mask, "response_mask", n)]
    valid = [int(m.sum()) for m in masks]
    resp = None
    if responses is not None:
        resp = _unbind(responses, "responses", n)
        misaligned = [i for i in range(n) if resp[i].numel() != masks[i].numel()]
        if misaligned:
            raise ValueError(f"responses: length differs from response_mask at rows {format_rows(misaligned)}")
    usable = real & torch.tensor([v > 0 for v in valid], dtype=torch.bool)
    empty = [i for i in range(n) if real[i] and valid[i] == 0]

    truncated = 0
    if resp is not None and eos_token_id is not None and max_response_length is not None:
        eos = {int(eos_token_id)} if isinstance(eos_token_id, (int, np.integer)) else {int(e) for e in eos_token_id}
        for i in range(n):
            if real[i] and valid[i] >= max_response_length:
                truncated += int(int(resp[i][masks[i]][-1]) not in eos)

    singletons = [label for label, size in sizes.items() if size == 1]
    incomplete = [label for label, size in sizes.items() if group_size is not None and 1 < size < group_size]
    reward_t = torch.tensor(values, dtype=torch.float32)
    non_binary = int(((reward_t != 0) & (reward_t != 1) & real).sum())
    if empty:
        logger.warning(
            "SRPO step: %d response(s) with no valid token (rows %s): never routed to the teacher nor used as "
            "a demonstration",
            len(empty),
            format_rows(empty),
        )
    if singletons:
        logger.warning(
            "SRPO step: %d group(s) of a single response (e.g. uid %r): no sibling, so no teacher; GRPO advantage 0",
            len(singletons),
            singletons[0],
        )
    metrics = {
        METRIC_PREFIX + "empty_response_rows": len(empty),
        METRIC_PREFIX + "singleton_groups": len(singletons),
        METRIC_PREFIX + "incomplete_groups": len(incomplete),
        METRIC_PREFIX + "truncated_rows": truncated,
        METRIC_PREFIX + "non_binary_rewards": non_binary,
    }
    return StepInputs(rewards=reward_t, uid=labels, real=real, usable=usable, metrics=metrics)


def route_step(
    step: StepInputs, *, success_threshold: float, has_feedback=None, demonstrable=None
) -> core_algos.Routing:
    """SRPO routing of a checked step: `core_algos.routing_mask` restricted to the step's usable rows.

    A row without a valid response token can neither be distilled (nothing to score) nor serve as a
    demonstration (an empty "correct solution" teaches nothing); padding rows neither.
    has_feedback: optional (B,) bool, a non-empty feedback string (algorithm.srpo.use_feedback);
    demonstrable: optional (B,) bool, responses with content a teacher can read.
    """
    return core_algos.routing_mask(
        step.rewards,
        step.uid,
        success_threshold=success_threshold,
        has_feedback=has_feedback,
        usable=step.usable,
        demonstrable=demonstrable,
    )

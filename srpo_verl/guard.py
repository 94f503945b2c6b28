"""The collapse guard: per-step signals that precede a late collapse, judged from logged metrics.

Pure Python (no verl, no torch): `Guard.observe(step, metrics)` takes one step's metric dict and
returns the breaches of that step; the trainer (srpo_verl/integration/trainer.py) only feeds it,
logs `Guard.metrics` and asks `stop_requested`. The thresholds are `algorithm.srpo.guard.*`
(`algo_config.GuardConfig`); docs/tracking.md, "Collapse guard", explains each signal.

Two kinds of signal:
  relative    the mean of the last `smooth` steps against the `window` steps before them (their
              median, or for the correct share their best `smooth`-step mean); judged once
              `min_history` steps of that window are known. A step without the metric is skipped.
  degenerate  a condition that holds for `degenerate_steps` consecutive steps.
A signal's metric is 1 on every step its condition holds; its WARNING is logged on the first step of
each such episode, so a persistent breach does not repeat on every step.
One signal is judged at validation rather than per step (`Guard.note_validation`): the score of the
teacher-prompted validation falling below its best earlier one (`guard.teacher_prompted_*`).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

logger = logging.getLogger(__name__)

METRIC_PREFIX = "srpo/guard/"

# The metrics the signals read. The first three are computed for the guard by the trainer before
# verl's own per-step metrics exist (verl computes `response_length/*` only after the checkpoint save).
FORMAT_ERROR = "srpo/format_error_share"
RESPONSE_LENGTH = "srpo/response_length"
REWARD_RANGE = "srpo/reward_range"
ROUTED_SHARE = "srpo/routed_share"
TEACHER_ENTROPY = "srpo/teacher_entropy_full"
CORRECT_SHARE = "srpo/correct_share"
SDPO_TOKEN_SHARE = "actor/srpo/sdpo_token_share"
# The teacher-prompted validation's score (the trainer's second validation pass), and its signal.
TEACHER_PROMPTED = "srpo/val_teacher_prompted/score"
TEACHER_PROMPTED_SIGNAL = "teacher_prompted"

# A value this close to 0 counts as 0 (shares are ratios of counts; reward ranges of equal floats).
ZERO = 1e-12


@dataclass(frozen=True)
class Breach:
    """One signal over its threshold at one step."""

    signal: str
    step: int
    metric: str
    recent: tuple  # the metric's last values, oldest first, ending at `step`
    threshold: str  # the rule that was broken, with its numbers

    def message(self) -> str:
        values = ", ".join(f"{v:.4g}" for v in self.recent)
        return (
            f"SRPO collapse guard: {self.signal} at step {self.step}: {self.metric} recent values [{values}]; "
            f"threshold: {self.threshold}"
        )


# ---------------------------------------------------------------------------------------- rules
# Each relative rule: (recent mean, reference values) -> the broken rule's text, or None.


def _mean(values) -> float:
    return sum(values) / len(values)


def _rolling_best(values: list[float], n: int) -> float:
    """The highest mean of `n` consecutive values (of all of them if fewer)."""
    if len(values) <= n:
        return _mean(values)
    return max(_mean(values[i : i + n]) for i in range(len(values) - n + 1))


def rise_above_median(limit: float) -> Callable:
    def rule(recent: float, ref: list[float], smooth: int) -> Optional[str]:
        median = statistics.median(ref)
        if recent - median > limit:
            return f"mean of the last {smooth} step(s) {recent:.4g} > window median {median:.4g} + {limit:g}"
        return None

    return rule


def ratio_to_median(low: Optional[float], high: Optional[float]) -> Callable:
    def rule(recent: float, ref: list[float], smooth: int) -> Optional[str]:
        median = statistics.median(ref)
        if low is not None and recent < low * median:
            return f"mean of the last {smooth} step(s) {recent:.4g} < {low:g} x window median {median:.4g}"
        if high is not None and recent > high * median:
            return f"mean of the last {smooth} step(s) {recent:.4g} > {high:g} x window median {median:.4g}"
        return None

    return rule


def drop_below_best(limit: float) -> Callable:
    def rule(recent: float, ref: list[float], smooth: int) -> Optional[str]:
        best = _rolling_best(ref, smooth)
        if best - recent > limit:
            return f"mean of the last {smooth} step(s) {recent:.4g} < window best {best:.4g} - {limit:g}"
        return None

    return rule


def relative_breach(
    history: list[float], rule: Callable, *, window: int, smooth: int, min_history: int
) -> Optional[str]:
    """The rule's verdict on `history` (oldest first, the current step last), or None when fine or
    when fewer than `min_history` reference steps precede the last `smooth` ones."""
    recent, ref = history[-smooth:], history[:-smooth][-window:]
    if len(recent) < smooth or len(ref) < min_history:
        return None
    return rule(_mean(recent), ref, smooth)


# Degenerate conditions: metrics -> True / False, or None when the step does not tell (metric absent).
def _no_correct(m: Mapping) -> Optional[bool]:
    return None if CORRECT_SHARE not in m else m[CORRECT_SHARE] <= ZERO


def _nothing_routed(m: Mapping) -> Optional[bool]:
    return None if ROUTED_SHARE not in m else m[ROUTED_SHARE] <= ZERO


def _distillation_inactive(m: Mapping) -> Optional[bool]:
    # Rows were routed, yet the loss distilled no token of them.
    if ROUTED_SHARE not in m or SDPO_TOKEN_SHARE not in m:
        return None
    return m[ROUTED_SHARE] > ZERO and m[SDPO_TOKEN_SHARE] <= ZERO


def _flat_rewards(m: Mapping) -> Optional[bool]:
    return None if REWARD_RANGE not in m else m[REWARD_RANGE] <= ZERO


DEGENERATE = {
    "no_correct": (CORRECT_SHARE, _no_correct),
    "nothing_routed": (ROUTED_SHARE, _nothing_routed),
    "distillation_inactive": (SDPO_TOKEN_SHARE, _distillation_inactive),
    "flat_rewards": (REWARD_RANGE, _flat_rewards),
}
RELATIVE = {
    "format_error": FORMAT_ERROR,
    "response_length": RESPONSE_LENGTH,
    "routed_share": ROUTED_SHARE,
    "teacher_entropy": TEACHER_ENTROPY,
    "correct_share": CORRECT_SHARE,
}
SIGNALS = tuple(RELATIVE) + tuple(DEGENERATE)
# Signals that only mean something when the method routes rows to distillation (not advantage_mix).
ROUTING_SIGNALS = ("routed_share", "nothing_routed", "distillation_inactive")


def relative_rules(cfg) -> dict[str, Callable]:
    """The relative signals `cfg` (a GuardConfig or anything with its attributes) turns on."""
    rules = {
        "format_error": cfg.format_error_rise and rise_above_median(cfg.format_error_rise),
        "response_length": (cfg.length_collapse or cfg.length_explosion)
        and ratio_to_median(cfg.length_collapse, cfg.length_explosion),
        "routed_share": cfg.routed_share_rise and rise_above_median(cfg.routed_share_rise),
        "teacher_entropy": cfg.teacher_entropy_ratio and ratio_to_median(None, cfg.teacher_entropy_ratio),
        "correct_share": cfg.correct_share_drop and drop_below_best(cfg.correct_share_drop),
    }
    return {name: rule for name, rule in rules.items() if rule}


# ---------------------------------------------------------------------------------------- state
@dataclass
class Guard:
    """The guard's state over a run. `cfg`: a GuardConfig (or anything with its attributes);
    `routes`: whether the method routes rows to distillation (False for advantage_mix)."""

    cfg: object
    routes: bool = True
    history: dict = field(default_factory=dict)  # metric -> [values], steps that had it
    streaks: dict = field(default_factory=dict)  # degenerate signal -> consecutive steps
    active: dict = field(default_factory=dict)  # signal -> whether it held at the last step it was judged
    breaches: list = field(default_factory=list)  # every Breach, in order
    checkpoints: list = field(default_factory=list)  # steps with a saved checkpoint
    validation: dict = field(default_factory=dict)  # step -> validation score
    last_step_breaches: list = field(default_factory=list)

    def __post_init__(self):
        self.rules = relative_rules(self.cfg)
        self.signals = [s for s in SIGNALS if self.routes or s not in ROUTING_SIGNALS]
        if self.cfg.degenerate_steps is None:
            self.signals = [s for s in self.signals if s not in DEGENERATE]
        self.signals = [s for s in self.signals if s in DEGENERATE or s in self.rules]

    def observe(self, step: int, metrics: Mapping) -> list[Breach]:
        """Judge one step's metrics; logs a WARNING for each breach that starts at this step and
        returns the breaches that hold at it (those starting now and those persisting)."""
        cfg, held, seen = self.cfg, [], set()
        for metric in {RELATIVE[s] for s in self.signals if s in RELATIVE} | {m for m, _ in DEGENERATE.values()}:
            value = metrics.get(metric)
            if value is not None and math.isfinite(float(value)):
                self.history.setdefault(metric, []).append(float(value))
                seen.add(metric)
        for signal in self.signals:
            if signal in RELATIVE:
                metric = RELATIVE[signal]
                if metric not in seen:
                    continue  # not judged without a value (metric 0); an episode under way is not ended
                shown = max(cfg.smooth, 5)
                verdict = relative_breach(
                    self.history[metric],
                    self.rules[signal],
                    window=cfg.window,
                    smooth=cfg.smooth,
                    min_history=cfg.min_history,
                )
            else:
                metric, condition = DEGENERATE[signal]
                holds = condition(metrics)
                if holds is None:
                    continue
                self.streaks[signal] = self.streaks.get(signal, 0) + 1 if holds else 0
                n, shown = self.streaks[signal], cfg.degenerate_steps
                verdict = f"{n} consecutive steps (limit {cfg.degenerate_steps})" if n >= cfg.degenerate_steps else None
            if verdict is None:
                self.active[signal] = False
                continue
            held.append(self._hold(Breach(signal, step, metric, tuple(self.history.get(metric, [])[-shown:]), verdict)))
        self.last_step_breaches = held
        return held

    def metrics(self) -> dict[str, int]:
        """`srpo/guard/<signal>`: 1 where the last observed step breached, else 0."""
        broken = {b.signal for b in self.last_step_breaches}
        return {METRIC_PREFIX + s: int(s in broken) for s in self.signals}

    @property
    def stop_requested(self) -> bool:
        """`action=stop` and a signal breached at some step (the run should not go on)."""
        return self.cfg.action == "stop" and bool(self.breaches)

    # ------------------------------------------------------------------ checkpoints
    def note_checkpoint(self, step: int) -> None:
        if step not in self.checkpoints:
            self.checkpoints.append(step)

    def note_validation(self, step: int, metrics: Mapping) -> Optional[Breach]:
        """Record a validation's score (for the best checkpoint) and judge the teacher-prompted score
        it carries, if any, against the best earlier one. Returns the breach holding at this validation."""
        score = validation_score(metrics)
        if score is not None:
            self.validation[step] = score
        value, limit = metrics.get(TEACHER_PROMPTED), getattr(self.cfg, "teacher_prompted_drop", None)
        if value is None or limit is None or not math.isfinite(float(value)):
            return None
        history = self.history.setdefault(TEACHER_PROMPTED, [])
        best = max(history, default=None)
        history.append(float(value))
        if best is None or best - float(value) <= limit:
            self.active[TEACHER_PROMPTED_SIGNAL] = False
            return None
        rule = f"{float(value):.4g} < best earlier validation {best:.4g} - {limit:g}"
        return self._hold(Breach(TEACHER_PROMPTED_SIGNAL, step, TEACHER_PROMPTED, tuple(history[-5:]), rule))

    def _hold(self, breach: Breach) -> Breach:
        """A breach holding now: the first step of its episode logs the WARNING and is recorded."""
        if not self.active.get(breach.signal, False):
            logger.warning(breach.message())
            self.breaches.append(breach)
        self.active[breach.signal] = True
        return breach

    def best_checkpoint(self) -> Optional[tuple[int, float]]:
        """(step, validation score) of the saved checkpoint validated best, or None when no saved
        checkpoint was validated at its step. Of equal scores the earliest wins: it is the furthest
        from the collapse."""
        scored = [(self.validation[s], -s) for s in self.checkpoints if s in self.validation]
        if not scored:
            return None
        score, step = max(scored)
        return -step, score

    def stop_report(self) -> str:
        """What a stopped run leaves: the breach, the last checkpoint saved before it, the best by validation."""
        first = self.breaches[0] if self.breaches else None
        before = [s for s in self.checkpoints if first is None or s < first.step]
        parts = [f"SRPO collapse guard stopped the run ({first.signal} at step {first.step})" if first else "stop"]
        parts.append(
            f"last checkpoint saved before the breach: global_step_{before[-1]}"
            if before
            else "no checkpoint was saved before the breach"
        )
        best = self.best_checkpoint()
        parts.append(
            f"best checkpoint by validation: global_step_{best[0]} (score {best[1]:.4g})"
            if best
            else "best checkpoint by validation: unknown (no saved checkpoint was validated)"
        )
        return "; ".join(parts)


def validation_score(metrics: Mapping) -> Optional[float]:
    """One number per validation: the mean of verl's `val-core/<source>/acc/mean@N` (the paper's
    avg@N), or of `val-core/<source>/reward/mean@N` when the reward reports no `acc`."""
    for var in ("acc", "reward"):
        values = [
            float(v)
            for k, v in metrics.items()
            if k.startswith("val-core/") and f"/{var}/mean@" in k and v is not None and math.isfinite(float(v))
        ]
        if values:
            return _mean(values)
    return None


class GuardStop(Exception):
    """Raised by the trainer to end a run the guard stopped; caught by its `fit`."""

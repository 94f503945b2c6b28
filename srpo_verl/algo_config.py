"""The `algorithm.srpo` config block as dataclasses.

`SRPOConfig` is the single source of every SRPO default and its validation. The YAML in
`srpo_verl/config/algorithm/srpo.yaml` restates the defaults for Hydra; a test keeps the two and
`docs/configuration.md` in agreement. `SRPOAlgoConfig` extends verl's `AlgoConfig` with the `srpo`
field so `omega_conf_to_dataclass(config.algorithm)` keeps working with the extra block.

Why not a structured OmegaConf schema (Hydra's ConfigStore), which would refuse a wrong type while
composing: `SRPOConfig.from_node` already refuses unknown keys, wrong types and out-of-range values
naming the key, on both launch routes before any worker starts (srpo_verl.main_ppo's driver and the
SRPO trainer's constructor), and it checks relations a schema cannot (ranges, templates, modes).
"""

from __future__ import annotations

import collections.abc
import math
import string
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
from verl.base_config import BaseConfig
from verl.trainer.config import AlgoConfig

from srpo_verl import core_algos
from srpo_verl.integration import wire

METHODS = ("srpo", "sdpo", "advantage_mix")
ENTROPY_MODES = ("full", "topk_tail")
DISTILL_MODES = ("topk_tail", "full_vocab", "sampled_token")
TEACHERS = ("ema", "trust_region")
OVERFLOW_MODES = ("truncate", "error")
# beta * H and its differences are taken in float64 (core_algos.entropy_weights); an entropy is at
# most ln V <= 32 ln 2 for any vocabulary indexed by int32, so above this bound -beta*H - log_mean
# can overflow and the weights become NaN.
MAX_BETA = float(torch.finfo(torch.float64).max) / (2 * 32 * math.log(2))
# The EMA teacher is kept in fp32: a step rate*(theta - theta') with rate below float32 epsilon
# rounds away unless |theta - theta'| >= |theta'| / 2, so the teacher would never move (as rate 0).
MIN_EMA_RATE = float(torch.finfo(torch.float32).eps)


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"algorithm.srpo.{key}={value!r}: {why}")


# Field types, checked before any range check: a Hydra override like `beta=abc` arrives as a str,
# `use_feedback=yes` as a truthy str, `topk=true` as a bool (an int in Python). Each would pass or
# crash in a range check with an error that does not name the key.
_REALS = ("success_threshold", "beta", "alpha", "is_clip", "ema_rate", "trust_region_mix", "mix_lambda")
_INTS = ("topk", "chunk_size", "max_teacher_prompt_length")
_BOOLS = ("use_feedback", "strip_thinking")
_STRS = (
    "method",
    "entropy_mode",
    "distill_mode",
    "teacher",
    "feedback_key",
    "reprompt_template",
    "feedback_template",
    "teacher_prompt_overflow",
)


def _check_types(cfg) -> None:
    for key in _REALS:
        value = getattr(cfg, key)
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "must be a number")
    for key in _INTS:
        value = getattr(cfg, key)
        if key == "max_teacher_prompt_length" and value is None:
            continue
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
    for key in _BOOLS:
        _check(isinstance(getattr(cfg, key), bool), key, getattr(cfg, key), "must be true or false")
    for key in _STRS:
        _check(isinstance(getattr(cfg, key), str), key, getattr(cfg, key), "must be a string")


def _check_template(template: str, key: str, slot: str) -> None:
    """A teacher-prompt template holds bare `{question}` (at least once) and `{<slot>}` (exactly once:
    the demonstration is spliced there as tokens) and nothing else `str.format` would interpret.

    Checked when the config is built, so a bad template fails at launch naming its key rather than
    at the first teacher step; `{{question}}` (a literal, which would silently drop the question),
    `{0}`, `{}`, a stray brace, `{question!r}` or `{question.attr}` are refused.
    """
    try:
        fields_ = [(name, conv, spec) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # a stray "{" or "}"
        raise ValueError(f"algorithm.srpo.{key}={template!r}: {err} (write a literal brace as {{{{ or }}}})") from err
    allowed = ("question", slot)
    odd = [
        "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        for name, conv, spec in fields_
        if name not in allowed or conv or spec
    ]
    _check(
        not odd,
        key,
        template,
        f"placeholders other than {{question}} and {{{slot}}}: {odd} (write a literal brace as {{{{ or }}}})",
    )
    names = [name for name, _, _ in fields_]
    missing = [f"{{{n}}}" for n in allowed if n not in names]
    _check(not missing, key, template, f"must contain {missing} ({{{{...}}}} is a literal, not a placeholder)")
    count = names.count(slot)
    _check(count == 1, key, template, f"must contain {{{slot}}} exactly once, not {count} times")


GUARD_ACTIONS = ("warn", "stop")


@dataclass(eq=False)
class GuardConfig(BaseConfig):
    """`algorithm.srpo.guard`: the collapse guard (srpo_verl/guard.py; docs/tracking.md, "Collapse guard").

    A relative signal compares the mean of the last `smooth` steps with the `window` steps before
    them, once at least `min_history` of those are known; a degenerate signal fires when its
    condition has held for `degenerate_steps` consecutive steps. A threshold set to null turns its
    signal off.

    Args:
        action: "warn" logs a WARNING and sets `srpo/guard/<signal>` = 1; "stop" also ends the run
            after the breaching step is logged, without saving that step's checkpoint.
        window, smooth, min_history: the reference window, the smoothing of the current value, the
            history needed before a relative signal is judged.
        format_error_rise: the share of rollouts the reward marks `format_error` rises above the
            window's median by more than this.
        length_collapse, length_explosion: the mean response length falls below / rises above this
            multiple of the window's median.
        routed_share_rise: the share of rollouts routed to distillation rises above the window's
            median by more than this.
        teacher_entropy_ratio: the teacher entropy on routed tokens exceeds this multiple of the
            window's median.
        correct_share_drop: the share of correct rollouts falls more than this below the best
            `smooth`-step mean of the window.
        degenerate_steps: N for no correct rollout, nothing routed, distillation inactive, flat rewards.
        teacher_prompted_validation: at each validation, also validate with every prompt rewritten as
            the teacher's (the gold answer as the demonstration): one more generation pass.
        teacher_prompted_drop: that teacher-prompted score falls more than this below its best earlier
            validation.
    """

    _target_: str = "srpo_verl.algo_config.GuardConfig"
    action: str = "warn"
    window: int = 20
    smooth: int = 3
    min_history: int = 5
    format_error_rise: Optional[float] = 0.2
    length_collapse: Optional[float] = 0.5
    length_explosion: Optional[float] = 2.0
    routed_share_rise: Optional[float] = 0.3
    teacher_entropy_ratio: Optional[float] = 2.0
    correct_share_drop: Optional[float] = 0.25
    degenerate_steps: Optional[int] = 10
    teacher_prompted_validation: bool = False
    teacher_prompted_drop: Optional[float] = 0.25

    # Mapping equality (same keys and values), so the YAML block, a plain dict, compares equal to the
    # defaults it restates, as a flat key of SRPOConfig does.
    def __eq__(self, other):
        if isinstance(other, collections.abc.Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None

    def __post_init__(self):
        _check(self.action in GUARD_ACTIONS, "guard.action", self.action, f"must be one of {GUARD_ACTIONS}")
        for key in ("window", "smooth", "min_history", "degenerate_steps"):
            value = getattr(self, key)
            if key == "degenerate_steps" and value is None:
                continue
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"guard.{key}",
                value,
                "must be an integer >= 1" + (" or null" if key == "degenerate_steps" else ""),
            )
        _check(
            isinstance(self.teacher_prompted_validation, bool),
            "guard.teacher_prompted_validation",
            self.teacher_prompted_validation,
            "must be true or false",
        )
        _check(self.min_history <= self.window, "guard.min_history", self.min_history, "must be <= guard.window")
        for key in (
            "format_error_rise",
            "routed_share_rise",
            "correct_share_drop",
            "length_collapse",
            "length_explosion",
            "teacher_entropy_ratio",
            "teacher_prompted_drop",
        ):
            value = getattr(self, key)
            if value is None:
                continue
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
                f"guard.{key}",
                value,
                "must be a finite number > 0, or null to turn the signal off",
            )
        _check(
            self.length_collapse is None or self.length_collapse < 1,
            "guard.length_collapse",
            self.length_collapse,
            "must be < 1 (a fraction of the recent median)",
        )
        for key in ("length_explosion", "teacher_entropy_ratio"):
            value = getattr(self, key)
            _check(value is None or value > 1, f"guard.{key}", value, "must be > 1 (a multiple of the recent median)")

    @classmethod
    def from_node(cls, node) -> "GuardConfig":
        if isinstance(node, GuardConfig):
            return node
        data = dict(node.items()) if node is not None else {}
        data.pop("_target_", None)
        known = {f.name for f in fields(cls)} - {"_target_"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown key(s) under algorithm.srpo.guard: {unknown}. Valid keys: {sorted(known)}")
        return cls(**data)


@dataclass
class SRPOConfig(BaseConfig):
    """SRPO / SDPO switches (docs/spec.md §1-2; paper defaults from SRPO Table 3).

    Args:
        method: "srpo" routes failed samples with a correct sibling to distillation and the rest to
            GRPO; "sdpo" distils every sample that has a teacher, with no GRPO term; "advantage_mix"
            is the ablation A = mix_lambda * A_grpo + (1 - mix_lambda) * A_sdpo on all samples.
        success_threshold: c_i = [r_i >= success_threshold]. Paper: binary rewards, 0.5.
        beta: entropy-aware weight w = exp(-beta * H) normalised to mean 1; >= 0. 0 = "w/o DW".
        entropy_mode: "full" teacher entropy over the whole vocabulary (default; the K+1-bucket
            entropy is only a lower bound) or "topk_tail".
        distill_mode: "topk_tail" (student top-K + tail bucket, SDPO default), "full_vocab", or
            "sampled_token" (per-token advantage log q(y_t) - log p_old(y_t)).
        topk: K >= 1; K >= vocabulary size means the whole vocabulary.
        alpha: generalised JSD in [0, 1]: 0 forward KL(q||p), 0.5 JSD, 1 reverse KL(p||q).
        is_clip: upper clamp (> 0) of the detached ratio exp(log p - log p_old) on SDPO tokens.
        teacher: "ema" (default) or "trust_region" (q ∝ exp((1-m) log q_ref + m log q_theta): q_ref the
            frozen initial model, q_theta the current student, both on the teacher prompt).
            A live-student teacher is not offered: it collapses training (docs/spec.md §4).
        ema_rate: theta' <- (1 - rate) theta' + rate theta, in (0, 1). 1 would make the teacher the
            live student and is refused.
        trust_region_mix: m in [0, 1] for the trust-region teacher.
        mix_lambda: lambda in [0, 1] of the advantage-mix ablation.
        use_feedback: a non-empty feedback string from the reward function also makes a teacher
            available (used only when no correct sibling exists).
        feedback_key: the reward function's extra field holding that string (non-empty with
            use_feedback).
        reprompt_template: teacher's last user turn: {question} (once or more) and {solution}
            (exactly once), no other placeholder; literal braces doubled.
        feedback_template: teacher's last user turn from feedback; {question} and {feedback}, the same way.
        strip_thinking: remove <think>...</think> from the demonstration.
        max_teacher_prompt_length: teacher prompt token budget; None = max_prompt_length +
            max_response_length (room for the question plus one demonstration).
        teacher_prompt_overflow: "truncate" cuts the demonstration from its left so the question,
            instruction and generation prompt survive; "error" raises.
        chunk_size: rows per chunk in vocabulary-wide reductions; memory only, not numerics.
        guard: the collapse guard (`GuardConfig`).
    """

    method: str = "srpo"
    success_threshold: float = 0.5
    beta: float = 1.0
    entropy_mode: str = "full"
    distill_mode: str = "topk_tail"
    topk: int = 100
    alpha: float = 0.5
    is_clip: float = 2.0
    teacher: str = "ema"
    ema_rate: float = 0.05
    trust_region_mix: float = 0.5
    mix_lambda: float = 0.9
    use_feedback: bool = False
    feedback_key: str = "feedback"
    reprompt_template: str = "{question}\nCorrect solution:\n{solution}\nCorrectly solve the original question."
    feedback_template: str = (
        "{question}\nThe following is feedback from your unsuccessful earlier attempt: {feedback}\n"
        "Correctly solve the original question."
    )
    strip_thinking: bool = True
    max_teacher_prompt_length: Optional[int] = None
    teacher_prompt_overflow: str = "truncate"
    chunk_size: int = core_algos.DEFAULT_CHUNK_SIZE
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self):
        _check_types(self)
        # A plain dict arrives from the workers' `from_node` and from Hydra without instantiation.
        object.__setattr__(self, "guard", GuardConfig.from_node(self.guard))
        _check(self.method in METHODS, "method", self.method, f"must be one of {METHODS}")
        _check(math.isfinite(self.success_threshold), "success_threshold", self.success_threshold, "must be finite")
        _check(
            self.beta >= 0 and math.isfinite(self.beta),
            "beta",
            self.beta,
            "must be finite and >= 0 (0 turns weighting off)",
        )
        _check(
            self.beta <= MAX_BETA,
            "beta",
            self.beta,
            f"must be <= {MAX_BETA:.3g}: beyond it beta * H overflows float64 and the entropy weights become NaN",
        )
        _check(self.entropy_mode in ENTROPY_MODES, "entropy_mode", self.entropy_mode, f"must be one of {ENTROPY_MODES}")
        _check(self.distill_mode in DISTILL_MODES, "distill_mode", self.distill_mode, f"must be one of {DISTILL_MODES}")
        _check(isinstance(self.topk, int) and self.topk >= 1, "topk", self.topk, "must be an integer >= 1")
        _check(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "must be in [0, 1] (0 forward KL, 1 reverse KL)")
        _check(self.is_clip > 0, "is_clip", self.is_clip, "must be > 0")
        _check(self.teacher in TEACHERS, "teacher", self.teacher, f"must be one of {TEACHERS}")
        _check(
            0.0 < self.ema_rate < 1.0,
            "ema_rate",
            self.ema_rate,
            "must be in (0, 1); 1 would make the teacher the live student, which collapses training",
        )
        _check(
            self.ema_rate >= MIN_EMA_RATE,
            "ema_rate",
            self.ema_rate,
            f"must be >= {MIN_EMA_RATE:.3g} (float32 epsilon): a smaller step rounds away in the fp32 teacher, "
            "which would never move (as with rate 0)",
        )
        _check(0.0 <= self.trust_region_mix <= 1.0, "trust_region_mix", self.trust_region_mix, "must be in [0, 1]")
        _check(0.0 <= self.mix_lambda <= 1.0, "mix_lambda", self.mix_lambda, "must be in [0, 1]")
        _check_template(self.reprompt_template, "reprompt_template", "solution")
        _check_template(self.feedback_template, "feedback_template", "feedback")
        _check(
            not self.use_feedback or bool(self.feedback_key.strip()),
            "feedback_key",
            self.feedback_key,
            "must name the reward function's feedback field when use_feedback is true",
        )
        _check(
            self.max_teacher_prompt_length is None or self.max_teacher_prompt_length >= 1,
            "max_teacher_prompt_length",
            self.max_teacher_prompt_length,
            "must be null or >= 1",
        )
        _check(
            self.teacher_prompt_overflow in OVERFLOW_MODES,
            "teacher_prompt_overflow",
            self.teacher_prompt_overflow,
            f"must be one of {OVERFLOW_MODES}",
        )
        _check(self.chunk_size >= 1, "chunk_size", self.chunk_size, "must be >= 1")

    @classmethod
    def from_node(cls, node) -> "SRPOConfig":
        """Build from a DictConfig/dict, naming any unknown key instead of ignoring it."""
        data = dict(node.items()) if node is not None else {}
        data.pop("_target_", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Unknown key(s) under algorithm.srpo: {unknown}. Valid keys: {sorted(known - {'_target_'})}"
            )
        return cls(**data)

    # ------------------------------------------------------------------------------------------
    # The method as one object: what the trainer, the worker and the loss ask of `method` and the
    # distill/teacher/entropy modes is answered here, and nowhere else.

    @property
    def distils_rows(self) -> bool:
        """Whether any row can be on the distillation branch; False for the advantage-mix ablation,
        whose teacher only enters the PPO term's advantage (`routes`)."""
        return self.method != "advantage_mix"

    @property
    def distils_logits(self) -> bool:
        """Whether the update computes the top-K+tail divergence from the student's logits (the
        logits processor runs); False for sampled-token distillation and the advantage-mix ablation,
        whose SDPO signal is the sampled token's teacher log-prob."""
        return self.distils_rows and self.distill_mode != "sampled_token"

    def support_size(self, vocab_size: int) -> int:
        """K, the number of token ids per position the teacher pass returns: the whole vocabulary for
        `full_vocab`, 1 when only the sampled token is used, else min(topk, V)."""
        if not self.distils_logits:
            return 1
        return vocab_size if self.distill_mode == "full_vocab" else min(self.topk, vocab_size)

    def routes(self, routing) -> tuple[Any, Any]:
        """(distilled, taught): bool (B,) rows on the distillation branch, and rows the teacher scores,
        from a `core_algos.Routing`.

        srpo: failed rows with a teacher, both. sdpo: every row with a teacher, both (correct ones
        too, as published). advantage_mix: nothing on the distillation branch; every row with a
        teacher is scored, for the mixed advantage."""
        if self.method == "srpo":
            return routing.sdpo, routing.sdpo
        if self.method == "sdpo":
            return routing.teacher_available, routing.teacher_available
        assert not self.distils_rows
        return torch.zeros_like(routing.teacher_available), routing.teacher_available

    def advantage(self, grpo_advantage, sampled_advantage, taught):
        """The per-token advantage of the PPO term: A_GRPO (srpo), 0 (sdpo: no GRPO term), or
        lambda A_GRPO + (1 - lambda) A_SDPO on rows with a teacher and A_GRPO on the others
        (advantage_mix). grpo_advantage, sampled_advantage: (B, T); taught: (B,) bool."""
        if self.method == "sdpo":
            return torch.zeros_like(grpo_advantage)
        if self.method == "advantage_mix":
            mixed = core_algos.advantage_mix(grpo_advantage, sampled_advantage, mix_lambda=self.mix_lambda)
            return torch.where(taught.unsqueeze(-1), mixed, grpo_advantage)
        return grpo_advantage

    @property
    def distilled_tokens_denominator(self) -> bool:
        """True for `sdpo`: its loss is the mean over distilled tokens (SDPO's reference code:
        loss_mask = response_mask x self_distillation_mask). SRPO's objective divides both branches by
        all valid tokens of the mini-batch (one denominator)."""
        return self.method == "sdpo"

    @property
    def weight_entropy_field(self) -> str:
        """The teacher-pass field the entropy weights read (`entropy_mode`)."""
        return wire.TEACHER_ENTROPY.name if self.entropy_mode == "full" else wire.TEACHER_ENTROPY_TOPK.name

    @property
    def teacher_ema_rate(self) -> float:
        """The EMA step's rate: `ema_rate` for the EMA teacher; 0 for the trust-region teacher, whose
        engine holds the frozen initial weights."""
        return self.ema_rate if self.teacher == "ema" else 0.0

    @property
    def student_mix(self) -> float | None:
        """The trust-region teacher's weight on the current student's logits, mixed with the frozen
        initial model's in the teacher pass; None for the EMA teacher (its own forward only)."""
        return self.trust_region_mix if self.teacher == "trust_region" else None


@dataclass
class SRPOAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus the `srpo` block (None for plain verl algorithms)."""

    srpo: Optional[SRPOConfig] = field(default=None)


def srpo_config_of(config) -> Optional[SRPOConfig]:
    """The validated SRPO block of a full trainer config (DictConfig), or None if absent."""
    node = config.algorithm.get("srpo", None)
    return None if node is None else SRPOConfig.from_node(node)

"""Helpers shared by the paper's tasks: thinking blocks, the fixed split, the reward record.

Kept free of heavy imports (no datasets, pandas, torch): verl's reward workers import
`srpo_verl.tasks` for every process, and the data-preparation scripts only need these helpers
plus `datasets` at their own top level.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Tags are matched case-insensitively in ASCII only: `str.lower` and a re.IGNORECASE regex disagree
# on a few non-ASCII letters (`ı` and `İ` match `i` in a regex, `ſ` matches `s`), and the answer
# must not depend on which of the two a response happens to trigger.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """`text` with A-Z lowered and every other character kept: same length, same indices."""
    return text.translate(_ASCII_LOWER)


class RowProblem(ValueError):
    """A data row its task's reward cannot use: the message names the row and the value; `problem`
    says what is wrong in words shared by every such row (the data check lists rows per problem)."""

    def __init__(self, message: str, *, problem: str):
        super().__init__(message)
        self.problem = problem


def as_text(value: Any) -> str:
    """A model response as a string: None is '', anything else not a string is str()-ed."""
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)


def strip_thinking(text: str) -> str:
    """The response without its thinking (tags case-insensitive in ASCII: `<THINK>` is a tag,
    `<thınk>` with a dotless i is not):

    - a ``<think>…</think>`` block is removed (tags inside a block are part of it);
    - a lone ``</think>`` (the chat template opened the block inside the prompt, so the response
      starts in the middle of it) drops everything before it, itself included;
    - an unclosed ``<think>`` (generation stopped while thinking) drops everything after it.

    Linear time: one split of a lower-cased copy at the closers, one str.find per piece.
    """
    text = as_text(text)
    low = ascii_lower(text)  # one rule for every response (see _ASCII_LOWER)
    # Split at the closers: a closer ends a block when its piece holds an opener, else it is lone.
    kept: list[str] = []
    pos = 0
    pieces = low.split("</think>")
    for piece in pieces[:-1]:
        opened = piece.find("<think>")
        if opened < 0:
            kept = []  # a lone closer: everything before it is thinking
        else:
            kept.append(text[pos : pos + opened])
        pos += len(piece) + len("</think>")
    opened = pieces[-1].find("<think>")
    kept.append(text[pos : pos + opened] if opened >= 0 else text[pos:])
    return "".join(kept).strip()


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests lists/objects deeper than `limit` (checked without
    recursion, so a hostile value cannot exhaust the stack here)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def shorten(text: str, limit: int = 500) -> str:
    """`text` cut to `limit` characters (with a marker): keeps logged fields and feedback small
    whatever the model wrote."""
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def split_indices(n: int, *, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) row indices of a fixed random split of n rows.

    The algorithm of `datasets.Dataset.train_test_split(test_size=test_fraction, seed=seed)`
    (the one the public SDPO data code uses): a numpy `default_rng(seed)` permutation, the first
    ceil(test_fraction * n) positions are the test set, the rest the training set, both in
    permuted order. Re-implemented so the split does not depend on a `datasets` version.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = math.ceil(test_fraction * n)
    n_train = math.floor((1.0 - test_fraction) * n)
    if n_train + n_test > n:  # float rounding of 1 - test_fraction
        n_train = n - n_test
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test : n_test + n_train].tolist(), permutation[:n_test].tolist()


def reward_result(
    *,
    score: float,
    pred: str,
    format_error: bool,
    feedback: str,
    score_lenient: Optional[float] = None,
    reward_error: int = 0,
) -> dict[str, Any]:
    """The dict every task's compute_score returns; the same keys for every sample.

    verl's reward loop keeps `score` as the reward and every other key as per-sample extra info;
    validation averages each numeric one into `val-aux/<data_source>/<key>/mean@N`:

    - `acc` (= score) makes validation log `val-core/<data_source>/acc/mean@N` (avg@N);
    - `pred` feeds verl's majority-vote metrics (cut to 500 characters);
    - `format_error`: the response is not in the requested format;
    - `feedback`: the environment feedback the SRPO/SDPO self-teacher may use
      (`algorithm.srpo.use_feedback`, key `algorithm.srpo.feedback_key`); empty exactly when the
      answer is correct;
    - `score_lenient`: the lenient scorer's verdict on the same response, logged beside the
      reference score so the difference is visible (= score when the lenient rule is the reward);
    - `reward_error`: 1 when scoring the response failed unexpectedly (it then scores 0), so a
      bad response is counted instead of ending the run.
    """
    score = float(score)
    return {
        "score": score,
        "acc": score,
        "pred": shorten(as_text(pred)),
        "format_error": bool(format_error),
        "feedback": "" if score > 0 else feedback,
        "score_lenient": score if score_lenient is None else float(score_lenient),
        "reward_error": int(reward_error),
    }


def failed_result(exc: BaseException) -> dict[str, Any]:
    """The result of a response whose scoring raised: 0, a format error, counted in `reward_error`."""
    logger.warning(
        "reward function failed on a response (%s: %s); scored 0", type(exc).__name__, shorten(str(exc), 200)
    )
    return reward_result(
        score=0.0,
        pred="",
        format_error=True,
        feedback="Your response could not be read. Follow the requested answer format.",
        score_lenient=0.0,
        reward_error=1,
    )


def chat_prompt(user: str, system: Optional[str] = None) -> list[dict[str, str]]:
    """verl's `prompt` column: a list of chat messages."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    return messages + [{"role": "user", "content": user}]


def hub_error(dataset: str, exc: BaseException, *, local_flag: str, where: str) -> SystemExit:
    """A SystemExit that says why the download failed and how to work offline."""
    return SystemExit(
        f"error: could not download {dataset} ({type(exc).__name__}: {exc}).\n"
        f"This machine may be offline or behind a proxy. Either set HF_ENDPOINT / HTTPS_PROXY and retry, "
        f"or fetch the files elsewhere ({where}) and pass {local_flag}."
    )


def describe_counts(counts: dict[str, int], expected: Optional[Sequence[int]] = None) -> str:
    """`train 1890, test 210`, plus the paper's sizes when they differ (a fixture, a subset)."""
    text = ", ".join(f"{split} {n}" for split, n in counts.items())
    if expected is not None and tuple(counts.values()) != tuple(expected):
        text += f"  (paper: {', '.join(f'{s} {n}' for s, n in zip(counts, expected))})"
    return text

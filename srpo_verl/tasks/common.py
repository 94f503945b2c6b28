"""Helpers shared by the paper's tasks: thinking blocks, the fixed split, the reward record.

Kept free of heavy imports (no datasets, pandas, torch): verl's reward workers import
`srpo_verl.tasks` for every process, and the data-preparation scripts only need these helpers
plus `datasets` at their own top level.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import numpy as np

_THINK_BLOCK = re.compile(r"<think>.*?</think>", flags=re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", flags=re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", flags=re.IGNORECASE)


def strip_thinking(text: str) -> str:
    """The response without its thinking.

    - complete ``<think>…</think>`` blocks are removed;
    - a lone ``</think>`` (the chat template opened the block inside the prompt, so the response
      starts in the middle of it) drops everything up to and including it;
    - an unclosed ``<think>`` (generation stopped while thinking) drops everything after it.
    """
    text = _THINK_BLOCK.sub("", text or "")
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text.strip()


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


def reward_result(*, score: float, pred: str, format_error: bool, feedback: str) -> dict[str, Any]:
    """The dict every task's compute_score returns; the same keys for every sample.

    verl's reward loop keeps `score` as the reward and every other key as per-sample extra info:
    `acc` makes validation log `val-core/<data_source>/acc/mean@N` (avg@N), `pred` feeds verl's
    majority-vote metrics, `format_error` is averaged into `val-aux/.../format_error/mean@N`, and
    `feedback` is the environment feedback the SRPO/SDPO self-teacher may use
    (`algorithm.srpo.use_feedback`, key `algorithm.srpo.feedback_key`). Feedback is empty exactly
    when the answer is correct.
    """
    score = float(score)
    return {
        "score": score,
        "acc": score,
        "pred": pred,
        "format_error": bool(format_error),
        "feedback": "" if score > 0 else feedback,
    }


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
    """`train 1890, test 210` plus a note when the paper's sizes differ."""
    text = ", ".join(f"{split} {n}" for split, n in counts.items())
    if expected is not None and tuple(counts.values()) != tuple(expected):
        text += f"  (paper: {', '.join(f'{s} {n}' for s, n in zip(counts, expected))}; the upstream data may have changed)"
    return text

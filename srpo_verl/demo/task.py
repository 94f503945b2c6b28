"""The demo's task: 2-digit addition from reasoning-gym's `basic_arithmetic` generator and verifier.

reasoning-gym (Apache-2.0, PyPI) generates the problems and scores the answers; only the prompt is
rewritten. Its question reads "Calculate 32 + 15." (19 characters); the demo's user turn is the
compact "32+15=" because with a character tokenizer every character is a token, and the model is
a 1M-parameter Qwen3 trained from scratch in a minute.

* Problems: `basic_arithmetic` with two terms of two digits, "+" only, no parentheses or
  negation: a + b with a, b uniform in 0..100 (reasoning-gym's simple generator draws
  randint(0, 10**digits)). Entries are generated from a seed and de-duplicated; validation
  problems never appear in training.
* Reward (`compute_score`): reasoning-gym's `score_answer` on the stripped response, made binary.
  Its partial credit (len(answer)/len(response) when the answer is a substring, e.g. 0.67 for
  "146" against 46) is dropped: SRPO calls a sample correct at reward >= 0.5 and would then show
  "146" to the self-teacher as a correct solution.

`python -m srpo_verl.demo.task OUT_DIR` writes `train.parquet` and `val.parquet` (verl's RL row
format, like `addition.py`, whose file writer and failure feedback it shares) and prints what it wrote.
"""

from __future__ import annotations

import functools
import os

from srpo_verl.demo import addition

DATA_SOURCE = "reasoning_gym/basic_arithmetic"
RG_DATASET = "basic_arithmetic"
# Two 2-digit terms, addition only, plain "a + b" expressions.
RG_CONFIG = dict(
    min_terms=2,
    max_terms=2,
    min_digits=2,
    max_digits=2,
    operators=("+",),
    allow_parentheses=False,
    allow_negation=False,
)


def compact_prompt(expression: str) -> str:
    """'32 + 15' -> '32+15=' (one character is one token for the demo's tokenizer)."""
    return expression.replace(" ", "") + "="


def make_problems(n: int, *, seed: int, exclude: frozenset = frozenset()) -> list[dict]:
    """n distinct reasoning-gym entries (question, answer, metadata), none whose expression is in `exclude`."""
    import reasoning_gym

    out, seen = [], set(exclude)
    # Draw in chunks: duplicates are common (101 x 101 possible problems), so size is unknown up front.
    size = max(2 * n, 64)
    for attempt in range(8):
        dataset = reasoning_gym.create_dataset(RG_DATASET, seed=seed + 7919 * attempt, size=size, **RG_CONFIG)
        for entry in dataset:
            expression = entry["metadata"]["expression"]
            if expression in seen:
                continue
            seen.add(expression)
            out.append(entry)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct problems (got {len(out)})")


def to_row(entry: dict, *, split: str, index: int) -> dict:
    expression = entry["metadata"]["expression"]
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": compact_prompt(expression)}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": entry["answer"]},
        # What reasoning-gym's verifier needs besides the answer, and where the problem came from.
        "extra_info": {"split": split, "index": index, "expression": expression, "rg_question": entry["question"]},
    }


def split_problems(*, n_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val) entries; disjoint. The warm start draws from the same train split as RL."""
    val = make_problems(n_val, seed=seed + 1)
    train = make_problems(n_train, seed=seed, exclude=frozenset(e["metadata"]["expression"] for e in val))
    return train, val


def write_data(out_dir: str, *, n_train: int = 2048, n_val: int = 256, seed: int = 0) -> dict[str, str]:
    """Write train/val parquet files into `out_dir`; returns {"train": path, "val": path}."""
    train, val = split_problems(n_train=n_train, n_val=n_val, seed=seed)
    return addition.write_splits(
        out_dir,
        {
            split: [to_row(e, split=split, index=i) for i, e in enumerate(entries)]
            for split, entries in (("train", train), ("val", val))
        },
    )


@functools.lru_cache(maxsize=1)
def _rg_score():
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(RG_DATASET)


def is_correct(response: str, answer: str) -> bool:
    """reasoning-gym's verifier, binary: full credit only."""
    return _rg_score()(response.strip(), {"answer": str(answer).strip(), "metadata": {}}) == 1.0


def compute_score(data_source, solution_str: str, ground_truth: str, extra_info=None, **kwargs) -> dict:
    """verl reward function: 1.0 when reasoning-gym's verifier gives full credit, else 0.0.

    `feedback` explains a failure (read by SRPO only with algorithm.srpo.use_feedback=True).
    """
    answer = solution_str.strip()
    correct = is_correct(answer, ground_truth)
    return {"score": 1.0 if correct else 0.0, "acc": float(correct), "feedback": addition.feedback(answer, correct)}


if __name__ == "__main__":
    import sys

    import pandas as pd

    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), "data", "rg_addition")
    for split, path in write_data(out).items():
        frame = pd.read_parquet(path)
        first = frame.iloc[0]
        print(
            f"{split}: {len(frame)} problems -> {path} "
            f"(first: {first.prompt[0]['content']!r}, answer {first.reward_model['ground_truth']})"
        )

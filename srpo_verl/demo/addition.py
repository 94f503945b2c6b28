"""2-digit addition as a verl RL task: parquet data and reward functions.

`write_addition_data(out_dir)` writes `train.parquet` and `val.parquet` in verl's RL format (one
row per problem: `data_source`, `prompt` as a chat message list, `ability`, `reward_model`
{style, ground_truth}, `extra_info` {split, index, a, b}). The user turn is `"{a}+{b}="` with a and
b uniform in 0..99; the answer is `"{a+b}"`. Validation problems never appear in training.

Reward functions, in verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`
form (`reward.custom_reward_function.path=<this file>`):

* `compute_score` (default name): exact match of the stripped response, 1.0 or 0.0, with a
  `feedback` string for the failed attempt (empty when correct).
* `compute_digit_score`: partial credit, the fraction of response characters that are digits.
  A freshly initialised model can learn it in a few dozen RL steps (it starts near 10/96); the
  end-to-end test uses it to check that verl's GRPO on CPU improves reward.

`python -m srpo_verl.demo.addition OUT_DIR` writes the files and prints what it wrote.
"""

from __future__ import annotations

import os
import random

DATA_SOURCE = "srpo_verl/addition"


def make_problems(n: int, *, seed: int, exclude: frozenset = frozenset()) -> list[tuple[int, int]]:
    """n distinct (a, b) pairs with a, b in 0..99, none of them in `exclude`."""
    rng = random.Random(seed)
    pool = [(a, b) for a in range(100) for b in range(100) if (a, b) not in exclude]
    if n > len(pool):
        raise ValueError(f"asked for {n} problems, only {len(pool)} are available")
    return rng.sample(pool, n)


def to_row(a: int, b: int, *, split: str, index: int) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{a}+{b}="}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(a + b)},
        "extra_info": {"split": split, "index": index, "a": a, "b": b},
    }


def write_splits(out_dir: str, rows: dict[str, list[dict]]) -> dict[str, str]:
    """Write `{split: rows}` as `out_dir/<split>.parquet`; returns {split: path}. Each file is written
    under a temporary name and renamed, so a concurrent reader never sees half a file."""
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = os.path.join(out_dir, f"{split}.parquet")
        tmp = paths[split] + f".tmp{os.getpid()}"
        pd.DataFrame(split_rows).to_parquet(tmp, index=False)
        os.replace(tmp, paths[split])
    return paths


def write_addition_data(out_dir: str, *, n_train: int = 1024, n_val: int = 256, seed: int = 0) -> dict[str, str]:
    """Write train/val parquet files into `out_dir`; returns {"train": path, "val": path}."""
    val = make_problems(n_val, seed=seed + 1)
    train = make_problems(n_train, seed=seed, exclude=frozenset(val))
    return write_splits(
        out_dir,
        {
            split: [to_row(a, b, split=split, index=i) for i, (a, b) in enumerate(problems)]
            for split, problems in (("train", train), ("val", val))
        },
    )


def feedback(answer: str, correct: bool) -> str:
    """Why the stripped response `answer` is not the sum ("" when correct): the `feedback` a reward
    function returns, read by SRPO only with algorithm.srpo.use_feedback=True."""
    if correct:
        return ""
    if not answer:
        return "The response is empty; it should be the sum as a number."
    if not answer.isdigit():
        return f"The response {answer!r} is not a number; it should be the sum as digits only."
    return f"{answer} is not the sum."


def compute_score(data_source, solution_str: str, ground_truth: str, extra_info=None, **kwargs) -> dict:
    """1.0 when the stripped response is exactly the sum, else 0.0; `feedback` explains a failure."""
    answer = solution_str.strip()
    correct = answer == str(ground_truth).strip()
    return {"score": 1.0 if correct else 0.0, "acc": float(correct), "feedback": feedback(answer, correct)}


def compute_digit_score(data_source, solution_str: str, ground_truth: str, extra_info=None, **kwargs) -> dict:
    """The fraction of response characters that are digits (0.0 for an empty response)."""
    text = solution_str.strip()
    score = sum(ch.isdigit() for ch in text) / len(text) if text else 0.0
    feedback = "" if score == 1.0 else "The answer should contain digits only."
    return {"score": score, "acc": float(text == str(ground_truth).strip()), "feedback": feedback}


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), "data", "addition")
    for split, path in write_addition_data(out).items():
        import pandas as pd

        frame = pd.read_parquet(path)
        print(f"{split}: {len(frame)} problems -> {path} (first: {frame.prompt[0][0]['content']!r})")

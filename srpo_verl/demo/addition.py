"""2-digit addition as a verl RL task: parquet data and reward functions.

One task, one row format, two sources of problems. Every row is verl's RL row (`data_source`,
`prompt` as a chat message list, `ability`, `reward_model` {style, ground_truth}, `extra_info`);
the user turn is the compact `"{a}+{b}="` and the answer `"{a+b}"`, because with the demo's character
tokenizer every character is a token (the model is a 1M-parameter Qwen3 trained from scratch in a
minute). Validation problems never appear in training.

* The demo's problems (`write_rg_data`, data_source `reasoning_gym/basic_arithmetic`):
  reasoning-gym's (Apache-2.0, PyPI) `basic_arithmetic` generator with two terms of two digits,
  "+" only, no parentheses or negation: a + b with a, b uniform in 0..100 (its simple generator
  draws randint(0, 10**digits)). Entries are generated from a seed and de-duplicated. Its question
  reads "Calculate 32 + 15." (19 characters); only the prompt is rewritten (`compact_prompt`).
  `extra_info` {split, index, expression, rg_question}.
* Dependency-free problems for the tests and benchmarks (`write_addition_data`, data_source
  `srpo_verl/addition`): a, b uniform in 0..99 from `random`. `extra_info` {split, index, a, b}.

Reward functions, in verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`
form (`reward.custom_reward_function.path=<this file>`):

* `compute_score` (default name): 1.0 or 0.0, with a `feedback` string for the failed attempt
  (empty when correct). Rows from reasoning-gym are scored by its verifier (`score_answer`) with
  full credit only: its partial credit (len(answer)/len(response) when the answer is a substring,
  e.g. 0.67 for "146" against 46) is dropped, since SRPO calls a sample correct at reward >= 0.5
  and would then show "146" to the self-teacher as a correct solution. Other rows: exact match of
  the stripped response.
* `compute_digit_score`: partial credit, the fraction of response characters that are digits.
  A freshly initialised model can learn it in a few dozen RL steps (it starts near 10/96); the
  end-to-end test uses it to check that verl's GRPO on CPU improves reward.

`python -m srpo_verl.demo.addition OUT_DIR [--reasoning-gym]` writes `train.parquet` and
`val.parquet` (the demo's problems with --reasoning-gym) and prints what it wrote.
"""

from __future__ import annotations

import functools
import os
import random

DATA_SOURCE = "srpo_verl/addition"
RG_DATA_SOURCE = "reasoning_gym/basic_arithmetic"
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


# ----------------------------------------------------------------------------- problems and rows


def compact_prompt(expression: str) -> str:
    """'32 + 15' -> '32+15=' (one character is one token for the demo's tokenizer)."""
    return expression.replace(" ", "") + "="


def make_problems(n: int, *, seed: int, exclude: frozenset = frozenset()) -> list[tuple[int, int]]:
    """n distinct (a, b) pairs with a, b in 0..99, none of them in `exclude`."""
    rng = random.Random(seed)
    pool = [(a, b) for a in range(100) for b in range(100) if (a, b) not in exclude]
    if n > len(pool):
        raise ValueError(f"asked for {n} problems, only {len(pool)} are available")
    return rng.sample(pool, n)


def make_rg_problems(n: int, *, seed: int, exclude: frozenset = frozenset()) -> list[dict]:
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


def split_rg_problems(*, n_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val) reasoning-gym entries; disjoint. The warm start draws from the same train split as RL."""
    val = make_rg_problems(n_val, seed=seed + 1)
    train = make_rg_problems(n_train, seed=seed, exclude=frozenset(e["metadata"]["expression"] for e in val))
    return train, val


def to_row(a: int, b: int, *, split: str, index: int) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{a}+{b}="}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(a + b)},
        "extra_info": {"split": split, "index": index, "a": a, "b": b},
    }


def rg_row(entry: dict, *, split: str, index: int) -> dict:
    expression = entry["metadata"]["expression"]
    return {
        "data_source": RG_DATA_SOURCE,
        "prompt": [{"role": "user", "content": compact_prompt(expression)}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": entry["answer"]},
        # What reasoning-gym's verifier needs besides the answer, and where the problem came from.
        "extra_info": {"split": split, "index": index, "expression": expression, "rg_question": entry["question"]},
    }


# ----------------------------------------------------------------------------- parquet files


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
    """Write train/val parquet files of the dependency-free problems; returns {"train": path, "val": path}."""
    val = make_problems(n_val, seed=seed + 1)
    train = make_problems(n_train, seed=seed, exclude=frozenset(val))
    return write_splits(
        out_dir,
        {
            split: [to_row(a, b, split=split, index=i) for i, (a, b) in enumerate(problems)]
            for split, problems in (("train", train), ("val", val))
        },
    )


def write_rg_data(out_dir: str, *, n_train: int = 2048, n_val: int = 256, seed: int = 0) -> dict[str, str]:
    """Write train/val parquet files of the demo's reasoning-gym problems; returns {"train": path, "val": path}."""
    train, val = split_rg_problems(n_train=n_train, n_val=n_val, seed=seed)
    return write_splits(
        out_dir,
        {
            split: [rg_row(e, split=split, index=i) for i, e in enumerate(entries)]
            for split, entries in (("train", train), ("val", val))
        },
    )


# ----------------------------------------------------------------------------- rewards


@functools.lru_cache(maxsize=1)
def _rg_score():
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(RG_DATASET)


def rg_correct(response: str, answer: str) -> bool:
    """reasoning-gym's verifier, binary: full credit only."""
    return _rg_score()(response.strip(), {"answer": str(answer).strip(), "metadata": {}}) == 1.0


FEEDBACK_ECHO_CHARS = 64  # of the response quoted in its feedback


def feedback(answer: str, correct: bool) -> str:
    """Why the stripped response `answer` is not the sum ("" when correct): the `feedback` a reward
    function returns, read by SRPO only with algorithm.srpo.use_feedback=True."""
    if correct:
        return ""
    if not answer:
        return "The response is empty; it should be the sum as a number."
    # The echo is capped: the feedback goes into the teacher prompt, and a runaway response would
    # otherwise be copied there whole (8 MB of output made 8 MB of feedback).
    shown = answer if len(answer) <= FEEDBACK_ECHO_CHARS else answer[:FEEDBACK_ECHO_CHARS] + "..."
    if not answer.isdigit():
        return f"The response {shown!r} is not a number; it should be the sum as digits only."
    return f"{shown} is not the sum."


def compute_score(data_source, solution_str: str, ground_truth: str, extra_info=None, **kwargs) -> dict:
    """1.0 when the stripped response is the sum (reasoning-gym's full credit on its rows, exact match
    on the others), else 0.0; `feedback` explains a failure."""
    answer = solution_str.strip()
    correct = rg_correct(answer, ground_truth) if data_source == RG_DATA_SOURCE else answer == str(ground_truth).strip()
    return {"score": 1.0 if correct else 0.0, "acc": float(correct), "feedback": feedback(answer, correct)}


def compute_digit_score(data_source, solution_str: str, ground_truth: str, extra_info=None, **kwargs) -> dict:
    """The fraction of response characters that are digits (0.0 for an empty response)."""
    text = solution_str.strip()
    score = sum(ch.isdigit() for ch in text) / len(text) if text else 0.0
    feedback = "" if score == 1.0 else "The answer should contain digits only."
    return {"score": score, "acc": float(text == str(ground_truth).strip()), "feedback": feedback}


if __name__ == "__main__":
    import sys

    import pandas as pd

    args = [a for a in sys.argv[1:] if a != "--reasoning-gym"]
    rg = "--reasoning-gym" in sys.argv[1:]
    out = args[0] if args else os.path.join(os.getcwd(), "data", "rg_addition" if rg else "addition")
    for split, path in (write_rg_data(out) if rg else write_addition_data(out)).items():
        frame = pd.read_parquet(path)
        first = frame.iloc[0]
        answer = f", answer {first.reward_model['ground_truth']}" if rg else ""
        print(f"{split}: {len(frame)} problems -> {path} (first: {first.prompt[0]['content']!r}{answer})")

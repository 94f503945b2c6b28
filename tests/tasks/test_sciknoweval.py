"""SciKnowEval: the converter on upstream- and SDPO-fork-format fixtures, and the MCQ reward (reference
rule by default, lenient option) on real and adversarial model outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest

from srpo_verl.tasks import sciknoweval as ske
from srpo_verl.tasks.common import split_indices

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCIKNOWEVAL_FILE = FIXTURES / "sciknoweval_sample.jsonl"
FORK = FIXTURES / "sdpo_fork" / "datasets" / "sciknoweval"

LABELS = {"labels": ["A", "B", "C", "D"], "choices": ["116.160", "418.500", "101.150", "102.130"]}

# ----------------------------------------------------------------------------- converter

# Fixture: Chemistry 20 L3 4-choice + 3 L3 2-choice (+ L1, true/false and open-ended records that
# must be dropped), Physics 10 L3 (+5 L2), Biology 11 L3 of which one has an answer key outside
# its choices (split as the fork splits, then dropped: 11 -> 9/2 -> 9/1), Materials 11 L3 with the
# upstream domain name "Material".
FIXTURE_SIZES = {"chemistry": (20, 3), "physics": (9, 1), "biology": (9, 1), "materials": (9, 2)}


@pytest.mark.parametrize("domain", list(ske.DOMAINS))
def test_only_l3_multiple_choice_of_the_domain_is_kept_and_split_90_10(sciknoweval_records, domain):
    splits = ske.build_splits(sciknoweval_records, domain)
    assert (len(splits["train"]), len(splits["test"])) == FIXTURE_SIZES[domain]
    for split, rows in splits.items():
        for row in rows:
            assert row["data_source"] == "sciknoweval" and row["extra_info"]["domain"] == domain
            assert row["extra_info"]["split"] == split
            assert row["reward_model"]["ground_truth"] in row["extra_info"]["labels"]
    train_ids = {r["extra_info"]["index"] for r in splits["train"]}
    test_ids = {r["extra_info"]["index"] for r in splits["test"]}
    assert not train_ids & test_ids and len(train_ids | test_ids) == sum(FIXTURE_SIZES[domain])
    if domain == "biology":  # the record with a foreign answer key keeps its index: nothing shifts
        assert max(train_ids | test_ids) == 10 and len(train_ids | test_ids) == 10


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


def test_row_has_the_sdpo_prompt_and_verl_columns(sciknoweval_records):
    row = ske.build_splits(sciknoweval_records, "physics")["test"][0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    system, user = row["prompt"]
    assert system == {"role": "system", "content": ske.SYSTEM_PROMPT}
    assert system["content"].startswith("\nGiven a question and four options, please select the right answer.")
    assert "only output the letter corresponding to the correct option (A, B, C, or D)" in system["content"]
    question, labels, choices = (row["extra_info"][k] for k in ("question", "labels", "choices"))
    options = "\n".join(f"{label}: {text}" for label, text in zip(labels, choices))
    assert user == {"role": "user", "content": f"{question}\n\n{options}\nPlease reason step by step."}
    assert labels == ["A", "B", "C", "D"] and row["reward_model"] == {
        "style": "rule",
        "ground_truth": row["reward_model"]["ground_truth"],
    }


def test_system_prompt_is_the_one_in_the_fork_files():
    for line in (FORK / "physics" / "test.json").read_text().splitlines():
        assert json.loads(line)["system"] == ske.SYSTEM_PROMPT


@pytest.mark.parametrize("domain,folder", [("physics", "physics"), ("materials", "material")])
def test_fork_split_files_give_the_rows_of_the_upstream_dataset(sciknoweval_records, domain, folder):
    """The SDPO fork's prepared splits (fixture written in its format by its algorithm) read into
    exactly the rows build_splits makes from the upstream records: same prompts, gold, order, idx."""
    expected = ske.build_splits(sciknoweval_records, domain)
    for split in ("train", "test"):
        lines = (FORK / folder / f"{split}.json").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert ske.fork_rows(records, domain, split) == {split: expected[split]}
    whole = json.loads((FORK / f"{folder}.json").read_text())
    assert ske.fork_rows(whole, domain) == expected
    assert ske.fork_domain(str(FORK / folder / "test.json")) == domain == ske.fork_domain(str(FORK / f"{folder}.json"))


def test_fork_record_with_an_unexpected_prompt_is_refused():
    with pytest.raises(ValueError, match="idx=7"):
        ske.from_fork_record({"idx": 7, "prompt": "no options here", "answer": "A", "description": ""})


def test_options_are_read_back_even_when_an_option_ends_with_a_newline():
    record = {"question": "Q?", "choices": {"label": ["A", "B"], "text": ["one\n", "two"]}, "answerKey": "B"}
    row = ske.to_row(record, domain="physics", split="test", index=3)
    fork = {
        "idx": 3,
        "answer": "B",
        "prompt": row["prompt"][1]["content"],
        "description": "Q? The solution will be evaluated in a mcq environment.",
    }
    assert ske.from_fork_record(fork) == {**record, "idx": 3}


def test_unknown_domain_and_empty_input_are_refused(sciknoweval_records):
    with pytest.raises(ValueError, match="geology"):
        ske.build_splits(sciknoweval_records, "geology")
    with pytest.raises(ValueError, match="no L3"):
        ske.build_splits([], "physics")


def test_script_writes_parquet_and_reports_counts(tmp_path, run_script):
    proc = run_script(
        "prepare_sciknoweval.py",
        "--local-file",
        SCIKNOWEVAL_FILE,
        "--out-dir",
        tmp_path,
        "--domains",
        "chemistry",
        "materials",
    )
    assert proc.returncode == 0, proc.stderr
    assert "chemistry  train 20, test 3" in proc.stdout and "materials  train 9, test 2" in proc.stdout
    assert "paper: train 1890, test 210" in proc.stdout and "may have changed" not in proc.stdout
    df = pd.read_parquet(tmp_path / "chemistry" / "test.parquet")
    assert len(df) == 3 and list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert str(tmp_path / "chemistry" / "train.parquet") in proc.stdout
    # What verl's reward loop gets back from the parquet (numpy arrays inside extra_info) still scores.
    row = df.iloc[0]
    gold = row["reward_model"]["ground_truth"]
    assert ske.compute_score(row["data_source"], f"<answer>{gold}</answer>", gold, row["extra_info"])["score"] == 1.0


def test_script_reads_the_fork_folder_into_the_same_parquet(tmp_path, run_script):
    upstream = run_script(
        "prepare_sciknoweval.py",
        "--local-file",
        SCIKNOWEVAL_FILE,
        "--out-dir",
        tmp_path / "up",
        "--domains",
        "physics",
        "materials",
    )
    fork = run_script("prepare_sciknoweval.py", "--local-file", FORK, "--out-dir", tmp_path / "fork")
    assert upstream.returncode == 0 and fork.returncode == 0, upstream.stderr + fork.stderr
    assert (
        "SDPO fork files for materials, physics" in fork.stdout
        or "SDPO fork files for physics, materials" in fork.stdout
    )
    for domain in ("physics", "materials"):
        for split in ("train", "test"):
            a = pd.read_parquet(tmp_path / "up" / domain / f"{split}.parquet")
            b = pd.read_parquet(tmp_path / "fork" / domain / f"{split}.parquet")
            assert len(a) > 0 and a.to_json() == b.to_json()
    assert not (tmp_path / "fork" / "chemistry").exists()  # only the domains the files hold


def test_script_explains_how_to_work_offline(tmp_path, run_script):
    proc = run_script("prepare_sciknoweval.py", "--out-dir", tmp_path, "--domains", "physics")
    assert proc.returncode != 0
    assert "hicai-zju/SciKnowEval" in proc.stderr and "--local-file" in proc.stderr
    assert not (tmp_path / "physics").exists()


# ----------------------------------------------------------------------------- reward

# (response, score under the reference rule, reference pred, format_error, lenient letter). Gold A.
# Reference rule, worked by hand: the text after the last "<answer>" up to the next "</answer>",
# stripped, must be exactly "A" (tags and letter case-sensitive); thinking is removed first.
CASES = [
    ("<reasoning>Mass 116.16.</reasoning>\n<answer>\nA\n</answer>", 1.0, "A", False, "A"),
    ("<answer>a</answer>", 0.0, "a", True, "A"),  # lower case: the lenient reader accepts it
    ("<answer>  **A**  </answer>", 0.0, "**A**", True, "A"),
    ("<answer>A.</answer>", 0.0, "A.", True, "A"),
    ("<answer>(A)</answer>", 0.0, "(A)", True, "A"),
    ("<answer>\\boxed{A}</answer>", 0.0, "\\boxed{A}", True, "A"),
    ("<answer>A: 116.160</answer>", 0.0, "A: 116.160", True, "A"),  # restated option text
    ("<answer>116.160</answer>", 0.0, "116.160", True, "A"),  # only the option text
    ("<answer>The answer is (a).</answer>", 0.0, "The answer is (a).", True, "A"),
    ("<answer>B</answer> Wait, I made an error. <answer>A</answer>", 1.0, "A", False, "A"),  # the last decides
    ("<answer>A</answer> Actually no. <answer>B</answer>", 0.0, "B", False, "B"),
    ("<think>Is it <answer>B</answer>?</think><answer>A</answer>", 1.0, "A", False, "A"),
    ("Let me think.</think>\n<answer>A</answer>", 1.0, "A", False, "A"),  # template opened <think>
    ("<think>I believe <answer>A</answer>", 0.0, "", True, ""),  # never left the thinking block
    ("The answer is (A).", 0.0, "The answer is (A).", True, "A"),  # no tags: the lenient reader's cue
    (
        "Option B looks wrong, option C too. Final answer: **A**",
        0.0,
        "Option B looks wrong, option C too. Final answer: **A**",
        True,
        "A",
    ),
    ("A", 1.0, "A", True, "A"),  # no tag at all: the whole text is the answer (as the reference)
    ("<answer>A", 1.0, "A", True, "A"),  # truncated before the closing tag: read to the end
    ("<answer>A</answer>\n</answer>", 1.0, "A", False, "A"),  # up to the first closer after the last opener
    ("<ANSWER>A</ANSWER>", 0.0, "<ANSWER>A</ANSWER>", True, "A"),  # the reference's tags are lower case
    ("So the answer is a molecule with two rings.", 0.0, "So the answer is a molecule with two rings.", True, ""),
    ("<answer>A or B</answer>", 0.0, "A or B", True, ""),  # ambiguous
    ("<answer>not A</answer>", 0.0, "not A", True, ""),  # adversarial: names A to rule it out
    ("<answer>A is wrong</answer>", 0.0, "A is wrong", True, ""),
    ("<answer>Option A is incorrect</answer>", 0.0, "Option A is incorrect", True, ""),
    ("<answer>(A) is not correct, it is B</answer>", 0.0, "(A) is not correct, it is B", True, "B"),
    ("<answer>E</answer>", 0.0, "E", True, ""),  # not an option
    ("", 0.0, "", True, ""),
    ("   \n ", 0.0, "", True, ""),
]


@pytest.mark.parametrize("response,score,pred,format_error,letter", CASES)
def test_reference_rule_is_the_default_and_lenient_is_logged_beside(response, score, pred, format_error, letter):
    result = ske.compute_score("sciknoweval", response, "A", LABELS)
    assert (result["score"], result["pred"], result["format_error"]) == (score, pred, format_error)
    assert (
        result["acc"] == score and result["feedback"] == "" and result["reward_error"] == 0
    )  # the reference gives no feedback
    assert result["score_lenient"] == (1.0 if letter == "A" else 0.0)
    assert ske.reference_answer(response) == pred
    assert ske.extract_choice(response, LABELS["labels"], LABELS["choices"])[0] == letter


@pytest.mark.parametrize("response,score,pred,format_error,letter", CASES)
def test_lenient_option_scores_with_the_lenient_reader(response, score, pred, format_error, letter):
    result = ske.compute_score("sciknoweval", response, "A", LABELS, lenient=True)
    assert (result["score"], result["pred"]) == ((1.0 if letter == "A" else 0.0), letter)
    assert result["score_lenient"] == result["score"]
    assert (result["feedback"] == "") == (result["score"] == 1.0)


@pytest.mark.parametrize(
    "response,needle",
    [
        ("<answer>B</answer>", "Your answer B is incorrect."),
        ("The answer is C.", "Your answer C is incorrect. Also"),
        ("I am not sure.", "No answer was found"),
        ("<answer>E</answer>", "No answer was found: no <answer> tag naming one of the options A, B, C, D"),
        ("", "Your response is empty"),
    ],
)
def test_lenient_feedback_says_what_went_wrong_without_the_answer(response, needle):
    feedback = ske.compute_score("sciknoweval", response, "A", LABELS, lenient=True)["feedback"]
    assert needle in feedback
    assert "answer A" not in feedback and "is A" not in feedback


def test_two_choice_questions_only_accept_their_labels():
    info = {"labels": ["A", "B"]}
    assert ske.compute_score("s", "<answer>C</answer>", "A", info, lenient=True)["pred"] == ""
    assert ske.compute_score("s", "<answer>B</answer>", "B", info)["score"] == 1.0
    assert ske.compute_score("s", "<answer>C</answer>", "A", info)["format_error"] is True


def test_missing_extra_info_falls_back_to_letters():
    assert ske.compute_score("s", "<answer>D</answer>", "D", None)["score"] == 1.0


@pytest.mark.parametrize("gold", ["(A)", 0, "E", None, "a", ""])
def test_gold_answer_outside_the_labels_raises_naming_the_row(gold):
    with pytest.raises(ValueError, match=r"row test\[12\].*not one of the option labels A, B, C, D"):
        ske.compute_score("sciknoweval", "<answer>A</answer>", gold, {**LABELS, "split": "test", "index": 12})


# ----------------------------------------------------------------------------- issue 23: labels, case folding


@pytest.mark.parametrize(
    "extra_info, problem",
    [
        ({"labels": ["a", "b", "c", "d"]}, "not distinct upper-case letters"),
        ({"labels": ["1", "2"]}, "not distinct upper-case letters"),
        ({"labels": ["A", "A", "B"]}, "not distinct upper-case letters"),
        ({"labels": 4}, "`extra_info.labels` is not a list"),
        ({"labels": "ABCD"}, "`extra_info.labels` is not a list"),
        ('{"labels": ["A", "B"]}', "`extra_info` is not a mapping"),
        ({"labels": ["A", "B", "C"], "choices": ["x", "y"]}, "`extra_info.choices` is not one option text per label"),
    ],
    ids=["lower_case", "digits", "repeated", "int", "string", "extra_info_string", "choices_count"],
)
def test_labels_the_lenient_reader_cannot_name_are_refused_naming_the_row(extra_info, problem):
    """Before: lower-case labels passed and the lenient reader (which names only upper-case letters)
    never credited the right answer; an int or a string gave a bare TypeError/AttributeError."""
    from srpo_verl.tasks import gold_problem

    gold = "a" if problem.startswith("not distinct") and "a" in str(extra_info) else "A"
    assert problem in gold_problem("sciknoweval", gold, extra_info)
    with pytest.raises(ValueError, match="SciKnowEval (row|a row)"):
        ske.compute_score("sciknoweval", "<answer>A</answer>", gold, extra_info)


def test_a_response_scores_the_same_whatever_other_unicode_it_holds():
    """`str.lower` and a re.IGNORECASE regex disagree on `ı`/`İ` (match `i` only in the regex) and `ſ`.
    Before: one `İ` anywhere switched the tag scanner to the regex, which read `</thınk>` as a closer
    and dropped the answer before it (1 -> 0). Tags are now case-insensitive in ASCII only."""
    for response in ("<answer>A</answer></thınk>", "<answer>A</answer><thınk>", "<anſwer>B</answer><answer>A</answer>"):
        for tail in ("", " İ", " \u212a"):
            assert ske.compute_score("sciknoweval", response + tail, "A", LABELS)["score"] == 1.0, (response, tail)
            assert ske.compute_score("sciknoweval", response + tail, "A", LABELS, lenient=True)["score"] == 1.0, (
                response,
                tail,
            )
    # ASCII case still folds, with or without the dotted capital elsewhere.
    for tail in ("", " İ"):
        assert (
            ske.compute_score("sciknoweval", "<THINK>B</Think><ANSWER>A</ANSWER>" + tail, "A", LABELS, lenient=True)[
                "score"
            ]
            == 1.0
        )


def test_records_with_more_labels_than_option_texts_are_dropped_not_cut():
    """Before: zip() cut the option lines at the shorter list, so the prompt could miss the gold option."""
    record = {"question": "Q?", "choices": {"label": ["A", "B", "C"], "text": ["x", "y"]}, "answerKey": "C"}
    assert not ske.gold_in_labels(record)
    with pytest.raises(ValueError, match="3 labels but 2 option texts"):
        ske.to_row(record, domain="chemistry", split="train", index=0)


@pytest.mark.parametrize(
    "broken",
    ["answer_outside_labels", "more_labels_than_texts"],
    ids=["answer_outside_labels", "more_labels_than_texts"],
)
def test_script_refuses_to_write_an_empty_or_cut_split(tmp_path, run_script, broken):
    """Before: every answer key outside its labels gave a 0-row, 0-column parquet and exit 0; more
    labels than option texts gave prompts without the gold option."""
    records = [json.loads(line) for line in SCIKNOWEVAL_FILE.read_text().splitlines() if line.strip()]
    for r in records:
        if broken == "answer_outside_labels":
            r["answerKey"] = "Z"
        else:
            r["choices"] = {"label": list(r["choices"]["label"]) + ["Z"], "text": list(r["choices"]["text"])}
            r["answerKey"] = "Z"
    source = tmp_path / "records.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_script(
        "prepare_sciknoweval.py", "--local-file", source, "--out-dir", tmp_path / "out", "--domains", "physics"
    )
    assert proc.returncode != 0
    assert "physics: no usable record for split train, test" in proc.stderr
    assert not (tmp_path / "out" / "physics").exists()

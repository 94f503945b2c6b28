"""ToolAlpaca: the converter on upstream-format fixtures, and semantic tool-call matching."""

import json
from pathlib import Path

import pandas as pd
import pytest

from srpo_verl.tasks import toolalpaca as ta

TOOLALPACA_DIR = Path(__file__).resolve().parent / "fixtures" / "toolalpaca"
SEARCH = json.dumps([{"Action": "searchAxolotlImages", "Action_Input": '{"color": "wild", "gender": "", "size": "medium", "page": 1}'}])
TWO_SEARCHES = json.dumps(
    [
        {"Action": "searchBooks", "Action_Input": '{"query": "Dune"}'},
        {"Action": "searchBooks", "Action_Input": '{"query": "Foundation"}'},
    ]
)


def call(name, args):
    return f"Action: {name}\nAction Input: {args if isinstance(args, str) else json.dumps(args)}"


# ----------------------------------------------------------------------------- converter


def test_train_rows_keep_instances_with_tool_calls(toolalpaca_train):
    rows = ta.train_rows(toolalpaca_train)
    # 6 instances: one without steps and one upstream error record are dropped.
    assert len(rows) == 4
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2, 3]
    questions = [r["extra_info"]["question"] for r in rows]
    assert "Give me a 3-day forecast for Oslo." in questions  # the "\nHint: ..." tail is removed
    assert not any("Hint" in q for q in questions)
    multi = next(r for r in rows if r["extra_info"]["num_calls"] == 2)
    gold = json.loads(multi["reward_model"]["ground_truth"])
    assert [c["Action"] for c in gold] == ["getCurrentWeather", "getCurrentWeather"]
    assert json.loads(gold[1]["Action_Input"]) == {"city": "Madrid"}


def test_test_rows_pair_instructions_with_golden_answers(toolalpaca_eval):
    rows = ta.test_rows(toolalpaca_eval)
    assert len(rows) == 3  # the request with an empty golden answer is dropped
    assert {r["extra_info"]["split"] for r in rows} == {"test"}
    assert rows[-1]["extra_info"]["num_calls"] == 2


def test_prompt_holds_the_documentation_the_format_and_the_request(toolalpaca_eval):
    row = ta.test_rows(toolalpaca_eval)[0]
    assert row["data_source"] == "toolalpaca" and row["reward_model"]["style"] == "rule"
    (message,) = row["prompt"]
    text = message["content"]
    assert message["role"] == "user"
    assert "Name: WeatherFixture" in text and "getForecast: Get a multi-day forecast." in text
    assert "Action:" in text and "Action Input:" in text
    assert text.endswith("Question: Is it raining in London?")


def test_script_writes_parquet_and_reports_counts(tmp_path, run_script):
    proc = run_script("prepare_toolalpaca.py", "--local-dir", TOOLALPACA_DIR, "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "toolalpaca train 4, test 3" in proc.stdout and "paper: train 4046, test 68" in proc.stdout
    test = pd.read_parquet(tmp_path / "toolalpaca" / "test.parquet")
    assert len(test) == 3 and len(pd.read_parquet(tmp_path / "toolalpaca" / "train.parquet")) == 4
    row = test.iloc[0]
    answer = call("getCurrentWeather", {"city": "London"})
    assert ta.compute_score(row["data_source"], answer, row["reward_model"]["ground_truth"], row["extra_info"])["score"] == 1.0


def test_script_refuses_a_folder_without_the_upstream_files(tmp_path, run_script):
    proc = run_script("prepare_toolalpaca.py", "--local-dir", tmp_path, "--out-dir", tmp_path / "out")
    assert proc.returncode != 0 and "train_data.json not found" in proc.stderr


# ----------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    "response",
    [
        call("searchAxolotlImages", '{"color": "wild", "gender": "", "size": "medium", "page": 1}'),  # verbatim
        call("searchAxolotlImages", '{"page": 1, "size": "medium", "color": "wild"}'),  # keys reordered, empty optional left out
        call("searchAxolotlImages", '{"color": " Wild ", "size": "MEDIUM", "page": "1", "gender": null}'),  # case, spaces, "1" vs 1
        call("searchAxolotlImages", '{"color": "wild", "size": "medium", "page": 1.0}'),
        "Thought: I should search.\n" + call("searchAxolotlImages", {"color": "wild", "size": "medium", "page": 1}) + "\nObservation: ...",
        "**Action:** `searchAxolotlImages`\n**Action Input:**\n```json\n{\"color\": \"wild\", \"size\": \"medium\", \"page\": 1}\n```",
        "ASSISTANT Action: searchAxolotlImages\nASSISTANT Action Input: {\"color\": \"wild\", \"size\": \"medium\", \"page\": 1}",
        "<think>Action: getAxolotlFacts\nAction Input: {}</think>\n" + call("searchAxolotlImages", {"color": "wild", "size": "medium", "page": 1}),
    ],
)
def test_semantically_equal_calls_score_one(response):
    result = ta.compute_score("toolalpaca", response, SEARCH)
    assert (result["score"], result["acc"], result["format_error"], result["feedback"]) == (1.0, 1.0, False, "")
    assert result["pred"].startswith("searchAxolotlImages(")


@pytest.mark.parametrize(
    "response,format_error,feedback",
    [
        (call("getAxolotlFacts", {"category": "habits"}), False, "getAxolotlFacts is not the right tool"),
        (call("searchAxolotlImages", {"color": "albino", "size": "medium", "page": 1}), False, "arguments of your call to searchAxolotlImages"),
        (call("searchAxolotlImages", {"color": "wild", "size": "medium", "page": 1, "gender": "male"}), False, "arguments"),
        (call("searchAxolotlImages", "{'color': 'wild', 'size': 'medium'}"), True, "not valid JSON"),  # Python dict, not JSON
        (call("searchAxolotlImages", '{"color": "wild", "size": '), True, "not valid JSON"),  # truncated
        ("Action: searchAxolotlImages\nThought: done", True, "missing or not valid JSON"),  # no Action Input
        ("I would search for wild medium axolotls.", True, "No tool call found"),
        ("", True, "No tool call found"),
        ("<think>" + call("searchAxolotlImages", {"color": "wild", "size": "medium", "page": 1}), True, "No tool call found"),
        ("\n".join([call("searchAxolotlImages", {"color": "wild", "size": "medium", "page": 1})] * 2), False, "2 tool call(s)"),
    ],
)
def test_wrong_or_malformed_calls_score_zero_with_feedback(response, format_error, feedback):
    result = ta.compute_score("toolalpaca", response, SEARCH)
    assert result["score"] == 0.0 and result["format_error"] is format_error
    assert feedback in result["feedback"]
    assert "wild" not in result["feedback"] and "medium" not in result["feedback"]  # the reference stays hidden


def test_several_calls_match_as_a_multiset_unless_ordered():
    in_order = call("searchBooks", {"query": "Dune"}) + "\n" + call("searchBooks", {"query": "Foundation"})
    swapped = call("searchBooks", {"query": "Foundation"}) + "\n" + call("searchBooks", {"query": "Dune"})
    assert ta.compute_score("toolalpaca", in_order, TWO_SEARCHES)["score"] == 1.0
    assert ta.compute_score("toolalpaca", swapped, TWO_SEARCHES)["score"] == 1.0
    assert ta.compute_score("toolalpaca", swapped, TWO_SEARCHES, ordered=True)["score"] == 0.0
    assert ta.compute_score("toolalpaca", in_order, TWO_SEARCHES, ordered=True)["score"] == 1.0
    one = ta.compute_score("toolalpaca", call("searchBooks", {"query": "Dune"}), TWO_SEARCHES)
    assert one["score"] == 0.0 and "1 tool call(s)" in one["feedback"]


def test_normalize_keeps_booleans_apart_from_numbers():
    assert ta.normalize({"a": True}) != ta.normalize({"a": 1})
    assert ta.normalize({"a": "true"}) == ta.normalize({"a": True})
    assert ta.normalize({"a": [1, 2]}) != ta.normalize({"a": [2, 1]})
    assert ta.normalize({"a": {"b": "", "c": "X"}}) == ta.normalize({"a": {"c": "x"}})


def test_non_json_reference_input_is_compared_as_text():
    gold = json.dumps([{"Action": "lookup", "Action_Input": "not json"}])
    assert ta.parse_reference(gold) == [("lookup", "not json")]
    assert ta.compute_score("toolalpaca", call("lookup", {"q": "x"}), gold)["score"] == 0.0

"""ToolAlpaca: the converter on upstream- and SDPO-fork-format fixtures, and the tool-call reward (reference
rule by default, lenient semantic matching as an option) on real and adversarial outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest

from srpo_verl.tasks import toolalpaca as ta

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOOLALPACA_DIR = FIXTURES / "toolalpaca"
FORK_TOOLUSE = FIXTURES / "sdpo_fork" / "datasets" / "tooluse"
SEARCH = json.dumps(
    [{"Action": "searchAxolotlImages", "Action_Input": '{"color": "wild", "gender": "", "size": "medium", "page": 1}'}]
)
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


def test_test_rows_are_the_requests_whose_golden_inputs_have_no_placeholder(toolalpaca_eval):
    rows = ta.test_rows(toolalpaca_eval)
    # 8 requests: an empty golden answer, a `${...}` placeholder inside a JSON string, one that is
    # not JSON, and a `Pa$$w0rd` are dropped (the fork's rule: no `$` at all; 68 of the real 100).
    assert [r["extra_info"]["question"] for r in rows] == [
        "Is it raining in London?",
        "Forecast for Berlin for the next 2 days, please.",
        "Search for Dune and also for Foundation.",
        "Log me in with Google as ann@example.com.",
    ]
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2, 3] and {r["extra_info"]["split"] for r in rows} == {
        "test"
    }
    assert rows[2]["extra_info"]["num_calls"] == 2
    assert rows[0]["reward_model"]["ground_truth"] == json.dumps(toolalpaca_eval[0]["Golden_Answers"][0])


def test_prompt_is_the_sdpo_task_prompt(toolalpaca_eval):
    row = ta.test_rows(toolalpaca_eval)[0]
    assert row["data_source"] == "tooluse" and row["reward_model"]["style"] == "rule"
    (message,) = row["prompt"]
    api = toolalpaca_eval[0]
    assert message == {
        "role": "user",
        "content": "Your task is to answer the user's question using available tools. \n"
        "You have access to the following tools:\n"
        f"Name: {api['Name']}\nDescription: {api['Description']}\nDocumentation:\n{api['NLDocumentation']}\n"
        "Use the following format:\nThought: you should always think about what to do\n"
        "Action: the action to take, should be one of the tool names.\n"
        "Action Input: the input to the action, must be in JSON format. "
        "All of the action input must be realistic "
        "and from the user.\n\n"
        "Begin!\nQuestion: Is it raining in London?",
    }


def test_fork_files_give_the_rows_of_the_upstream_files(toolalpaca_train, toolalpaca_eval):
    """The fork's tooluse/{train,test}.json (fixture written in its format) read into exactly the
    rows made from ToolAlpaca's own files."""
    for split, expected in (("train", ta.train_rows(toolalpaca_train)), ("test", ta.test_rows(toolalpaca_eval))):
        records = [json.loads(line) for line in (FORK_TOOLUSE / f"{split}.json").read_text().splitlines()]
        assert all(ta.is_fork_record(r) for r in records)
        assert [ta.from_fork_record(r, split=split, index=i) for i, r in enumerate(records)] == expected


def test_script_writes_parquet_and_reports_counts(tmp_path, run_script):
    proc = run_script("prepare_toolalpaca.py", "--local-dir", TOOLALPACA_DIR, "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tooluse    train 4, test 4  (paper: train 4046, test 68)" in proc.stdout and "upstream" not in proc.stdout
    test = pd.read_parquet(tmp_path / "toolalpaca" / "test.parquet")
    assert len(test) == 4 and len(pd.read_parquet(tmp_path / "toolalpaca" / "train.parquet")) == 4
    row = test.iloc[0]
    answer = call("getCurrentWeather", {"city": "London", "units": ""})
    assert (
        ta.compute_score(row["data_source"], answer, row["reward_model"]["ground_truth"], row["extra_info"])["score"]
        == 1.0
    )


def test_script_reads_the_fork_files_into_the_same_parquet(tmp_path, run_script):
    upstream = run_script("prepare_toolalpaca.py", "--local-dir", TOOLALPACA_DIR, "--out-dir", tmp_path / "up")
    fork = run_script("prepare_toolalpaca.py", "--local-file", FORK_TOOLUSE, "--out-dir", tmp_path / "fork")
    assert upstream.returncode == 0 and fork.returncode == 0, upstream.stderr + fork.stderr
    for split in ("train", "test"):
        a = pd.read_parquet(tmp_path / "up" / "toolalpaca" / f"{split}.parquet")
        b = pd.read_parquet(tmp_path / "fork" / "toolalpaca" / f"{split}.parquet")
        assert len(a) == 4 and a.to_json() == b.to_json()
    wrong = run_script(
        "prepare_toolalpaca.py",
        "--local-file",
        TOOLALPACA_DIR / "data" / "train_data.json",
        "--out-dir",
        tmp_path / "x",
    )
    assert wrong.returncode != 0 and "train.json or test.json" in wrong.stderr


def test_script_refuses_a_folder_without_the_upstream_files(tmp_path, run_script):
    proc = run_script("prepare_toolalpaca.py", "--local-dir", tmp_path, "--out-dir", tmp_path / "out")
    assert proc.returncode != 0 and "train_data.json not found" in proc.stderr


# ----------------------------------------------------------------------------- reward

WILD = {"color": "wild", "size": "medium", "page": 1}


# (response, reference score, lenient score). Reference rule, worked by hand: the names after
# "Action:" as a multiset equal ["searchAxolotlImages"], and the merged "Action Input: {...}"
# dicts equal {"color": "wild", "gender": "", "size": "medium", "page": 1} under Python's ==.
@pytest.mark.parametrize(
    "response,score,lenient",
    [
        (
            call("searchAxolotlImages", '{"color": "wild", "gender": "", "size": "medium", "page": 1}'),
            1.0,
            1.0,
        ),  # verbatim
        (
            call("searchAxolotlImages", '{"page": 1, "size": "medium", "gender": "", "color": "wild"}'),
            1.0,
            1.0,
        ),  # key order
        (
            call("searchAxolotlImages", '{"color": "wild", "gender": "", "size": "medium", "page": 1.0}'),
            1.0,
            1.0,
        ),  # 1.0 == 1
        (call("searchAxolotlImages", WILD), 0.0, 1.0),  # empty optional left out: the dicts differ
        (call("searchAxolotlImages", '{"color": " Wild ", "size": "MEDIUM", "page": "1", "gender": null}'), 0.0, 1.0),
        ("Thought: search.\n" + call("searchAxolotlImages", {**WILD, "gender": ""}) + "\nObservation: ...", 1.0, 1.0),
        (
            "**Action:** `searchAxolotlImages`\n**Action Input:**\n```json\n" + json.dumps(WILD) + "\n```",
            0.0,
            1.0,
        ),  # markdown
        (
            "ASSISTANT Action: searchAxolotlImages\nASSISTANT Action Input: " + json.dumps({**WILD, "gender": ""}),
            1.0,
            1.0,
        ),
        (
            "<think>Action: getAxolotlFacts\nAction Input: {}</think>\n"
            + call("searchAxolotlImages", {**WILD, "gender": ""}),
            1.0,
            1.0,
        ),
        # Two calls: the names {search: 2} differ from {search: 1}, whatever the inputs.
        ("\n".join([call("searchAxolotlImages", {**WILD, "gender": ""})] * 2), 0.0, 0.0),
        (call("getAxolotlFacts", {"category": "habits"}), 0.0, 0.0),
        (call("searchAxolotlImages", "{'color': 'wild', 'size': 'medium'}"), 0.0, 0.0),  # Python dict, not JSON
        (call("searchAxolotlImages", '{"color": "wild", "size": '), 0.0, 0.0),  # truncated
        ("I would search for wild medium axolotls.", 0.0, 0.0),
        ("", 0.0, 0.0),
        ("<think>" + call("searchAxolotlImages", {**WILD, "gender": ""}), 0.0, 0.0),  # never left the thinking
    ],
)
def test_reference_rule_is_the_default_and_lenient_is_logged_beside(response, score, lenient):
    result = ta.compute_score("tooluse", response, SEARCH)
    assert (result["score"], result["acc"], result["score_lenient"], result["reward_error"]) == (
        score,
        score,
        lenient,
        0,
    )
    assert (result["feedback"] == "") == (score == 1.0)
    assert ta.compute_score("tooluse", response, SEARCH, lenient=True)["score"] == lenient


def test_reference_feedback_states_the_expected_calls():
    result = ta.compute_score("tooluse", call("getAxolotlFacts", {"category": "habits"}), SEARCH)
    assert result["feedback"] == (
        "Actions mismatch: predicted ['getAxolotlFacts'], expected ['searchAxolotlImages']; "
        "Action inputs mismatch: predicted {'category': 'habits'}, "
        "expected {'color': 'wild', 'gender': '', 'size': 'medium', 'page': 1}"
    )
    assert result["pred"] == "Actions: ['getAxolotlFacts'], Inputs: {'category': 'habits'}"
    assert result["format_error"] is False
    assert ta.compute_score("tooluse", "Action: x", SEARCH)["format_error"] is True  # no Action Input line


def test_reference_merges_all_inputs_so_order_and_repeats_count_as_the_reference_counts():
    """TWO_SEARCHES merges to {"query": "Foundation"} (the later key wins), worked by hand."""
    dune, foundation = call("searchBooks", {"query": "Dune"}), call("searchBooks", {"query": "Foundation"})
    assert ta.compute_score("tooluse", dune + "\n" + foundation, TWO_SEARCHES)["score"] == 1.0
    assert ta.compute_score("tooluse", foundation + "\n" + dune, TWO_SEARCHES)["score"] == 0.0  # merges to Dune
    assert ta.compute_score("tooluse", foundation + "\n" + foundation, TWO_SEARCHES)["score"] == 1.0  # as the reference
    # The lenient matcher compares calls as a multiset instead (or in order with ordered=True).
    assert ta.compute_score("tooluse", foundation + "\n" + dune, TWO_SEARCHES, lenient=True)["score"] == 1.0
    assert (
        ta.compute_score("tooluse", foundation + "\n" + dune, TWO_SEARCHES, lenient=True, ordered=True)["score"] == 0.0
    )
    assert ta.compute_score("tooluse", foundation + "\n" + foundation, TWO_SEARCHES, lenient=True)["score"] == 0.0


def test_reference_reads_an_input_up_to_its_first_closing_brace():
    """The reference's non-greedy `{.*?}`: a nested object never parses there (kept as is)."""
    gold = json.dumps([{"Action": "update", "Action_Input": '{"id": 1, "profile": {"url": "x"}}'}])
    response = call("update", {"id": 1, "profile": {"url": "x"}})
    assert ta.reference_calls(response) == (["update"], {})
    assert ta.compute_score("tooluse", response, gold)["score"] == 0.0
    assert ta.compute_score("tooluse", response, gold)["score_lenient"] == 1.0


@pytest.mark.parametrize(
    "response,feedback",
    [
        (call("getAxolotlFacts", {"category": "habits"}), "getAxolotlFacts is not the right tool"),
        (
            call("searchAxolotlImages", {"color": "albino", "size": "medium", "page": 1}),
            "arguments of your call to searchAxolotlImages",
        ),
        (call("searchAxolotlImages", "{'color': 'wild', 'size': 'medium'}"), "not valid JSON"),
        ("Action: searchAxolotlImages\nThought: done", "missing or not valid JSON"),
        ("I would search for wild medium axolotls.", "No tool call found"),
        ("\n".join([call("searchAxolotlImages", WILD)] * 2), "2 tool call(s)"),
    ],
)
def test_lenient_feedback_does_not_reveal_the_reference(response, feedback):
    result = ta.compute_score("tooluse", response, SEARCH, lenient=True)
    assert result["score"] == 0.0 and feedback in result["feedback"]
    assert "wild" not in result["feedback"] and "medium" not in result["feedback"]


def test_normalize_keeps_booleans_apart_from_numbers():
    assert ta.normalize({"a": True}) != ta.normalize({"a": 1})
    assert ta.normalize({"a": "true"}) == ta.normalize({"a": True})
    assert ta.normalize({"a": [1, 2]}) != ta.normalize({"a": [2, 1]})
    assert ta.normalize({"a": {"b": "", "c": "X"}}) == ta.normalize({"a": {"c": "x"}})


def test_non_json_reference_input_is_compared_as_text():
    gold = json.dumps([{"Action": "lookup", "Action_Input": "not json"}])
    assert ta.parse_reference(gold) == [("lookup", "not json")]
    assert ta.compute_score("tooluse", call("lookup", {"q": "x"}), gold)["score"] == 0.0
    assert ta.compute_score("tooluse", "Action: lookup\nAction Input: {}", gold)["score"] == 1.0  # as the reference: {}


@pytest.mark.parametrize(
    "gold,why",
    [
        ("not json", "is not JSON"),
        ("{}", "non-empty list"),
        ("[]", "non-empty list"),
        (None, "non-empty list"),
        (json.dumps([{"Action": 1, "Action_Input": "{}"}]), "a call that is not"),
        (json.dumps([{"Action_Input": "{}"}]), "a call that is not"),
        (json.dumps([{"Action": "x", "Action_Input": 5}]), "neither a JSON string nor an object"),
        (json.dumps([{"Action": "x", "Action_Input": "[" * 100 + "]" * 100}]), "nested deeper than 64"),
    ],
)
def test_malformed_gold_answer_raises_naming_the_row_and_value(gold, why):
    with pytest.raises(ValueError, match=rf"ToolAlpaca row test\[7\]: reward_model.ground_truth .*{why}"):
        ta.compute_score("tooluse", call("x", {}), gold, {"split": "test", "index": 7})


def test_reference_reads_at_most_256_inputs_and_a_looping_response_scores_zero():
    gold = json.dumps([{"Action": "search", "Action_Input": "{}"}])
    assert ta.compute_score("tooluse", "Action: search\n" + "Action Input: {}\n" * 256, gold)["score"] == 1.0
    looping = ta.compute_score("tooluse", "Action: search\n" + "Action Input: {}\n" * 257, gold)
    assert looping["score"] == 0.0 and "More than 256 Action Inputs" in looping["feedback"]
    many = ta.compute_score("tooluse", "Action: search\nAction Input: {}\n" * 5000, gold, lenient=True)
    assert many["score"] == 0.0 and "You made 5000 tool call(s)" in many["feedback"]
    assert many["pred"].endswith("; … 4984 more calls") and len(many["pred"]) < 600


# ----------------------------------------------------------------------------- issue 23: the reference rule exactly

NO_ARGS = json.dumps([{"Action": "getX", "Action_Input": "{}"}])


def test_each_input_block_is_parsed_alone_as_the_reference_does():
    """Two blocks that are not JSON alone but are one object together: `{"a": "x}` and `{", "b": 1}`
    join into {"a": "x},{", "b": 1}. The reference parses each alone (both fail: nothing merged),
    so against a no-argument gold the response scores 1. Before: parsed jointly, scored 0."""
    response = 'Action: getX\nAction Input: {"a": "x}\nAction Input: {", "b": 1}'
    assert ta.reference_calls(response) == (["getX"], {})
    assert ta.compute_score("tooluse", response, NO_ARGS)["score"] == 1.0
    # The other direction: a block valid alone stays merged whatever its neighbour does.
    response = 'Action: getX\nAction Input: {"a": "x}\nAction Input: {"b": 1}'
    assert ta.reference_calls(response) == (["getX"], {"b": 1})
    assert ta.compute_score("tooluse", response, NO_ARGS)["score"] == 0.0


@pytest.mark.parametrize("depth", [63, 64, 65, 200])
def test_a_deeply_nested_argument_is_merged_as_the_reference_merges_it(depth):
    """An argument nested past 64 levels is still an argument: it cannot match a no-argument gold
    (6 of the 68 test rows have one). Before: dropped past the limit, so the junk call scored 1."""
    response = 'Action: getX\nAction Input: {"q": ' + "[" * depth + "]" * depth + "}"
    result = ta.compute_score("tooluse", response, NO_ARGS)
    assert result["score"] == 0.0 and result["format_error"] is False
    assert "Action inputs mismatch" in result["feedback"]


def test_an_input_too_deep_for_the_json_parser_scores_zero_with_a_format_error():
    # The reference's json.loads raises RecursionError here (ending its run); ours scores 0.
    response = 'Action: getX\nAction Input: {"q": ' + "[" * 100_000 + "]" * 100_000 + "}"
    result = ta.compute_score("tooluse", response, NO_ARGS)
    assert (result["score"], result["format_error"], result["reward_error"]) == (0.0, True, 0)
    assert "nested too deeply" in result["feedback"]


def test_gold_tool_names_that_are_not_one_word_can_never_score_under_the_reference_rule():
    """The documented score (docs/reproduction.md): test row 33's `[Optional]updateUserProfile` is read
    as no action by `Action:\\s*(\\w+)`, so the reference rule gives 0 for every response; the lenient
    reader matches it."""
    gold = json.dumps(
        [
            {"Action": "getUserProfile", "Action_Input": "{}"},
            {"Action": "[Optional]updateUserProfile", "Action_Input": "{}"},
        ]
    )
    assert ta.unreadable_actions(gold) == ["[Optional]updateUserProfile"]
    assert ta.unreadable_actions(json.dumps([{"Action": " spaced", "Action_Input": "{}"}])) == [" spaced"]
    assert ta.unreadable_actions(NO_ARGS) == []
    response = "Action: getUserProfile\nAction Input: {}\nAction: [Optional]updateUserProfile\nAction Input: {}"
    result = ta.compute_score("tooluse", response, gold)
    assert result["score"] == 0.0 and result["score_lenient"] == 1.0


def test_list_gold_read_back_from_parquet_is_refused_with_the_reason(tmp_path):
    calls = [{"Action": "a", "Action_Input": {"x": 1}}, {"Action": "b", "Action_Input": {"y": 2}}]
    pd.DataFrame([{"gt": calls}]).to_parquet(tmp_path / "g.parquet")
    back = pd.read_parquet(tmp_path / "g.parquet")["gt"][0]
    with pytest.raises(ValueError, match=r"is an array .* store it as a JSON string \(json.dumps\)"):
        ta.parse_reference(back, {"split": "train", "index": 4})
    from srpo_verl.tasks import gold_problem

    assert "array read back from parquet" in gold_problem("tooluse", back, None)


@pytest.mark.parametrize("raw", ["[1, 2]", "3", '"text"', "true"])
def test_gold_input_that_is_json_but_not_an_object_is_refused(raw):
    """The reference's merge raises on a list and drops other non-objects; ours counted them as {}
    silently. A non-JSON string (a `${...}` placeholder) is still kept as text."""
    gold = json.dumps([{"Action": "a", "Action_Input": raw}])
    with pytest.raises(ValueError, match="JSON but not an object"):
        ta.parse_reference(gold, {"split": "train", "index": 2})
    assert ta.parse_reference(json.dumps([{"Action": "a", "Action_Input": "${x}"}])) == [("a", "${x}")]

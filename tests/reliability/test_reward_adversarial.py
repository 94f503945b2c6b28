"""Model outputs at the reward function (docs/reliability.md, rows W..): whatever the policy writes,
the reward returns a score dict quickly and never raises; bad gold answers are refused up front."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srpo_verl import tasks
from srpo_verl.integration.data_checks import check_data_rows
from srpo_verl.tasks import sciknoweval, toolalpaca
from srpo_verl.tasks.common import strip_thinking

KEYS = {"score", "acc", "pred", "format_error", "feedback", "score_lenient", "reward_error"}
MCQ_INFO = {"labels": ["A", "B", "C", "D"], "choices": ["one", "two", "three", "four"], "split": "test", "index": 0}
TOOL_GOLD = json.dumps([{"Action": "search", "Action_Input": json.dumps({"q": "axolotl", "page": 1})}])
MB = 1 << 20


def score_all(response):
    """Every reward the recipes can select, on one response."""
    out = []
    for lenient in (False, True):
        out.append(tasks.compute_score("sciknoweval", response, "B", MCQ_INFO, lenient=lenient))
        out.append(tasks.compute_score("tooluse", response, TOOL_GOLD, {"index": 0}, lenient=lenient))
    return out


def assert_scored(result):
    assert set(result) == KEYS
    assert result["score"] in (0.0, 1.0) and result["score_lenient"] in (0.0, 1.0)
    assert result["acc"] == result["score"] and isinstance(result["format_error"], bool)
    assert isinstance(result["pred"], str) and len(result["pred"]) < 600 and isinstance(result["feedback"], str)
    assert (result["feedback"] == "") or result["score"] == 0.0


def fill(unit, size, head=""):
    return head + (unit * (size // len(unit) + 1))[: size - len(head)]


# --------------------------------------------------------------------------- recursion


@pytest.mark.parametrize(
    "response",
    [
        fill("[", MB, head="Action: search\nAction Input: "),  # unclosed, 1 MB deep
        "Action: search\nAction Input: " + "[" * 600 + "]" * 600,  # closed, deeper than normalize could recurse
        fill('{"a":', MB, head="Action: search\nAction Input: "),
        'Action: search\nAction Input: {"q": ' + "[" * 5000 + "]" * 5000 + "}",  # deep inside the reference's {...}
    ],
    ids=["unclosed_1MB", "closed_600", "objects_1MB", "inside_braces_5000"],
)
def test_deep_nesting_is_a_format_error_not_a_crash(response):
    for result in score_all(response):
        assert_scored(result)
        assert result["score"] == 0.0 and result["reward_error"] == 0
    assert toolalpaca._parse_input(response.split("Action Input: ", 1)[1]) is toolalpaca.MALFORMED
    assert toolalpaca.compute_score("tooluse", response, TOOL_GOLD, lenient=True)["format_error"] is True


def test_normalize_refuses_deep_values_without_recursion_error():
    deep = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper than 64"):
        toolalpaca.normalize(deep)
    assert toolalpaca.normalize([[1]]) == ("arr", (("arr", (("num", 1.0),)),))


# --------------------------------------------------------------------------- time


ADVERSARIAL = {
    "open_think": lambda n: fill("<think>", n),
    "open_answer": lambda n: fill("<answer>", n),
    "think_answer": lambda n: fill("<think> x <answer> B ", n),
    "close_think": lambda n: fill("</think>", n),
    "blocks": lambda n: fill("<think>a</think><answer>B</answer>", n),
    "cues": lambda n: fill("The answer is (B), not A. ", n),
    "actions": lambda n: fill('Action: search\nAction Input: {"q": ', n),
    "calls": lambda n: fill('Action: search\nAction Input: {"q": 1}\n', n),
    "spaces": lambda n: "Action: search" + " " * (n - 40) + "\nAction Input: {}  answer",
}


@pytest.mark.parametrize("family", list(ADVERSARIAL))
def test_one_megabyte_of_repeated_tags_scores_in_linear_time(family):
    """1 MB took ~50 min to parse before (quadratic backtracking). Linear growth: 16x the input
    costs ~16x the time; the bound allows 64x (quadratic would be 256x) plus a 5 ms floor for
    timer noise, and 2 s per call at 1 MB (about 40x what this machine needs, ~50 ms)."""

    def best(text):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for result in score_all(text):
                assert_scored(result)
                assert result["reward_error"] == 0
            times.append(time.perf_counter() - start)
        return min(times) / 4  # per reward call

    small, large = best(ADVERSARIAL[family](64 * 1024)), best(ADVERSARIAL[family](MB))
    assert large < 2.0, f"{family}: {large * 1e3:.0f} ms per call at 1 MB"
    assert large < 64 * max(small, 0.005), f"{family}: {large / small:.0f}x from 64 KB to 1 MB"


# --------------------------------------------------------------------------- fuzz

PIECES = [
    "<think>",
    "</think>",
    "<THINK>",
    "<answer>",
    "</answer>",
    "<ANSWER>",
    "Action:",
    "Action Input:",
    "ACTION INPUT:",
    "ASSISTANT ",
    "**",
    "`",
    "```json\n",
    "```",
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    ":",
    ",",
    "A",
    "B",
    "E",
    "a",
    "(B)",
    "not ",
    " is wrong",
    "The answer is ",
    "\\boxed{",
    "Option ",
    "\n",
    " ",
    "\t",
    "\x00",
    "\x1b[31m",
    "\r",
    "\u202e",
    "İ",
    "\ud800",
    "<|im_end|>",
    "\ufeff",
    "search",
    '"q"',
    "1",
    "null",
]


@st.composite
def responses(draw):
    """Adversarial text: tag soup, with one random chunk repeated up to ~100 KB (a looping model)."""
    parts = draw(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=30))
    chunk = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6)))
    repeat = draw(st.sampled_from([0, 1, 10, 1000, 100_000 // len(chunk)]))
    at = draw(st.integers(0, len(parts)))
    return "".join(parts[:at]) + chunk * repeat + "".join(parts[at:])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(responses())
def test_fuzzed_responses_always_get_a_score_dict_within_the_time_bound(response):
    start = time.perf_counter()
    results = score_all(response)
    elapsed = (time.perf_counter() - start) / len(results)
    for result in results:
        assert_scored(result)
        assert result["reward_error"] == 0  # parsing never failed unexpectedly either
    # Linear: ~50 ms per MB here; 1 s per MB + 50 ms is a generous bound (quadratic took minutes).
    assert elapsed < 0.05 + len(response) / MB, f"{elapsed * 1e3:.0f} ms for {len(response)} characters"
    assert strip_thinking(response) == strip_thinking(response).strip()


@pytest.mark.parametrize("response", [None, 0, 3.5, b"<answer>B</answer>", ["<answer>B</answer>"], {"a": 1}, object()])
def test_responses_that_are_not_strings_score_zero_or_their_text(response):
    for result in score_all(response):
        assert_scored(result)
        assert result["reward_error"] == 0
    assert tasks.compute_score("sciknoweval", None, "B", MCQ_INFO)["score"] == 0.0


# --------------------------------------------------------------------------- unexpected failures


@pytest.mark.parametrize("module,task,gold", [(sciknoweval, "sciknoweval", "B"), (toolalpaca, "tooluse", TOOL_GOLD)])
def test_a_failure_while_scoring_is_counted_and_scored_zero(monkeypatch, caplog, module, task, gold):
    def broken(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(module, "_score", broken)
    result = tasks.compute_score(task, "<answer>B</answer>", gold, MCQ_INFO)
    assert_scored(result)
    assert (result["score"], result["reward_error"], result["format_error"]) == (0.0, 1, True)
    assert result["feedback"] and "RuntimeError: parser bug" in caplog.text


# --------------------------------------------------------------------------- gold answers


def mcq_row(gold, labels=("A", "B", "C", "D")):
    return {
        "prompt": [{"role": "user", "content": "Q?"}],
        "data_source": "sciknoweval",
        "reward_model": {"style": "rule", "ground_truth": gold},
        "extra_info": {"labels": list(labels), "split": "train", "index": 0},
    }


def tool_row(gold):
    return {
        "prompt": [{"role": "user", "content": "Q?"}],
        "data_source": "tooluse",
        "reward_model": {"ground_truth": gold},
    }


def test_data_check_refuses_mcq_gold_answers_outside_the_labels():
    rows = [mcq_row("A"), mcq_row("(A)"), mcq_row(0), mcq_row("E"), mcq_row("B", labels=("A", "B"))]
    with pytest.raises(ValueError, match=r"is not one of the row's option labels .* at rows \[1, 2, 3\]"):
        check_data_rows(rows, source="data.train_files")
    check_data_rows([mcq_row("A"), mcq_row("B", labels=("A", "B"))])


def test_data_check_refuses_malformed_tool_gold_answers():
    good = json.dumps([{"Action": "search", "Action_Input": "{}"}])
    rows = [tool_row(good), tool_row("not json"), tool_row(json.dumps([{"Input": "{}"}])), tool_row("[]")]
    with pytest.raises(ValueError, match=r"tool calls at rows \[1, 2, 3\]"):
        check_data_rows(rows, source="data.val_files")
    check_data_rows([tool_row(good), {**tool_row("anything"), "data_source": "openai/gsm8k"}])

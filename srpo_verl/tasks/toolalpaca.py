"""ToolAlpaca tool use: data rows and reward.

Upstream: the GitHub repository ``tangqiaoyu/ToolAlpaca``, folder ``data/``:

- ``train_data.json``: a list of APIs. Each API has ``Name``, ``Description``,
  ``NLDocumentation`` (the tools in natural language) and ``Instances``, each instance with
  ``input`` (the user request, sometimes followed by ``\\nHint: …``) and ``intermediate_steps``,
  a list of ``[[action, action_input, agent_text], observation]``.
- ``eval_simulated.json``: the 10 simulated test APIs, with ``Instructions`` (100 requests) and
  ``Golden_Answers`` (per request, a list of ``{"Action": name, "Action_Input": "<json>"}``).

The paper's split (docs/spec.md §3), as the public SDPO code the paper builds on
(github.com/lasgroup/SDPO, ``datasets/tooluse/{train,test}.json``): 4046 training requests
(every training instance with at least one tool call) and 68 test requests: the simulated
requests whose golden inputs contain no ``$``. That drops the 31 whose golden inputs hold
``${…}`` placeholders (30 of them are not even JSON, so no response could match) and one whose
password is ``Pa$$w0rd``; the 68 left are exactly the fork's ``test.json``, in the same order.

The task is single-turn: given the tool documentation and the request (the fork's prompt,
`PROMPT_TEMPLATE`), emit the tool call(s) as ``Action: …`` / ``Action Input: {json}`` lines.
``data_source`` is ``tooluse``, the fork's name.

Reward (default, the reference rule of the fork's ``verl/utils/reward_score/feedback/tooluse.py``):
1 when the multiset of action names (every ``Action: <word>``) equals the reference's and the
merged dict of all ``Action Input: {…}`` objects (each parsed on its own) equals the merged
reference inputs; the
feedback names the predicted and the expected calls, as the reference's does. See
`reference_calls` for the parsing details. The lenient matcher (`calls_match`: per-call
comparison after `normalize`, case-insensitive, coercions) is an option (``lenient=True``) and is
always logged as ``score_lenient``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from typing import Any, Iterable, Mapping, Optional, Sequence

from srpo_verl.tasks.common import (
    RowProblem,
    as_text,
    chat_prompt,
    depth_exceeds,
    failed_result,
    reward_result,
    shorten,
    strip_thinking,
)

GITHUB_REPO = "tangqiaoyu/ToolAlpaca"
RAW_BASE = "https://raw.githubusercontent.com/tangqiaoyu/ToolAlpaca/main/data"
TRAIN_FILE = "train_data.json"
TEST_FILE = "eval_simulated.json"

DATA_SOURCE = "tooluse"
ABILITY = "tooluse"
PAPER_SPLITS = (4046, 68)
# Nesting deeper than this in an Action Input is a format error (real inputs nest 2-3 deep); it
# bounds every recursive step (json, normalize, repr) far below Python's recursion limit.
MAX_JSON_DEPTH = 64

# The SDPO fork's task prompt, verbatim; the documentation is ToolAlpaca's NLDocumentation, which
# ends with a newline.
PROMPT_TEMPLATE = (
    "Your task is to answer the user's question using available tools. \n"
    "You have access to the following tools:\n"
    "Name: {name}\n"
    "Description: {description}\n"
    "Documentation:\n"
    "{documentation}\n"
    "Use the following format:\n"
    "Thought: you should always think about what to do\n"
    "Action: the action to take, should be one of the tool names.\n"
    "Action Input: the input to the action, must be in JSON format. All of the action input must be "
    "realistic and from the user.\n"
    "\n"
    "Begin!\n"
    "Question: {question}"
)


# ----------------------------------------------------------------------------- data rows


def format_prompt(api: Mapping[str, Any], question: str) -> str:
    """The user turn for one request on one API (fields used as they are, like the fork)."""
    return PROMPT_TEMPLATE.format(
        name=str(api.get("Name", "")),
        description=str(api.get("Description", "")),
        documentation=str(api.get("NLDocumentation") or ""),
        question=str(question),
    )


def _row(prompt: str, api_name: str, question: str, ground_truth: str, *, split: str, index: int) -> dict[str, Any]:
    return {
        "data_source": DATA_SOURCE,
        "prompt": chat_prompt(prompt),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "split": split,
            "index": index,
            "api": api_name,
            "question": question,
            "num_calls": len(json.loads(ground_truth)),
        },
    }


def _reference_call(action: Any, action_input: Any) -> dict[str, str]:
    """{"Action", "Action_Input"} with the input as a JSON string, the upstream convention."""
    return {
        "Action": str(action),
        "Action_Input": action_input if isinstance(action_input, str) else json.dumps(action_input),
    }


def _instance_calls(instance: Any) -> Optional[list[dict[str, str]]]:
    """The reference calls of a training instance, or None when it has none or is malformed."""
    if not isinstance(instance, Mapping):
        return None
    steps = instance.get("intermediate_steps")
    if not isinstance(steps, list) or not steps:
        return None
    calls = []
    for step in steps:
        if not (isinstance(step, (list, tuple)) and step and isinstance(step[0], (list, tuple)) and len(step[0]) >= 2):
            return None
        calls.append(_reference_call(step[0][0], step[0][1]))
    return calls


def train_rows(apis: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows from train_data.json: every instance with at least one well-formed tool call, in
    upstream order. The request is `input` without its trailing `\\nHint: …` (as upstream's own
    build_dataset.py does)."""
    rows: list[dict[str, Any]] = []
    for api in apis:
        for instance in api.get("Instances") or []:
            calls = _instance_calls(instance)
            if calls is None or not str(instance.get("input", "")).strip():
                continue
            question = str(instance["input"]).rsplit("\nHint: ", 1)[0]
            rows.append(
                _row(
                    format_prompt(api, question),
                    str(api.get("Name", "")),
                    question,
                    json.dumps(calls),
                    split="train",
                    index=len(rows),
                )
            )
    return rows


def is_test_request(golden: Any) -> bool:
    """Whether a simulated request is one of the paper's 68: a golden answer with at least one
    call and no `$` in any golden input (no `${…}` placeholder)."""
    calls = [c for c in (golden or []) if isinstance(c, Mapping) and "Action" in c and "Action_Input" in c]
    return bool(calls) and len(calls) == len(golden) and not any("$" in str(c["Action_Input"]) for c in calls)


def test_rows(apis: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows from eval_simulated.json: the (instruction, golden answer) pairs that pass
    `is_test_request`, in upstream order (68 on the real file)."""
    rows: list[dict[str, Any]] = []
    for api in apis:
        for question, golden in zip(api.get("Instructions") or [], api.get("Golden_Answers") or []):
            if is_test_request(golden) and str(question).strip():
                calls = [{"Action": c["Action"], "Action_Input": c["Action_Input"]} for c in golden]
                rows.append(
                    _row(
                        format_prompt(api, question),
                        str(api.get("Name", "")),
                        str(question),
                        json.dumps(calls),
                        split="test",
                        index=len(rows),
                    )
                )
    return rows


def is_fork_record(record: Any) -> bool:
    """Whether a record is one of the SDPO fork's prepared tooluse rows."""
    return (
        isinstance(record, Mapping) and record.get("dataset") == DATA_SOURCE and isinstance(record.get("prompt"), str)
    )


def from_fork_record(record: Mapping[str, Any], *, split: str, index: int) -> dict[str, Any]:
    """Our row from one line of the fork's `datasets/tooluse/{train,test}.json`: the same prompt
    and ground truth the fork ships (its prompt is `format_prompt`'s, its answer the JSON list)."""
    prompt = str(record["prompt"])
    name_at = prompt.find("\nName: ")
    api = prompt[name_at + 7 : prompt.find("\n", name_at + 7)] if name_at >= 0 else ""
    question = prompt.rsplit("\nQuestion: ", 1)[-1]
    ground_truth = str(record["answer"])
    parse_reference(ground_truth, {"split": split, "index": index})
    return _row(prompt, api, question, ground_truth, split=split, index=index)


# ----------------------------------------------------------------------------- reference answer


def _where(extra_info: Optional[Mapping[str, Any]]) -> str:
    info = extra_info if isinstance(extra_info, Mapping) else {}
    if info.get("index") is None:
        return "a row without extra_info.index"
    return f"row {info.get('split')}[{info.get('index')}]"


def parse_reference(ground_truth: Any, extra_info: Optional[Mapping[str, Any]] = None) -> list[tuple[str, Any]]:
    """The reference calls [(action, input)]: ground_truth is a JSON list (or a list) of
    {"Action": str, "Action_Input": JSON string or object}. An input string that is not JSON is
    kept as its raw string. Anything else raises ValueError naming the row and the value."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"ToolAlpaca {_where(extra_info)}: reward_model.ground_truth {why}: {shorten(repr(ground_truth), 160)}"
        )

    calls = ground_truth
    if type(ground_truth).__name__ == "ndarray":  # a list written to parquet and read back
        raise RowProblem(
            f"ToolAlpaca {_where(extra_info)}: reward_model.ground_truth is an array (a list of calls written to "
            "parquet and read back): store it as a JSON string (json.dumps), as the prepared data does; parquet "
            "turns the calls into structs and their inputs into one shared set of keys",
            problem="`reward_model.ground_truth` is an array read back from parquet, not a JSON string of tool "
            "calls (store json.dumps(calls))",
        )
    if isinstance(ground_truth, str):
        try:
            calls = json.loads(ground_truth)
        except (ValueError, RecursionError) as exc:
            raise bad(f"is not JSON ({type(exc).__name__})") from None
    if not isinstance(calls, (list, tuple)) or not calls:
        raise bad('is not a non-empty list of {"Action", "Action_Input"} calls')
    out = []
    for call in calls:
        if not (isinstance(call, Mapping) and isinstance(call.get("Action"), str) and "Action_Input" in call):
            raise bad('has a call that is not {"Action": str, "Action_Input": ...}')
        raw = call["Action_Input"]
        if not isinstance(raw, (str, Mapping)):
            raise bad("has an Action_Input that is neither a JSON string nor an object")
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            value = raw
        except RecursionError:
            value = None
        if value is None or depth_exceeds(value, MAX_JSON_DEPTH):
            raise bad(f"has an Action_Input nested deeper than {MAX_JSON_DEPTH} (or null)")
        if isinstance(raw, str) and value is not raw and not isinstance(value, Mapping):
            # JSON, but not an object: the reference's merge would raise on it (a list) or drop it.
            raise bad(f"has an Action_Input that is JSON but not an object ({type(value).__name__})")
        out.append((call["Action"], value))  # as written: the reference compares names unstripped
    return out


_ACTION_NAME = re.compile(r"Action:\s*(\w+)")
_ONE_WORD = re.compile(r"\w+")


def unreadable_actions(ground_truth: Any, extra_info: Optional[Mapping[str, Any]] = None) -> list[str]:
    """The gold action names the reference rule can never read from a response: it reads one word
    (`Action:\\s*(\\w+)`), so a name such as `[Optional]updateUserProfile` (1 of the 68 test rows)
    or one with surrounding spaces makes the row score 0 whatever the response. The lenient reader
    (`lenient=True`) reads whole lines and can match them."""
    return [name for name, _ in parse_reference(ground_truth, extra_info) if not _ONE_WORD.fullmatch(name)]


# The reference's `Action Input:\s*({.*?})` (DOTALL): `{`, then anything but `}`, then the first
# `}`; possessive, and searched only up to the last `}`, so every scan stops at the next `}`.
_INPUT_BLOCK = re.compile(r"Action Input:\s*+(\{[^}]*+\})")


def reference_calls(solution_str: str) -> tuple[list[str], dict[str, Any]]:
    """(action names, merged inputs) of a response, read as the reference reward reads it:

    - every `Action:` (case-sensitive, anywhere) followed by optional whitespace and a word
      (`\\w+`) is one action, in order;
    - every `Action Input:` followed by optional whitespace and `{` contributes the text from
      that `{` to the **first** `}` after it (the reference's non-greedy `{.*?}`: an input with a
      nested object does not parse); each such block is parsed **on its own** with `json.loads`
      and, when it parses, merged into one dict, later keys winning; the scan resumes after that
      `}`. A block holds one `}`, so only `[`s can nest it: it is merged however deep it nests,
      as the reference merges it (a policy cannot hide an argument by nesting it).

    Thinking is removed first. Linear time. A block too deep for the JSON parser itself (about
    1,000 levels: `RecursionError`, which would end a run of the reference) is not merged; the
    reward scores such a response 0 with `format_error` (`_score`).
    """
    return _reference_calls(strip_thinking(solution_str))[:2]


def _reference_calls(text: str, max_inputs: Optional[int] = None) -> tuple[list[str], dict[str, Any], bool]:
    """reference_calls on text without thinking, plus whether a block was too deep to parse;
    `max_inputs` merges only the first that many."""
    return (_ACTION_NAME.findall(text), *_merged_inputs(_input_blocks(text, max_inputs)))


def _input_blocks(text: str, limit: Optional[int]) -> list[str]:
    """The `{…}` texts of the reference's `Action Input:` matches, the first `limit` of them."""
    found = _INPUT_BLOCK.finditer(text, 0, text.rfind("}") + 1)
    return [m.group(1) for m in (found if limit is None else itertools.islice(found, limit))]


def _merged_inputs(blocks: list[str]) -> tuple[dict[str, Any], bool]:
    """(the blocks that parse as JSON, each parsed alone and merged in order, later keys winning;
    whether a block was too deep for the parser). Parsing blocks jointly would let a string that
    spans `},{` join two blocks into one value the reference never sees."""
    merged: dict[str, Any] = {}
    too_deep = False
    for block in blocks:
        try:
            value = json.loads(block)
        except ValueError:  # the reference's JSONDecodeError: the block is skipped
            continue
        except RecursionError:
            too_deep = True
            continue
        merged.update(value)  # a block starts with `{` and ends with its only `}`: an object
    return merged, too_deep


def _shown_inputs(inputs: Mapping[str, Any]) -> str:
    """repr of merged inputs for `pred` and feedback, cut short; a value nested past
    MAX_JSON_DEPTH is named, not printed (repr recurses once per level)."""
    if depth_exceeds(inputs, MAX_JSON_DEPTH):
        return f"<an input nested deeper than {MAX_JSON_DEPTH} levels>"
    return shorten(repr(inputs))


def _reference_inputs(reference: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The merged reference inputs; an input that is not a JSON object counts as {} (as the
    reference's `json.loads` failure does)."""
    merged: dict[str, Any] = {}
    for _, value in reference:
        if isinstance(value, Mapping):
            merged.update(value)
    return merged


def _reference_format_ok(text: str) -> bool:
    """An `Action:` with a later line starting `Action Input:` (the reference's format check)."""
    first = text.find("Action:")
    return first >= 0 and text.find("\nAction Input:", first + len("Action:")) >= 0


# ----------------------------------------------------------------------------- lenient parsing

# Marker lines, tolerant of "ASSISTANT " prefixes (ToolAlpaca's chat format) and **bold**. Each
# starts with the newline before the line (the text is searched with a newline put in front):
# a literal first character lets the regex engine jump between lines instead of trying every
# position, which keeps a 1 MB response cheap.
_MARK = r"\n[ \t>*]*(?:ASSISTANT[ \t]+)?"
_ACTION_LINE = re.compile(_MARK + r"Action[ \t*]*:[ \t*]*([^\n]*)", flags=re.IGNORECASE)
_INPUT_LINE = re.compile(_MARK + r"Action[ \t]*Input[ \t*]*:[ \t*]*", flags=re.IGNORECASE)
_STOP_LINE = re.compile(
    _MARK + r"(?:Observation|Thought|Final[ \t]+Answer|Response|Question)[ \t*]*:", flags=re.IGNORECASE
)

MALFORMED = object()  # an Action Input that is missing, not valid JSON, or nested too deep
# A response whose number of calls already rules a match out is read only this far.
MAX_SHOWN_CALLS = 16
# The reference rule reads at most this many `Action Input:` objects; a response with more scores 0.
MAX_REFERENCE_INPUTS = 256


def _clean_name(raw: str) -> str:
    name = raw.strip().strip("*`'\" ").strip()
    if name.endswith(")"):  # `search()` and `search( )` name `search`
        inner = name[:-1].rstrip()
        if inner.endswith("("):
            name = inner[:-1].rstrip()
    return name


def _unfence(text: str) -> str:
    """Text without a surrounding ``` code fence (and its language tag)."""
    text = text.strip()
    if text.startswith("```"):
        text = text[3:]
        text = text[len(text) - len(text.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")) :]
    if text.endswith("```"):
        text = text[:-3]
    return text.strip()


def _parse_input(text: str) -> Any:
    """The JSON value at the start of an Action Input (code fences allowed), else MALFORMED
    (also for nesting deeper than MAX_JSON_DEPTH, which never raises RecursionError here)."""
    text = _unfence(text)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return MALFORMED
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return MALFORMED
    return MALFORMED if depth_exceeds(value, MAX_JSON_DEPTH) else value


def parse_calls(solution_str: str) -> list[tuple[str, Any]]:
    """The lenient reading: (action, arguments) pairs of a response, in order.

    Thinking is removed first. Each `Action:` line (any case, `ASSISTANT ` or markdown prefixes
    allowed) starts a call; its arguments are the JSON value after the next `Action Input:`
    line that comes before the following `Action:` line, up to a stop line (`Observation:`,
    `Thought:`, …); a missing, unparsable or too deeply nested input gives `MALFORMED`.
    """
    return _parse_calls("\n" + strip_thinking(solution_str))[0]


def _parse_calls(text: str, expected: Optional[int] = None) -> tuple[list[tuple[str, Any]], int]:
    """parse_calls on newline-prefixed text without thinking. With `expected`, a response with
    another number of calls cannot match: only its first MAX_SHOWN_CALLS calls are read (for the
    prediction and the feedback). Returns (calls, number of calls in the response)."""
    actions = list(_ACTION_LINE.finditer(text))
    n_calls = len(actions)
    shown = actions[:MAX_SHOWN_CALLS] if expected is not None and n_calls != expected else actions
    calls = []
    for k, action in enumerate(shown):
        end = actions[k + 1].start() if k + 1 < n_calls else len(text)
        marker = _INPUT_LINE.search(text, action.end(), end)
        if marker is None:
            calls.append((_clean_name(action.group(1)), MALFORMED))
            continue
        stop = _STOP_LINE.search(text, marker.end(), end)
        calls.append((_clean_name(action.group(1)), _parse_input(text[marker.end() : stop.start() if stop else end])))
    return calls, n_calls


# ----------------------------------------------------------------------------- lenient matching


def _is_unset(value: Any) -> bool:
    return value is None or value == {} or value == [] or (isinstance(value, str) and not value.strip())


def normalize(value: Any) -> Any:
    """A hashable canonical form of a JSON value, for semantic comparison of arguments.

    - objects: key order is irrelevant, and keys whose value is null, "", [] or {} are dropped
      (an optional parameter left empty is the same call as one left out);
    - numbers compare by value (1 == 1.0 == "1"); booleans only equal booleans ("true" == true);
    - strings compare case-insensitively with whitespace collapsed;
    - arrays keep their order.

    A value nested deeper than MAX_JSON_DEPTH raises ValueError (never RecursionError).
    """
    if depth_exceeds(value, MAX_JSON_DEPTH):
        raise ValueError(f"value nested deeper than {MAX_JSON_DEPTH}")
    return _normalize(value)


def _normalize(value: Any) -> Any:
    if isinstance(value, Mapping):
        return ("obj", tuple(sorted((str(k).strip(), _normalize(v)) for k, v in value.items() if not _is_unset(v))))
    if isinstance(value, (list, tuple)):
        return ("arr", tuple(_normalize(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    if value is None:
        return ("null",)
    text = " ".join(str(value).split()).casefold()
    if text in ("true", "false"):
        return ("bool", text == "true")
    try:
        return ("num", float(text))
    except ValueError:
        return ("str", text)


def _key(call: tuple[str, Any]) -> tuple[str, Any]:
    return call[0], _normalize(call[1])


def calls_match(
    predicted: Sequence[tuple[str, Any]], reference: Sequence[tuple[str, Any]], *, ordered: bool = False
) -> bool:
    """Whether the predicted calls are the reference calls: the same number, the same action
    names (exact), arguments equal after `normalize`. By default the calls are compared as a
    multiset (independent calls such as three searches may come in any order); `ordered=True`
    also requires the reference order."""
    if len(predicted) != len(reference) or any(args is MALFORMED for _, args in predicted):
        return False
    if ordered:
        return all(_key(p) == _key(r) for p, r in zip(predicted, reference))
    return Counter(map(_key, predicted)) == Counter(map(_key, reference))


def canonical(calls: Sequence[tuple[str, Any]]) -> str:
    """`name({"k": v})` per call, '; '-joined: the lenient `pred` (drives verl's majority vote)."""
    parts = []
    for name, args in calls:
        shown = "<malformed>" if args is MALFORMED else json.dumps(args, sort_keys=True, ensure_ascii=False)
        parts.append(f"{name}({shown})")
    return "; ".join(parts)


def _lenient_feedback(predicted: list[tuple[str, Any]], reference: list[tuple[str, Any]], n_calls: int) -> str:
    """What went wrong, without revealing the reference call (`n_calls`: all calls, of which
    `predicted` may hold only the first)."""
    if not predicted:
        return (
            "No tool call found. Write 'Action: <tool name>' on one line and "
            "'Action Input: <JSON object of arguments>' on the next."
        )
    malformed = [name for name, args in predicted if args is MALFORMED]
    if malformed:
        return f"The Action Input of your call to {shorten(malformed[0], 100)} is missing or not valid JSON."
    if n_calls != len(reference):
        return f"You made {n_calls} tool call(s), but this request needs a different number of calls."
    known = {name for name, _ in reference}
    wrong_tools = [name for name, _ in predicted if name not in known]
    if wrong_tools:
        return f"{shorten(wrong_tools[0], 100)} is not the right tool for this request."
    missing = Counter(map(_key, predicted)) - Counter(map(_key, reference))
    names = sorted({name for name, _ in missing.elements()}) or sorted({name for name, _ in predicted})
    return shorten(f"The arguments of your call to {', '.join(names)} do not match the request.")


# ----------------------------------------------------------------------------- reward


def _shown(actions: list[str]) -> str:
    """repr of the action names, cut short (a looping response can name thousands)."""
    return shorten(
        repr(actions[: 4 * MAX_SHOWN_CALLS])
        + (f" and {len(actions) - 4 * MAX_SHOWN_CALLS} more" if len(actions) > 4 * MAX_SHOWN_CALLS else "")
    )


def _score(solution: str, reference: list[tuple[str, Any]], lenient: bool, ordered: bool) -> dict[str, Any]:
    text = strip_thinking(solution)
    predicted, n_calls = _parse_calls("\n" + text, expected=len(reference))
    stripped = [(name.strip(), args) for name, args in reference]  # the lenient reader strips names too
    loose = 1.0 if n_calls == len(reference) and calls_match(predicted, stripped, ordered=ordered) else 0.0
    if lenient:
        return reward_result(
            score=loose,
            pred=canonical(predicted)
            + (f"; … {n_calls - len(predicted)} more calls" if n_calls > len(predicted) else ""),
            format_error=not predicted or any(args is MALFORMED for _, args in predicted),
            feedback="" if loose else _lenient_feedback(predicted, stripped, n_calls),
            score_lenient=loose,
        )
    gold_actions, gold_inputs = [name for name, _ in reference], _reference_inputs(reference)
    actions = _ACTION_NAME.findall(text)
    actions_ok = Counter(actions) == Counter(gold_actions)
    # Wrong actions score 0 whatever the inputs: then the inputs are read only for the feedback.
    # Right actions: every input counts, up to MAX_REFERENCE_INPUTS (a response with more is
    # degenerate; reading each costs a JSON parse, so it scores 0 unread).
    blocks = _input_blocks(text, (MAX_REFERENCE_INPUTS if actions_ok else 4 * MAX_SHOWN_CALLS) + 1)
    too_many = actions_ok and len(blocks) > MAX_REFERENCE_INPUTS
    inputs, too_deep = _merged_inputs(blocks[:MAX_REFERENCE_INPUTS] if actions_ok else blocks[: 4 * MAX_SHOWN_CALLS])
    inputs_ok = inputs == gold_inputs and not too_many and not too_deep
    feedback = []
    if not actions_ok:
        feedback.append(f"Actions mismatch: predicted {_shown(actions)}, expected {gold_actions}")
    if too_many:
        feedback.append(f"More than {MAX_REFERENCE_INPUTS} Action Inputs; expected {gold_inputs}")
    elif too_deep:
        feedback.append(f"An Action Input is nested too deeply to read; expected {gold_inputs}")
    elif not inputs_ok:
        feedback.append(f"Action inputs mismatch: predicted {_shown_inputs(inputs)}, expected {gold_inputs}")
    return reward_result(
        score=1.0 if actions_ok and inputs_ok else 0.0,
        pred=f"Actions: {_shown(actions)}, Inputs: {_shown_inputs(inputs)}",
        format_error=too_deep or not _reference_format_ok(text),
        feedback="; ".join(feedback),
        score_lenient=loose,
    )


def compute_score(
    data_source: str,
    solution_str: Any,
    ground_truth: Any,
    extra_info: Optional[Mapping[str, Any]] = None,
    *,
    lenient: bool = False,
    ordered: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward for ToolAlpaca; never raises on a response.

    Default (the reference rule): `score` 1.0 when the action names (as a multiset) and the
    merged input dict equal the reference's (`reference_calls`), `pred` the parsed actions and
    inputs, `format_error` without an `Action:` followed by an `Action Input:` line, `feedback`
    naming the predicted and the expected actions/inputs (as the reference; '' when correct).
    `lenient=True` (`+reward.custom_reward_function.reward_kwargs.lenient=true`) scores with
    `calls_match` instead (`ordered=True`: call order counts) with feedback that does not reveal
    the reference. `score_lenient` is the lenient verdict either way. A malformed ground truth
    raises ValueError naming the row; a response whose scoring fails scores 0 with
    `reward_error` 1.
    """
    reference = parse_reference(ground_truth, extra_info)
    try:
        return _score(as_text(solution_str), reference, bool(lenient), bool(ordered))
    except Exception as exc:  # noqa: BLE001 - one bad response must not end the run
        return failed_result(exc)

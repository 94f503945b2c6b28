"""ToolAlpaca tool use: data rows and reward.

Upstream: the GitHub repository ``tangqiaoyu/ToolAlpaca``, folder ``data/``:

- ``train_data.json``: a list of APIs. Each API has ``Name``, ``Description``,
  ``NLDocumentation`` (the tools in natural language) and ``Instances``, each instance with
  ``input`` (the user request, sometimes followed by ``\\nHint: …``) and ``intermediate_steps``,
  a list of ``[[action, action_input, agent_text], observation]``.
- ``eval_simulated.json``: the 10 simulated test APIs, with ``Instructions`` (the requests) and
  ``Golden_Answers`` (per request, a list of ``{"Action": name, "Action_Input": "<json>"}``).

The paper's split (SRPO_SPEC.md §3): 4046 training requests (every training instance with at
least one tool call) and 68 test requests (the simulated evaluation set), as in the public SDPO
data. The task is single-turn: given the tool documentation and the request, emit the tool
call(s) in ToolAlpaca's ``Action: …`` / ``Action Input: {json}`` format; a response is correct
when its calls match the reference calls (see `calls_match`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterable, Mapping, Optional, Sequence

from srpo_verl.tasks.common import chat_prompt, reward_result, strip_thinking

GITHUB_REPO = "tangqiaoyu/ToolAlpaca"
RAW_BASE = "https://raw.githubusercontent.com/tangqiaoyu/ToolAlpaca/main/data"
TRAIN_FILE = "train_data.json"
TEST_FILE = "eval_simulated.json"

DATA_SOURCE = "toolalpaca"
PAPER_SPLITS = (4046, 68)

PROMPT_TEMPLATE = (
    "Answer the user's request by calling the available tools.\n"
    "You have access to the following tools:\n"
    "Name: {name}\n"
    "Description: {description}\n"
    "Documentation:\n"
    "{documentation}\n"
    "\n"
    "Use the following format:\n"
    "Thought: think about what to do\n"
    "Action: the tool to call, exactly one of the tool names above\n"
    "Action Input: the arguments of the call as a JSON object; use only values the user gave\n"
    "If the request needs several calls, write one Action / Action Input pair per call.\n"
    "\n"
    "Begin!\n"
    "Question: {question}"
)


# ----------------------------------------------------------------------------- data rows


def format_prompt(api: Mapping[str, Any], question: str) -> str:
    """The user turn for one request on one API."""
    documentation = api.get("NLDocumentation") or api.get("Functions") or ""
    return PROMPT_TEMPLATE.format(
        name=str(api.get("Name", "")).strip(),
        description=str(api.get("Description", "")).strip(),
        documentation=str(documentation).strip(),
        question=str(question).strip(),
    )


def _row(api: Mapping[str, Any], question: str, calls: list[dict[str, str]], *, split: str, index: int) -> dict[str, Any]:
    return {
        "data_source": DATA_SOURCE,
        "prompt": chat_prompt(format_prompt(api, question)),
        "ability": "tool_use",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(calls, ensure_ascii=False)},
        "extra_info": {
            "split": split,
            "index": index,
            "api": str(api.get("Name", "")),
            "question": str(question).strip(),
            "num_calls": len(calls),
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
        action, action_input = step[0][0], step[0][1]
        calls.append(_reference_call(action, action_input))
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
            rows.append(_row(api, question, calls, split="train", index=len(rows)))
    return rows


def test_rows(apis: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows from eval_simulated.json: every (instruction, golden answer) pair whose golden answer
    has at least one call, in upstream order."""
    rows: list[dict[str, Any]] = []
    for api in apis:
        for question, golden in zip(api.get("Instructions") or [], api.get("Golden_Answers") or []):
            calls = [
                _reference_call(c["Action"], c["Action_Input"])
                for c in (golden or [])
                if isinstance(c, Mapping) and "Action" in c and "Action_Input" in c
            ]
            if calls and str(question).strip():
                rows.append(_row(api, question, calls, split="test", index=len(rows)))
    return rows


# ----------------------------------------------------------------------------- parsing calls

# Marker lines, tolerant of "ASSISTANT " prefixes (ToolAlpaca's chat format) and **bold**.
_MARK = r"^[ \t>*]*(?:ASSISTANT[ \t]+)?"
_ACTION_LINE = re.compile(_MARK + r"Action[ \t*]*:[ \t*]*(.*)$", flags=re.MULTILINE | re.IGNORECASE)
_INPUT_LINE = re.compile(_MARK + r"Action[ \t]*Input[ \t*]*:[ \t*]*", flags=re.MULTILINE | re.IGNORECASE)
_STOP_LINE = re.compile(
    _MARK + r"(?:Observation|Thought|Final[ \t]+Answer|Response|Question)[ \t*]*:", flags=re.MULTILINE | re.IGNORECASE
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```\s*$")

MALFORMED = object()  # an Action Input that is missing or not valid JSON


def _clean_name(raw: str) -> str:
    name = raw.strip().strip("*`'\" ").strip()
    return re.sub(r"\s*\(\s*\)\s*$", "", name)


def _parse_input(text: str) -> Any:
    """The JSON value at the start of an Action Input (code fences allowed), else MALFORMED."""
    text = _FENCE.sub("", text.strip()).strip()
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return MALFORMED
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return MALFORMED
    return value


def parse_calls(solution_str: str) -> list[tuple[str, Any]]:
    """The (action, arguments) pairs of a response, in order.

    Thinking (`<think>…</think>`) is removed first. Each `Action:` line starts a call; its
    arguments are the JSON value after the next `Action Input:` that comes before the following
    `Action:` line (a missing or unparsable input gives `MALFORMED`).
    """
    text = strip_thinking(solution_str or "")
    actions = list(_ACTION_LINE.finditer(text))
    calls = []
    for k, action in enumerate(actions):
        end = actions[k + 1].start() if k + 1 < len(actions) else len(text)
        block = text[action.end():end]
        marker = _INPUT_LINE.search(block)
        if marker is None:
            calls.append((_clean_name(action.group(1)), MALFORMED))
            continue
        body = block[marker.end():]
        stop = _STOP_LINE.search(body)
        calls.append((_clean_name(action.group(1)), _parse_input(body[: stop.start()] if stop else body)))
    return calls


def parse_reference(ground_truth: Any) -> list[tuple[str, Any]]:
    """The reference calls: a JSON list of {"Action", "Action_Input"} (inputs are JSON strings;
    an input that is not JSON is kept as its raw string)."""
    calls = json.loads(ground_truth) if isinstance(ground_truth, str) else list(ground_truth)
    out = []
    for call in calls:
        raw = call["Action_Input"]
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            value = raw
        out.append((str(call["Action"]).strip(), value))
    return out


# ----------------------------------------------------------------------------- matching


def _is_unset(value: Any) -> bool:
    return value is None or value == {} or value == [] or (isinstance(value, str) and not value.strip())


def normalize(value: Any) -> Any:
    """A hashable canonical form of a JSON value, for semantic comparison of arguments.

    - objects: key order is irrelevant, and keys whose value is null, "", [] or {} are dropped
      (an optional parameter left empty is the same call as one left out);
    - numbers compare by value (1 == 1.0 == "1"); booleans only equal booleans ("true" == true);
    - strings compare case-insensitively with whitespace collapsed;
    - arrays keep their order.
    """
    if isinstance(value, Mapping):
        return ("obj", tuple(sorted((str(k).strip(), normalize(v)) for k, v in value.items() if not _is_unset(v))))
    if isinstance(value, (list, tuple)):
        return ("arr", tuple(normalize(v) for v in value))
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
    return call[0], normalize(call[1])


def calls_match(predicted: Sequence[tuple[str, Any]], reference: Sequence[tuple[str, Any]], *, ordered: bool = False) -> bool:
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
    """`name({"k": v})` per call, '; '-joined: the `pred` field (drives verl's majority vote)."""
    parts = []
    for name, args in calls:
        shown = "<malformed>" if args is MALFORMED else json.dumps(args, sort_keys=True, ensure_ascii=False)
        parts.append(f"{name}({shown})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- reward


def _feedback(predicted: list[tuple[str, Any]], reference: list[tuple[str, Any]]) -> str:
    """What went wrong, without revealing the reference call."""
    if not predicted:
        return (
            "No tool call found. Write 'Action: <tool name>' on one line and "
            "'Action Input: <JSON object of arguments>' on the next."
        )
    malformed = [name for name, args in predicted if args is MALFORMED]
    if malformed:
        return f"The Action Input of your call to {malformed[0]} is missing or not valid JSON."
    if len(predicted) != len(reference):
        return f"You made {len(predicted)} tool call(s), but this request needs a different number of calls."
    known = {name for name, _ in reference}
    wrong_tools = [name for name, _ in predicted if name not in known]
    if wrong_tools:
        return f"{wrong_tools[0]} is not the right tool for this request."
    missing = Counter(map(_key, predicted)) - Counter(map(_key, reference))
    names = sorted({name for name, _ in missing.elements()}) or sorted({name for name, _ in predicted})
    return f"The arguments of your call to {', '.join(names)} do not match the request."


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Optional[Mapping[str, Any]] = None,
    *,
    ordered: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward for ToolAlpaca.

    Returns `score` (1.0 when `calls_match`, else 0.0), `acc`, `pred` (`canonical` form of the
    parsed calls, '' if none), `format_error` (no call, or an input that is not JSON) and
    `feedback` ('' when correct). `ordered=True` (via `reward.custom_reward_function.reward_kwargs`)
    makes the call order count.
    """
    predicted = parse_calls(solution_str)
    reference = parse_reference(ground_truth)
    correct = calls_match(predicted, reference, ordered=ordered)
    format_error = not predicted or any(args is MALFORMED for _, args in predicted)
    return reward_result(
        score=1.0 if correct else 0.0,
        pred=canonical(predicted),
        format_error=format_error,
        feedback="" if correct else _feedback(predicted, reference),
    )

"""SciKnowEval L3 multiple choice (Chemistry, Physics, Biology, Materials): data rows and reward.

Upstream: the Hugging Face dataset ``hicai-zju/SciKnowEval`` (split ``test``; one JSON record per
question with ``question``, ``choices {text, label}``, ``answerKey``, ``type``, ``domain`` and
``details {level, task, subtask}``). The SRPO paper trains on the L3 multiple-choice questions of
each domain, split 90/10 with a fixed seed (docs/spec.md §3):

    Chemistry 1890/210, Physics 720/80, Biology 450/50, Materials 841/94.

Rows, prompt and reward follow the public SDPO code the paper builds on (github.com/lasgroup/SDPO,
``data/format/sciknoweval.py`` and ``verl/utils/reward_score/feedback/mcq.py``):

- ``data_source`` is ``sciknoweval`` for every domain (validation logs
  ``val-core/sciknoweval/acc/mean@16``, the name of published SDPO runs);
- the system prompt below, and the user turn ``{question}\\n\\n{A: option lines}\\nPlease reason
  step by step.``;
- reward (default): 1 when the text inside the last ``<answer>…</answer>`` is the gold letter
  (`reference_answer`), feedback empty. The lenient extractor (`extract_choice`: cue phrases,
  ``\\boxed{}``, restated option text, …) is an option (``lenient=True``) and is always logged as
  ``score_lenient``.

The SDPO fork also ships the prepared splits (``datasets/sciknoweval/<domain>/{train,test}.json``,
JSON lines with ``idx``, ``prompt``, ``system``, ``answer``, ``description``); `from_fork_record`
reads them into the same rows.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from srpo_verl.tasks.common import (
    as_text,
    ascii_lower,
    chat_prompt,
    RowProblem,
    failed_result,
    reward_result,
    shorten,
    split_indices,
    strip_thinking,
)

HF_DATASET = "hicai-zju/SciKnowEval"
HF_SPLIT = "test"

# Paper domain name -> the values of the upstream `domain` field (lower-cased). The SDPO fork
# names the materials folder `material`.
DOMAINS: dict[str, tuple[str, ...]] = {
    "chemistry": ("chemistry",),
    "physics": ("physics",),
    "biology": ("biology",),
    "materials": ("material", "materials"),
}

# (train, test) sizes of docs/spec.md §3.
PAPER_SPLITS: dict[str, tuple[int, int]] = {
    "chemistry": (1890, 210),
    "physics": (720, 80),
    "biology": (450, 50),
    "materials": (841, 94),
}

LEVEL = "L3"
MCQ_TYPES = ("mcq-4-choices", "mcq-2-choices")
TEST_FRACTION = 0.1
SEED = 42

# The SDPO fork's system prompt, verbatim (leading and trailing newline included).
SYSTEM_PROMPT = """
Given a question and four options, please select the right answer. Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>

For the answer, only output the letter corresponding to the correct option (A, B, C, or D), and nothing else. Do not restate the answer text. For example, if the answer is "A", just output:
<answer>
A
</answer>
"""
USER_TEMPLATE = "{question}\n\n{options}\nPlease reason step by step."
# The fork's `description` field: the question and this suffix.
_FORK_DESCRIPTION_SUFFIX = " The solution will be evaluated in a mcq environment."

DATA_SOURCE = "sciknoweval"
ABILITY = "mcq"
DEFAULT_LABELS = tuple("ABCDEFGHIJ")


# ----------------------------------------------------------------------------- data rows


def _level(record: Mapping[str, Any]) -> str:
    details = record.get("details") or {}
    return str(details.get("level", record.get("level", ""))).strip()


def is_selected(
    record: Mapping[str, Any], domain: str, *, level: str = LEVEL, types: Sequence[str] = MCQ_TYPES
) -> bool:
    """Whether an upstream record belongs to the paper's task: the domain, level L3, a
    multiple-choice type (the SDPO fork's filter)."""
    if str(record.get("domain", "")).strip().lower() not in DOMAINS[domain]:
        return False
    return _level(record) == level and record.get("type") in types


def format_options(labels: Sequence[str], texts: Sequence[str]) -> str:
    """One `A: option` line per choice."""
    return "\n".join(f"{label}: {text}" for label, text in zip(labels, texts))


def gold_in_labels(record: Mapping[str, Any]) -> bool:
    """Whether a record can become a row: its answer key is one of its labels and every label has
    an option text (one per label). With more labels than texts the option lines would stop early,
    and the prompt could miss the gold option while the reward still expects it."""
    choices = record.get("choices") or {}
    labels, texts = list(choices.get("label") or []), list(choices.get("text") or [])
    return len(labels) == len(texts) and str(record.get("answerKey")) in [str(x) for x in labels]


def to_row(record: Mapping[str, Any], *, domain: str, split: str, index: int) -> dict[str, Any]:
    """One verl RL row: the columns of the SDPO fork's `data/preprocess.py` (data_source, prompt,
    ability, reward_model), with extra_info holding what the reward and the data check read."""
    labels = [str(x) for x in record["choices"]["label"]]
    texts = [str(x) for x in record["choices"]["text"]]
    if len(labels) != len(texts):  # zip would drop options silently (gold_in_labels filters these)
        raise ValueError(f"SciKnowEval record {index}: {len(labels)} labels but {len(texts)} option texts")
    question = str(record["question"])
    user = USER_TEMPLATE.format(question=question, options=format_options(labels, texts))
    return {
        "data_source": DATA_SOURCE,
        "prompt": chat_prompt(user, system=SYSTEM_PROMPT),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": str(record["answerKey"])},
        "extra_info": {
            "split": split,
            "index": int(index),
            "domain": domain,
            "question": question,
            "labels": labels,
            "choices": texts,
        },
    }


def build_splits(
    records: Iterable[Mapping[str, Any]],
    domain: str,
    *,
    seed: int = SEED,
    test_fraction: float = TEST_FRACTION,
    level: str = LEVEL,
    types: Sequence[str] = MCQ_TYPES,
) -> dict[str, list[dict[str, Any]]]:
    """{'train': rows, 'test': rows} for one domain.

    Records are filtered in upstream order (`is_selected`), then split with `split_indices` (the
    algorithm of `datasets.Dataset.train_test_split(test_size=0.1, seed=42)`, as the fork's
    `data/split_tasks.py`); `extra_info.index` is the record's position in the filtered list (the
    fork's `idx`). Records whose answer key is not one of their labels are dropped after the
    split, so every other row lands where the fork puts it.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown SciKnowEval domain {domain!r}; valid: {', '.join(DOMAINS)}")
    selected = [r for r in records if is_selected(r, domain, level=level, types=types)]
    if not selected:
        raise ValueError(f"no {level} multiple-choice records for domain {domain!r} in the input")
    return split_selected(selected, domain, seed=seed, test_fraction=test_fraction)


def split_selected(
    selected: Sequence[Mapping[str, Any]], domain: str, *, seed: int = SEED, test_fraction: float = TEST_FRACTION
) -> dict[str, list[dict[str, Any]]]:
    """build_splits after the filter: the split of the already selected records of one domain."""
    train_idx, test_idx = split_indices(len(selected), test_fraction=test_fraction, seed=seed)
    return {
        split: [to_row(selected[i], domain=domain, split=split, index=i) for i in idx if gold_in_labels(selected[i])]
        for split, idx in (("train", train_idx), ("test", test_idx))
    }


def _parse_options(block: str) -> Optional[tuple[list[str], list[str]]]:
    """(labels, texts) of an `A: …\\nB: …` block, labels consecutive from A; None if not one."""
    if not block.startswith("A: "):
        return None
    labels, texts, start = ["A"], [], 3
    for label in DEFAULT_LABELS[1:]:
        cut = block.find(f"\n{label}: ", start)
        if cut < 0:
            break
        texts.append(block[start:cut])
        labels.append(label)
        start = cut + len(label) + 3
    texts.append(block[start:])
    return labels, texts


def is_fork_record(record: Mapping[str, Any]) -> bool:
    """Whether a record is one of the SDPO fork's prepared rows (not an upstream record)."""
    return record.get("dataset") == DATA_SOURCE and isinstance(record.get("prompt"), str) and "answer" in record


def from_fork_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream-shaped record ({question, choices, answerKey, idx}) from one of the fork's
    prepared rows, whose prompt is `question + "\\n\\n" + options + "\\nPlease reason step by
    step."`; raises ValueError when the prompt does not have that shape."""
    prompt, tail = str(record["prompt"]), "\nPlease reason step by step."
    description = str(record.get("description") or "")
    if description.endswith(_FORK_DESCRIPTION_SUFFIX):
        question = description[: -len(_FORK_DESCRIPTION_SUFFIX)]
    else:  # the last blank line before an `A: ` line starts the options
        question = prompt[: max(prompt.rfind("\n\nA: "), 0)]
    options = None
    if prompt.startswith(question + "\n\n") and prompt.endswith(tail):
        options = _parse_options(prompt[len(question) + 2 : len(prompt) - len(tail)])
    if options is None:
        raise ValueError(f"SDPO fork record idx={record.get('idx')!r}: prompt is not `question, options, instruction`")
    labels, texts = options
    return {
        "question": question,
        "choices": {"label": labels, "text": texts},
        "answerKey": str(record["answer"]),
        "idx": int(record["idx"]),
    }


def fork_domain(path: str) -> Optional[str]:
    """The domain of a fork file from its path: `…/<domain>/{train,test}.json` (a prepared
    split) or `…/<domain>.json` (the whole domain); None when the name is not a domain."""
    parts = str(path).replace("\\", "/").split("/")
    stem = parts[-1].rsplit(".", 1)[0]
    folder = parts[-2] if stem in ("train", "test") and len(parts) > 1 else stem
    return next((d for d, names in DOMAINS.items() if folder.lower() in names or folder.lower() == d), None)


def fork_rows(
    records: Sequence[Mapping[str, Any]],
    domain: str,
    split: Optional[str] = None,
    *,
    seed: int = SEED,
    test_fraction: float = TEST_FRACTION,
) -> dict[str, list[dict[str, Any]]]:
    """Rows from the fork's files of one domain. With `split` ('train'/'test': one of the fork's
    prepared splits) the rows keep the fork's order and `idx`; without (the fork's whole-domain
    file, in `idx` order) they are split here exactly as `build_splits` splits upstream records.
    Either way the rows equal the ones `build_splits` makes from the upstream dataset."""
    converted = [from_fork_record(r) for r in records]
    if split is None:
        return split_selected(sorted(converted, key=lambda r: r["idx"]), domain, seed=seed, test_fraction=test_fraction)
    return {split: [to_row(r, domain=domain, split=split, index=r["idx"]) for r in converted if gold_in_labels(r)]}


# ----------------------------------------------------------------------------- reference answer


def reference_answer(solution_str: str) -> str:
    """The answer as the reference reward reads it: the text after the last `<answer>` up to the
    next `</answer>` (or the end), stripped; with no `<answer>` at all, the text before the first
    `</answer>` (so a bare `B` reads as B, as in the reference). Thinking is removed first.
    Tags are case-sensitive, as in the reference. Linear time (str.rfind/find)."""
    return _reference_answer(strip_thinking(solution_str))


def _reference_answer(text: str) -> str:
    opened = text.rfind("<answer>")
    content = text[opened + len("<answer>") :] if opened >= 0 else text
    closed = content.find("</answer>")
    return (content[:closed] if closed >= 0 else content).strip()


def _closed_answer_block(text: str) -> bool:
    opened = text.rfind("<answer>")
    return opened >= 0 and text.find("</answer>", opened) >= 0


# ----------------------------------------------------------------------------- lenient extraction

_BOXED = re.compile(r"\\boxed\{\s*(?:\\text\{)?([^{}]*?)\}?\s*\}")
_MARKUP = re.compile(r"[*_`$]|\\text|\\mathrm")
_SPACE_RUN = re.compile(r"\s+")
# "B", "(b)", "[C]", "D.", "a)", "**B**" (markup removed first): the whole string is one letter.
_WHOLE_LETTER = re.compile(r"\(?\[?\{?\s*([A-Za-z])\s*\}?\]?\)?\s*[.:)]?")
# "B. text", "B) text", "B: text", "(B) text": a letter that introduces the option text.
_LEADING_LETTER = re.compile(r"\(?([A-Za-z])\)?\s*[.:)\-]\s+\S|\(([A-Za-z])\)\s+\S")
# "answer is B", "Answer: (c).", "option D", "choice: b": a cue word, then the letter. Lower-case
# letters only count when bracketed or followed by punctuation/end, so "the answer is a molecule"
# does not read as A. Inside an answer tag any cue word counts; in free text (no tag) only
# "answer" and "correct option/choice", since reasoning often walks through "option A ..., option B".
_TAG_CUE = r"(?i:answer|option|choice)(?:\s+(?i:is))?\s*[:=]?\s*(?:(?i:option|choice)\s+)?"
_FREE_CUE = r"(?i:answer|correct\s+option|correct\s+choice)(?:\s+(?i:is))?\s*[:=]?\s*(?:(?i:option|choice)\s+)?"
_UPPER = r"\(?\[?([A-Z])\]?\)?(?![A-Za-z0-9])"
_LOWER = r"(?:\(([a-z])\)|\[([a-z])\]|([a-z])(?=\s*(?:$|[.,;!)\]\n])))"
_TAG_CUES = (re.compile(_TAG_CUE + _UPPER), re.compile(_TAG_CUE + _LOWER))
_FREE_CUES = (re.compile(_FREE_CUE + _UPPER), re.compile(_FREE_CUE + _LOWER))
_STANDALONE_UPPER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
# A letter the text rules out: "not A", "never (B)", "isn't C", "A is wrong", "option B is incorrect".
_NEGATED = re.compile(
    r"(?i:\bnot|\bnever|n't|\bno)\s(?:(?i:option|choice)\s)?\(?([A-Z])(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9])\(?([A-Z])\)?\s(?:(?i:is|was)\s)?"
    r"(?:(?i:wrong|incorrect|false)|(?i:not)\s(?i:correct|right|the\sanswer))\b"
)


def _squeeze(text: str) -> str:
    """Every whitespace run as one character (a newline if it held one). The cue patterns then
    meet at most one whitespace character per gap, which keeps their matching linear."""
    return _SPACE_RUN.sub(lambda m: "\n" if "\n" in m.group() else " ", text)


def _negated(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _NEGATED.finditer(text)}


def _last_cued_letter(text: str, regexes: Sequence[re.Pattern], labels: Sequence[str]) -> str:
    """The valid letter of the cue phrase that starts last in `text`, or ''; a letter the text
    rules out (`option A is wrong`) does not count."""
    found, ruled_out = [], _negated(text)
    for regex in regexes:
        for m in regex.finditer(text):
            letter = next(g for g in m.groups() if g).upper()
            if letter in labels and letter not in ruled_out:
                found.append((m.start(), letter))
    return max(found)[1] if found else ""


def _clean(text: str) -> str:
    text = _squeeze(text)
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    return _squeeze(_MARKUP.sub("", text)).strip()


def _norm_option(text: str) -> str:
    return " ".join(_MARKUP.sub("", str(text)).lower().split()).rstrip(".")


def parse_letter(content: str, labels: Sequence[str], choices: Optional[Sequence[str]] = None) -> str:
    """The option letter that `content` (an answer, or a line of text) names; '' if none or
    ambiguous. Upper-case result, always one of `labels`.

    Tried in order: the whole content is one letter form (`B`, `b`, `(B)`, `B.`, `**B**`,
    `\\boxed{B}`); a letter introducing option text (`B. 116.1`, `(B) text`); a cue phrase
    (`The answer is (B)`, `Answer: c.`; the last one counts); the exact text of one option
    (when `choices` is given); exactly one distinct stand-alone upper-case label that the text
    does not rule out (`not A`, `A is wrong`).
    """
    labels = [str(x).upper() for x in labels]
    text = _clean(content or "")
    if not text:
        return ""

    def ok(letter: Optional[str]) -> str:
        return letter.upper() if letter and letter.upper() in labels else ""

    whole = _WHOLE_LETTER.fullmatch(text)
    if whole:
        return ok(whole.group(1))
    ruled_out = _negated(text)
    lead = _LEADING_LETTER.match(text)
    if lead and ok(lead.group(1) or lead.group(2)) not in ("", *ruled_out):
        return ok(lead.group(1) or lead.group(2))
    cued = _last_cued_letter(text, _TAG_CUES, labels)
    if cued:
        return cued
    if choices:
        matches = {label for label, option in zip(labels, choices) if _norm_option(option) == _norm_option(text)}
        if len(matches) == 1:
            return matches.pop()
    standalone = {c for c in _STANDALONE_UPPER.findall(text) if c in labels} - ruled_out
    return standalone.pop() if len(standalone) == 1 else ""


# The lenient reader looks at most this many characters of an answer block or, without a tag,
# of the end of the response: an answer is short and comes last, and the bound keeps a runaway
# response as cheap as a normal one.
LENIENT_WINDOW = 4096


def _answer_tags(text: str) -> tuple[int, int, int]:
    """(end of the opener of the last complete `<answer>…</answer>` or -1, start of its closer
    or -1, end of the last `<answer>` or -1), tags case-insensitive in ASCII (`ascii_lower`: the
    same rule whatever else the response holds). Linear (rfind)."""
    low = ascii_lower(text)
    last_open = low.rfind("<answer>")
    last_open = last_open + len("<answer>") if last_open >= 0 else -1
    close = low.rfind("</answer>")
    opened = low.rfind("<answer>", 0, close) if close >= 0 else -1
    if opened < 0:
        return -1, -1, last_open
    return opened + len("<answer>"), close, last_open


def extract_choice(
    solution_str: str, labels: Sequence[str] = DEFAULT_LABELS, choices: Optional[Sequence[str]] = None
) -> tuple[str, bool]:
    """The lenient reading: (letter, format_error) of a model response. The rule, in order:

    1. Thinking is never parsed (`strip_thinking`).
    2. With a complete `<answer>…</answer>` block, the **last** one decides (a model that
       restates or corrects itself ends with its final answer); its content (its last
       LENIENT_WINDOW characters) is read with `parse_letter`. Tags are case-insensitive;
       whitespace and markup inside are ignored. If that block names no valid option the answer
       is '' (no fallback to earlier blocks).
    3. An `<answer>` that is never closed (truncated output): the text after the last one (its
       first LENIENT_WINDOW characters).
    4. No answer tag: in the last LENIENT_WINDOW characters, the last `\boxed{}` or cue phrase
       (`The answer is (B)`), else the last non-empty line if it is a bare letter form.

    `format_error` is False only when the last `<answer>` block holds a bare option letter
    (markup and whitespace aside). Linear time in the response length.
    """
    return _extract_choice(strip_thinking(solution_str), labels, choices)


def _extract_choice(text: str, labels: Sequence[str], choices: Optional[Sequence[str]]) -> tuple[str, bool]:
    labels = [str(x).upper() for x in labels]
    start, end, last_open = _answer_tags(text)
    if start >= 0:
        block = text[max(start, end - LENIENT_WINDOW) : end]
        letter = parse_letter(block, labels, choices)
        return letter, not (letter and _WHOLE_LETTER.fullmatch(_clean(block)))
    if last_open >= 0:
        return parse_letter(text[last_open : last_open + LENIENT_WINDOW], labels, choices), True
    text = _squeeze(text[-LENIENT_WINDOW:])
    boxed = _BOXED.findall(text)
    if boxed:
        letter = parse_letter(boxed[-1], labels, choices)
        if letter:
            return letter, True
    free = _squeeze(_MARKUP.sub("", text))  # markup removal can join whitespace runs
    cued = _last_cued_letter(free, _FREE_CUES, labels)
    if cued:
        return cued, True
    last_line = text.rstrip().rsplit("\n", 1)[-1]
    if last_line.strip():
        whole = _WHOLE_LETTER.fullmatch(_clean(last_line))
        if whole and whole.group(1).upper() in labels:
            return whole.group(1).upper(), True
    return "", True


# ----------------------------------------------------------------------------- reward


def _as_list(value: Any) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"is a {type(value).__name__}, not a list")
    return [str(x) for x in list(value)]


def _where(extra_info: Any) -> str:
    if not isinstance(extra_info, Mapping):
        return "a row without extra_info.index"
    split, index = extra_info.get("split"), extra_info.get("index")
    return f"row {split}[{index}]" if index is not None else "a row without extra_info.index"


def _checked_extra(extra_info: Any) -> Mapping[str, Any]:
    if extra_info is None:
        return {}
    if not isinstance(extra_info, Mapping):  # a JSON string left unparsed, say: its labels would be ignored
        raise RowProblem(
            f"SciKnowEval row: extra_info is a {type(extra_info).__name__}, not a mapping "
            f"({shorten(repr(extra_info), 80)})",
            problem="`extra_info` is not a mapping",
        )
    return extra_info


def labels_of(extra_info: Optional[Mapping[str, Any]]) -> list[str]:
    """The option labels of a row (`extra_info.labels`), A-J when the row has none.

    Labels must be distinct single upper-case letters A-Z: the lenient reader only ever names such
    a letter, so a row labelled `a`-`d` or `1`-`4` could never be credited by it (and its feedback
    would call the right answer wrong). Anything else raises ValueError naming the row."""
    extra_info = _checked_extra(extra_info)
    try:
        labels = _as_list(extra_info.get("labels"))
    except ValueError as err:
        raise RowProblem(
            f"SciKnowEval {_where(extra_info)}: extra_info.labels {err}", problem="`extra_info.labels` is not a list"
        ) from None
    labels = labels or list(DEFAULT_LABELS)
    odd = [x for x in labels if len(x) != 1 or x not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    if odd or len(set(labels)) != len(labels):
        raise RowProblem(
            f"SciKnowEval {_where(extra_info)}: extra_info.labels {labels} must be distinct upper-case letters "
            f"A-Z (the lenient reader names only those{'; not ' + repr(odd[:4]) if odd else ''})",
            problem="`extra_info.labels` are not distinct upper-case letters A-Z (the lenient reader names only those)",
        )
    return labels


def check_gold(ground_truth: Any, extra_info: Optional[Mapping[str, Any]]) -> str:
    """The gold letter of a row; ValueError naming the row when it is not one of the row's labels
    (`"(A)"`, `0`, `"E"` with A-D would make every response score 0), or when the labels or
    extra_info cannot be read (`labels_of`)."""
    labels = labels_of(extra_info)
    try:
        choices = _as_list((extra_info or {}).get("choices"))
    except ValueError:
        choices = []
    if choices is not None and len(choices) != len(labels):
        # The lenient reader pairs option texts with labels: a mismatch credits the wrong letter.
        raise RowProblem(
            f"SciKnowEval {_where(extra_info)}: extra_info.choices has {len(choices)} option texts for "
            f"{len(labels)} labels",
            problem="`extra_info.choices` is not one option text per label",
        )
    if not isinstance(ground_truth, str) or ground_truth.strip() not in labels:
        raise ValueError(
            f"SciKnowEval {_where(extra_info)}: reward_model.ground_truth {shorten(repr(ground_truth), 80)} "
            f"is not one of the option labels {', '.join(labels)}"
        )
    return ground_truth.strip()


def _lenient_feedback(solution: str, letter: str, format_error: bool, labels: Sequence[str]) -> str:
    if not solution.strip():
        return "Your response is empty. Reason step by step, then give the letter of one option as <answer>X</answer>."
    if not letter:
        return (
            "No answer was found: no <answer> tag naming one of the options "
            f"{', '.join(labels)}. End your response with <answer>X</answer>, where X is only the letter."
        )
    feedback = f"Your answer {letter} is incorrect."
    return feedback + (" Also give only the option letter inside <answer></answer> tags." if format_error else "")


def _score(solution: str, gold: str, extra_info: Mapping[str, Any], lenient: bool) -> dict[str, Any]:
    labels = labels_of(extra_info)
    text = strip_thinking(solution)
    answer = _reference_answer(text)
    strict = 1.0 if answer == gold else 0.0
    try:
        choices = _as_list(extra_info.get("choices"))
    except ValueError:  # option texts only help the lenient reader; the labels decide
        choices = None
    letter, lenient_error = _extract_choice(text, labels, choices)
    loose = 1.0 if letter == gold else 0.0
    if lenient:
        return reward_result(
            score=loose,
            pred=letter,
            format_error=lenient_error,
            feedback=_lenient_feedback(solution, letter, lenient_error, labels),
            score_lenient=loose,
        )
    format_error = not (answer in labels and _closed_answer_block(text))
    return reward_result(score=strict, pred=answer, format_error=format_error, feedback="", score_lenient=loose)


def compute_score(
    data_source: str,
    solution_str: Any,
    ground_truth: Any,
    extra_info: Optional[Mapping[str, Any]] = None,
    *,
    lenient: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward for SciKnowEval MCQ; never raises on a response.

    Default (the reference rule): `score` 1.0 when `reference_answer` equals `ground_truth`
    exactly, `pred` that text, `feedback` '' (the reference gives none), `format_error` unless the
    last `<answer>` block is closed and holds one label. `lenient=True`
    (`+reward.custom_reward_function.reward_kwargs.lenient=true`) scores with `extract_choice`
    instead and gives feedback such as "Your answer B is incorrect.". `score_lenient` is the
    lenient verdict either way. A gold answer that is not one of the row's labels raises
    ValueError naming the row; a response whose scoring fails scores 0 with `reward_error` 1.
    """
    gold = check_gold(ground_truth, extra_info)
    extra_info = extra_info or {}
    try:
        return _score(as_text(solution_str), gold, extra_info, bool(lenient))
    except Exception as exc:  # noqa: BLE001 - one bad response must not end the run
        return failed_result(exc)

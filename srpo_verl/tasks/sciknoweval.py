"""SciKnowEval L3 multiple choice (Chemistry, Physics, Biology, Materials): data rows and reward.

Upstream: the Hugging Face dataset ``hicai-zju/SciKnowEval`` (split ``test``; one JSON record per
question with ``question``, ``choices {text, label}``, ``answerKey``, ``type``, ``domain`` and
``details {level, task, subtask}``). The SRPO paper trains on the L3 multiple-choice questions of
each domain, split 90/10 with a fixed seed (SRPO_SPEC.md §3):

    Chemistry 1890/210, Physics 720/80, Biology 450/50, Materials 841/94.

Prompt (paper): a system prompt asking for ``<reasoning>…</reasoning><answer>X</answer>`` and the
user turn ``{question}\\nPlease reason step by step.``, where ``{question}`` is the question, a blank
line and one ``A: option`` line per choice (the layout of the public SDPO data code).

Reward: 1 when the extracted letter equals ``answerKey``, else 0 (see `extract_choice` for the
extraction rule and `compute_score` for the returned fields).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from srpo_verl.tasks.common import chat_prompt, reward_result, split_indices, strip_thinking

HF_DATASET = "hicai-zju/SciKnowEval"
HF_SPLIT = "test"

# Paper domain name -> the values of the upstream `domain` field (lower-cased).
DOMAINS: dict[str, tuple[str, ...]] = {
    "chemistry": ("chemistry",),
    "physics": ("physics",),
    "biology": ("biology",),
    "materials": ("material", "materials"),
}

# (train, test) sizes of SRPO_SPEC.md §3.
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

SYSTEM_PROMPT = (
    "You are given a multiple-choice question. Think it through, then give your answer in exactly "
    "this format:\n"
    "<reasoning>\n"
    "your step-by-step reasoning\n"
    "</reasoning>\n"
    "<answer>\n"
    "X\n"
    "</answer>\n"
    "where X is only the letter of the correct option (for example A, B, C or D), with no option "
    "text and nothing else inside the answer tags."
)
USER_TEMPLATE = "{question}\nPlease reason step by step."

DATA_SOURCE_PREFIX = "sciknoweval"
DEFAULT_LABELS = tuple("ABCDEFGHIJ")


def data_source(domain: str) -> str:
    """`sciknoweval_<domain>`: the `data_source` column, hence the validation metric prefix
    `val-core/sciknoweval_<domain>/acc/mean@16`."""
    return f"{DATA_SOURCE_PREFIX}_{domain}"


# ----------------------------------------------------------------------------- data rows


def _level(record: Mapping[str, Any]) -> str:
    details = record.get("details") or {}
    return str(details.get("level", record.get("level", ""))).strip()


def is_selected(record: Mapping[str, Any], domain: str, *, level: str = LEVEL, types: Sequence[str] = MCQ_TYPES) -> bool:
    """Whether an upstream record belongs to the paper's task: the domain, level L3, a
    multiple-choice type, and an answer key that names one of its choices."""
    if str(record.get("domain", "")).strip().lower() not in DOMAINS[domain]:
        return False
    if _level(record) != level or record.get("type") not in types:
        return False
    choices = record.get("choices") or {}
    labels, texts = list(choices.get("label") or []), list(choices.get("text") or [])
    return bool(labels) and len(labels) == len(texts) and record.get("answerKey") in labels


def format_question(record: Mapping[str, Any]) -> str:
    """The question, a blank line, then `A: option` per choice."""
    choices = record["choices"]
    options = "\n".join(f"{label}: {text}" for label, text in zip(choices["label"], choices["text"]))
    return f"{str(record['question']).strip()}\n\n{options}"


def to_row(record: Mapping[str, Any], *, domain: str, split: str, index: int) -> dict[str, Any]:
    """One verl RL row (the columns of verl's examples/data_preprocess)."""
    question = format_question(record)
    details = record.get("details") or {}
    return {
        "data_source": data_source(domain),
        "prompt": chat_prompt(USER_TEMPLATE.format(question=question), system=SYSTEM_PROMPT),
        "ability": "science_mcq",
        "reward_model": {"style": "rule", "ground_truth": str(record["answerKey"])},
        "extra_info": {
            "split": split,
            "index": index,
            "domain": domain,
            "question": question,
            "labels": [str(x) for x in record["choices"]["label"]],
            "choices": [str(x) for x in record["choices"]["text"]],
            "task": str(details.get("task", "")),
            "subtask": str(details.get("subtask", "")),
            "type": str(record.get("type", "")),
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

    Records are filtered in upstream order, then split with `split_indices` (the algorithm of
    `datasets.Dataset.train_test_split(test_size=0.1, seed=42)`); `extra_info.index` is the
    record's position in the filtered list, so a row can be traced back.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown SciKnowEval domain {domain!r}; valid: {', '.join(DOMAINS)}")
    selected = [r for r in records if is_selected(r, domain, level=level, types=types)]
    if not selected:
        raise ValueError(f"no {level} multiple-choice records for domain {domain!r} in the input")
    train_idx, test_idx = split_indices(len(selected), test_fraction=test_fraction, seed=seed)
    return {
        "train": [to_row(selected[i], domain=domain, split="train", index=i) for i in train_idx],
        "test": [to_row(selected[i], domain=domain, split="test", index=i) for i in test_idx],
    }


# ----------------------------------------------------------------------------- answer extraction

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", flags=re.DOTALL | re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", flags=re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*(?:\\text\{)?([^{}]*?)\}?\s*\}")
_MARKUP = re.compile(r"[*_`$]|\\text|\\mathrm")
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


def _last_cued_letter(text: str, regexes: Sequence[re.Pattern], labels: Sequence[str]) -> str:
    """The valid letter of the cue phrase that starts last in `text`, or ''."""
    found = []
    for regex in regexes:
        for m in regex.finditer(text):
            letter = next(g for g in m.groups() if g).upper()
            if letter in labels:
                found.append((m.start(), letter))
    return max(found)[1] if found else ""


def _clean(text: str) -> str:
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    return _MARKUP.sub("", text).strip()


def _norm_option(text: str) -> str:
    return " ".join(_MARKUP.sub("", str(text)).lower().split()).rstrip(".")


def parse_letter(content: str, labels: Sequence[str], choices: Optional[Sequence[str]] = None) -> str:
    """The option letter that `content` (an answer, or a line of text) names; '' if none or
    ambiguous. Upper-case result, always one of `labels`.

    Tried in order: the whole content is one letter form (`B`, `b`, `(B)`, `B.`, `**B**`,
    `\\boxed{B}`); a letter introducing option text (`B. 116.1`, `(B) text`); a cue phrase
    (`The answer is (B)`, `Answer: c.`; the last one counts); the exact text of one option
    (when `choices` is given); exactly one distinct stand-alone upper-case label.
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
    lead = _LEADING_LETTER.match(text)
    if lead and ok(lead.group(1) or lead.group(2)):
        return ok(lead.group(1) or lead.group(2))
    cued = _last_cued_letter(text, _TAG_CUES, labels)
    if cued:
        return cued
    if choices:
        matches = {label for label, option in zip(labels, choices) if _norm_option(option) == _norm_option(text)}
        if len(matches) == 1:
            return matches.pop()
    standalone = {c for c in _STANDALONE_UPPER.findall(text) if c in labels}
    return standalone.pop() if len(standalone) == 1 else ""


def extract_choice(
    solution_str: str, labels: Sequence[str] = DEFAULT_LABELS, choices: Optional[Sequence[str]] = None
) -> tuple[str, bool]:
    """(letter, format_error) of a model response. The rule, in order:

    1. Thinking is never parsed: `<think>…</think>` blocks (and an unclosed or prompt-opened one)
       are removed first (`strip_thinking`).
    2. With one or more complete `<answer>…</answer>` blocks, the **last** block decides (a model
       that restates or corrects itself ends with its final answer); its content is read with
       `parse_letter`. Tags are case-insensitive; whitespace and markup inside are ignored.
       If that block names no valid option the answer is '' (no fallback to earlier blocks).
    3. An `<answer>` that is never closed (truncated output): the text after the last one.
    4. No answer tag: the last cue phrase in the text (`The answer is (B)`, `\\boxed{C}`), else
       the last non-empty line if it is a bare letter form.

    `format_error` is False only when the last `<answer>` block holds a bare option letter
    (markup and whitespace aside); restated option text, a cue phrase inside the tag, cases 3
    and 4, empty output and an unreadable last block are format errors.
    """
    text = strip_thinking(solution_str or "")
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        letter = parse_letter(blocks[-1], labels, choices)
        return letter, not (letter and _WHOLE_LETTER.fullmatch(_clean(blocks[-1])))
    opens = list(_ANSWER_OPEN.finditer(text))
    if opens:
        return parse_letter(text[opens[-1].end():], labels, choices), True
    boxed = _BOXED.findall(text)
    if boxed:
        letter = parse_letter(boxed[-1], labels, choices)
        if letter:
            return letter, True
    cued = _last_cued_letter(_MARKUP.sub("", text), _FREE_CUES, [str(x).upper() for x in labels])
    if cued:
        return cued, True
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        last = _clean(lines[-1])
        whole = _WHOLE_LETTER.fullmatch(last)
        if whole and whole.group(1).upper() in [str(x).upper() for x in labels]:
            return whole.group(1).upper(), True
    return "", True


# ----------------------------------------------------------------------------- reward


def _named_invalid_letter(solution_str: str, labels: Sequence[str]) -> str:
    """The letter in the last answer block when it is a bare letter that is not an option."""
    blocks = _ANSWER_BLOCK.findall(strip_thinking(solution_str or ""))
    whole = _WHOLE_LETTER.fullmatch(_clean(blocks[-1])) if blocks else None
    letter = whole.group(1).upper() if whole else ""
    return letter if letter and letter not in [str(x).upper() for x in labels] else ""


def _as_list(value: Any) -> Optional[list]:
    if value is None:
        return None
    return [str(x) for x in list(value)]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: Optional[Mapping[str, Any]] = None,
    *,
    strict_format: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward for SciKnowEval MCQ.

    Returns `score` (1.0 when the extracted letter equals `ground_truth`, else 0.0; with
    `strict_format=True` a format error scores 0 even when the letter is right), `acc` (= score),
    `pred` (the extracted letter, '' if none), `format_error` and `feedback` (environment
    feedback for a self-teacher; '' when correct), e.g. "Your answer B is incorrect."
    """
    extra_info = extra_info or {}
    labels = _as_list(extra_info.get("labels")) or list(DEFAULT_LABELS)
    choices = _as_list(extra_info.get("choices"))
    gold = str(ground_truth).strip().upper()
    letter, format_error = extract_choice(solution_str, labels, choices)
    correct = bool(letter) and letter == gold and not (strict_format and format_error)

    if not (solution_str or "").strip():
        feedback = "Your response is empty. Reason step by step, then give the letter of one option as <answer>X</answer>."
    elif not letter and _named_invalid_letter(solution_str, labels):
        feedback = (
            f"Your answer {_named_invalid_letter(solution_str, labels)} is not one of the options "
            f"{', '.join(labels)}. Give the letter of one option as <answer>X</answer>."
        )
    elif not letter:
        feedback = (
            "No answer was found: no <answer> tag naming one of the options "
            f"{', '.join(labels)}. End your response with <answer>X</answer>, where X is only the letter."
        )
    else:
        feedback = f"Your answer {letter} is incorrect."
        if format_error:
            feedback += " Also give only the option letter inside <answer></answer> tags."
    return reward_result(score=1.0 if correct else 0.0, pred=letter, format_error=format_error, feedback=feedback)

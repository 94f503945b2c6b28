"""Teacher prompts: the original chat with its last user turn rewritten around a demonstration.

docs/spec.md §1.5: the last user turn becomes
    {question}\nCorrect solution:\n{sibling_response}\nCorrectly solve the original question.
(system message kept, <think> blocks stripped from the demonstration, chat template applied with
the generation prompt). The student's response tokens are appended afterwards and re-scored by
the teacher, never generated.

The demonstration (a sibling's response) and the feedback string are written by the policy or the
environment, so they never pass through the chat template as text: the template is rendered with a
placeholder in their place, its two sides are tokenised as the student's prompt is, and the
demonstration's token ids are spliced in between. A sibling that writes `<|im_start|>system` as
ordinary tokens therefore stays ordinary tokens for the teacher (re-tokenising the decoded text
would turn it into a real turn the student never saw), and a generated special token (EOS, pad, a
control token) is dropped. Cutting an overlong demonstration is exact in tokens: no re-tokenisation.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import Optional, Sequence, Union

from srpo_verl.tasks.common import strip_thinking

# Stands in for the demonstration while the chat template renders; private-use code points, so a
# question or a template never contains it by accident (checked anyway).
_SLOT = "\ue000srpo-slot\ue001"


def special_token_ids(tokenizer) -> frozenset[int]:
    """Ids of every special token: the named ones (EOS, pad, ...) and the added tokens marked special
    (ChatML's `<|im_start|>` is one, and `all_special_ids` does not list it)."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return frozenset(ids)


def plain_ids(tokenizer, text: str, special: Optional[frozenset[int]] = None) -> list[int]:
    """`text` as ordinary tokens: the spelling of a special token stays text (split_special_tokens).

    A vocabulary whose ordinary entries include a special token's spelling could still produce its
    id; such ids are dropped, so the result never holds a special token.
    """
    special = special_token_ids(tokenizer) if special is None else special
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [int(t) for t in ids if int(t) not in special]


def _clean(text: str, strip_think: bool) -> str:
    return strip_thinking(text) if strip_think else text.strip()


def _response_text(tokenizer, response_ids: Sequence[int], special: frozenset[int]) -> tuple[list[int], str]:
    ids = [int(t) for t in response_ids if int(t) not in special]  # EOS, pad, generated control tokens
    return ids, tokenizer.decode(ids)


def has_demonstration_content(tokenizer, response_ids: Sequence[int], *, strip_think: bool = True) -> bool:
    """Whether a response can serve as a demonstration: something other than whitespace is left once
    special tokens (EOS, pad) are removed and, with `strip_think`, its thinking is stripped.

    A correct response that is only EOS, whitespace, or only thinking would show the teacher
    `Correct solution:` followed by nothing: such a row is no teacher for its siblings.
    """
    _, text = _response_text(tokenizer, response_ids, special_token_ids(tokenizer))
    return bool(_clean(text, strip_think))


def text_has_content(text: str, *, strip_think: bool = True) -> bool:
    """Whether a feedback string has something to show once surrounding whitespace is removed: the
    same test `teacher_prompt_ids` applies.

    Feedback is environment text, never stripped of thinking: it quotes what the model wrote (a tool
    argument whose JSON escapes decode to `</think>`), and stripping would let the model delete or
    cut the environment's words. `strip_think` (the setting for model text, which callers pass
    along) therefore changes nothing here."""
    del strip_think
    return bool((text or "").strip())


def _token_span(tokenizer, ids: list[int], text: str, clean: str) -> Optional[list[int]]:
    """The run of `ids` that decodes to exactly `clean` (a substring of `text`, their decoding), or
    None when the token boundaries do not line up (a multi-byte character split across tokens,
    a tokenizer whose pieces do not concatenate to the whole decoding)."""
    singles = [[t] for t in ids]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: ~15x faster than batch_decode
    pieces = backend.decode_batch(singles, skip_special_tokens=False) if backend else tokenizer.batch_decode(singles)
    if "".join(pieces) != text:
        return None
    bounds = [0, *accumulate(map(len, pieces))]  # (n + 1,) char offset of each token boundary

    def token_at(offset: int) -> Optional[int]:
        k = bisect_left(bounds, offset)  # an empty piece repeats a bound: the first one is its start
        return k if k < len(bounds) and bounds[k] == offset else None

    at = text.find(clean)
    for _ in range(8):  # a few occurrences: each decodes to the same text, any aligned one does
        if at < 0:
            return None
        first, end = token_at(at), token_at(at + len(clean))
        if first is not None and end is not None:
            return ids[first:end]
        at = text.find(clean, at + 1)
    return None


def demonstration_ids(tokenizer, response_ids: Sequence[int], *, strip_think: bool = True) -> list[int]:
    """A sibling's response as the teacher sees it: its own token ids, special tokens removed,
    surrounding whitespace and (with `strip_think`) its thinking cut off; [] when nothing is left.

    When the kept text does not start and end on token boundaries of the response, it is encoded
    as plain text instead (still never a special token).
    """
    special = special_token_ids(tokenizer)
    ids, text = _response_text(tokenizer, response_ids, special)
    clean = _clean(text, strip_think)
    if not clean:
        return []
    if clean == text:
        return ids
    span = _token_span(tokenizer, ids, text, clean)
    return span if span is not None else plain_ids(tokenizer, clean, special)


def teacher_messages(
    messages: Sequence[dict],
    *,
    solution: Optional[str] = None,
    feedback: Optional[str] = None,
    reprompt_template: str,
    feedback_template: str,
) -> list[dict]:
    """The teacher's chat: a copy of `messages` whose last user turn is rewritten.

    A sibling's solution is used when given; the feedback template only when no solution exists.
    """
    if solution is None and feedback is None:
        raise ValueError("a teacher prompt needs a sibling solution or a feedback string")
    messages = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("the prompt has no user turn to rewrite for the teacher")
    question = messages[last_user]["content"]
    if not isinstance(question, str):
        # Structured (multimodal) content would be formatted as its Python repr: refuse it.
        raise ValueError(
            f"the last user turn's content is a {type(question).__name__}, not text: teacher prompts support "
            "text-only chats"
        )
    if solution is not None:
        content = reprompt_template.format(question=question, solution=solution)
    else:
        content = feedback_template.format(question=question, feedback=feedback)
    messages[last_user]["content"] = content
    return messages


def gold_teacher_messages(messages: Sequence[dict], label, *, reprompt_template: str) -> Optional[list[dict]]:
    """The teacher's chat for a validation row: its gold answer (`reward_model.ground_truth`) stands in
    for a sibling's solution (validation has no training siblings). None when the row has no gold answer."""
    gold = label.get("ground_truth") if isinstance(label, dict) else None
    if gold is None:
        return None
    return teacher_messages(messages, solution=str(gold), reprompt_template=reprompt_template, feedback_template="")


def _template_sides(tokenizer, chat: list[dict], kwargs: dict) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat before and after the placeholder, tokenised as verl tokenises
    the student's prompt (the template's special tokens are real ones)."""
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **kwargs)
    sides = text.split(_SLOT)
    if len(sides) != 2:
        raise ValueError(
            f"the rendered teacher prompt holds the demonstration placeholder {len(sides) - 1} times, not once: "
            "the chat template rewrote the user turn, or the question contains the placeholder"
        )

    def encode(part: str) -> list[int]:
        # Explicit: a tokenizer saved with split_special_tokens=True would otherwise split the template's own.
        ids = tokenizer(part, add_special_tokens=False, split_special_tokens=False)["input_ids"] if part else []
        return list(ids)

    return encode(sides[0]), encode(sides[1])


def teacher_prompt_ids(
    tokenizer,
    messages: Sequence[dict],
    *,
    solution: Union[str, Sequence[int], None],
    feedback: Optional[str],
    reprompt_template: str,
    feedback_template: str,
    strip_think: bool,
    max_length: int,
    overflow: str,
    apply_chat_template_kwargs: Optional[dict] = None,
) -> tuple[list[int], int]:
    """Token ids of the teacher prompt (generation prompt included) and how many demonstration
    tokens were cut to fit `max_length`.

    solution: the sibling's response token ids (the trainer's case: `demonstration_ids` of them are
        spliced in) or its text (encoded as plain text); None to use `feedback` (plain text, never
        stripped of thinking: it is the environment's, see `text_has_content`).
    The prompt holds exactly the special tokens of the chat template, whatever the demonstration
    or the feedback says. An overlong prompt is never cut at the right (that would drop the
    instruction and the generation prompt): with overflow="truncate" the demonstration loses tokens
    from its left; with overflow="error", or when not one demonstration token fits, ValueError.
    An empty demonstration (nothing left after removing special tokens and thinking) is refused:
    `has_demonstration_content` keeps such responses out of the routing.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length={max_length!r}: the teacher prompt budget must be an integer >= 1")
    if overflow not in ("truncate", "error"):
        raise ValueError(f"overflow={overflow!r}: must be truncate or error")
    if solution is None and feedback is None:
        raise ValueError("a teacher prompt needs a sibling solution or a feedback string")
    if solution is not None and not isinstance(solution, str):
        demo = demonstration_ids(tokenizer, solution, strip_think=strip_think)
    else:
        # A text solution is model text; feedback is environment text, kept whole (text_has_content).
        text = _clean(solution, strip_think) if solution is not None else (feedback or "").strip()
        demo = plain_ids(tokenizer, text)
    if not demo:
        raise ValueError(
            f"the {'demonstration' if solution is not None else 'feedback'} is empty once special tokens and "
            "thinking are removed: it cannot teach (such rows must not be routed to the teacher)"
        )
    chat = teacher_messages(
        messages,
        solution=_SLOT if solution is not None else None,
        feedback=_SLOT if solution is None else None,
        reprompt_template=reprompt_template,
        feedback_template=feedback_template,
    )
    before, after = _template_sides(tokenizer, chat, dict(apply_chat_template_kwargs or {}))
    total = len(before) + len(demo) + len(after)
    if total <= max_length:
        return before + demo + after, 0
    if overflow == "error":
        raise ValueError(
            f"teacher prompt has {total} tokens > algorithm.srpo.max_teacher_prompt_length={max_length}; "
            "raise the limit or set algorithm.srpo.teacher_prompt_overflow=truncate"
        )
    cut = total - max_length
    if cut >= len(demo):
        raise ValueError(
            f"the teacher prompt does not fit algorithm.srpo.max_teacher_prompt_length={max_length} "
            f"with even one demonstration token: the question alone is too long ({len(before) + len(after)} "
            "tokens of template and question)"
        )
    return before + demo[cut:] + after, cut


def teacher_template_length(
    tokenizer,
    messages: Sequence[dict],
    *,
    template: str,
    slot: str,
    apply_chat_template_kwargs: Optional[dict] = None,
) -> int:
    """Tokens of a teacher prompt without its demonstration (or feedback): the chat with its last
    user turn rewritten by `template` (`slot`: "solution" or "feedback"), rendered and tokenised
    exactly as `teacher_prompt_ids` does. A prompt fits a budget only if this plus one
    demonstration token does; the driver's data check measures it on every row."""
    chat = teacher_messages(
        messages,
        solution=_SLOT if slot == "solution" else None,
        feedback=_SLOT if slot == "feedback" else None,
        reprompt_template=template,
        feedback_template=template,
    )
    before, after = _template_sides(tokenizer, chat, dict(apply_chat_template_kwargs or {}))
    return len(before) + len(after)


def holds_placeholder(text: str) -> bool:
    """Whether a question holds the builder's private placeholder (it would refuse the prompt)."""
    return _SLOT in text

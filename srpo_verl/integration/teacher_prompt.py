"""Teacher prompts: the original chat with its last user turn rewritten around a demonstration.

SRPO_SPEC.md §1.5: the last user turn becomes
    {question}\nCorrect solution:\n{sibling_response}\nCorrectly solve the original question.
(system message kept, <think> blocks stripped from the demonstration, chat template applied with
the generation prompt). The student's response tokens are appended afterwards and re-scored by
the teacher, never generated.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)


def strip_thinking(text: str) -> str:
    """Remove complete <think>...</think> blocks, and an unclosed <think> tail."""
    text = _THINK.sub("", text)
    cut = text.find("<think>")
    return (text[:cut] if cut >= 0 else text).strip()


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


def teacher_prompt_ids(
    tokenizer,
    messages: Sequence[dict],
    *,
    solution: Optional[str],
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

    An overlong prompt is never cut at the right (that would drop the instruction and the
    generation prompt): with overflow="truncate" the demonstration loses tokens from its left;
    with overflow="error", or when even an empty demonstration does not fit, ValueError.
    """
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length={max_length!r}: the teacher prompt budget must be an integer >= 1")
    if overflow not in ("truncate", "error"):
        raise ValueError(f"overflow={overflow!r}: must be truncate or error")
    kwargs = apply_chat_template_kwargs or {}
    demo = solution if solution is not None else feedback
    if strip_think and demo is not None:
        demo = strip_thinking(demo)

    def encode(text: str) -> list[int]:
        chat = teacher_messages(
            messages,
            solution=text if solution is not None else None,
            feedback=text if solution is None else None,
            reprompt_template=reprompt_template,
            feedback_template=feedback_template,
        )
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, **kwargs)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    ids = encode(demo)
    if len(ids) <= max_length:
        return ids, 0
    if overflow == "error":
        raise ValueError(
            f"teacher prompt has {len(ids)} tokens > algorithm.srpo.max_teacher_prompt_length={max_length}; "
            "raise the limit or set algorithm.srpo.teacher_prompt_overflow=truncate"
        )
    demo_ids = tokenizer.encode(demo, add_special_tokens=False)
    cut = len(ids) - max_length
    # Re-tokenising the shortened text can merge tokens differently; a few rounds settle it.
    while cut <= len(demo_ids):
        ids = encode(tokenizer.decode(demo_ids[cut:]))
        if len(ids) <= max_length:
            return ids, cut
        cut += max(1, len(ids) - max_length)
    raise ValueError(
        f"the teacher prompt does not fit algorithm.srpo.max_teacher_prompt_length={max_length} "
        "even with an empty demonstration: the question alone is too long"
    )

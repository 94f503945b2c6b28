"""Teacher prompts (SRPO_SPEC §1.5): rewritten last user turn, kept system message, left truncation."""

import pytest

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.demo.tiny_model import build_tokenizer
from srpo_verl.integration.teacher_prompt import strip_thinking, teacher_messages, teacher_prompt_ids

CFG = SRPOConfig()
MESSAGES = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "12+30="},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _ids(tok, **kw):
    args = dict(
        solution="42",
        feedback=None,
        reprompt_template=CFG.reprompt_template,
        feedback_template=CFG.feedback_template,
        strip_think=True,
        max_length=10_000,
        overflow="truncate",
    )
    args.update(kw)
    return teacher_prompt_ids(tok, MESSAGES, **args)


def test_last_user_turn_is_rewritten_and_system_kept(tok):
    ids, cut = _ids(tok)
    text = tok.decode(ids)
    expected = (
        "<|im_start|>system\nAnswer with a number.<|im_end|>\n"
        "<|im_start|>user\n12+30=\nCorrect solution:\n42\nCorrectly solve the original question.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == expected and cut == 0
    assert MESSAGES[1]["content"] == "12+30="  # the student's chat is not mutated


def test_thinking_is_stripped_from_the_demonstration(tok):
    ids, _ = _ids(tok, solution="<think>carry the one\n</think>42")
    assert "carry" not in tok.decode(ids) and "Correct solution:\n42\n" in tok.decode(ids)
    assert strip_thinking("a<think>x</think>b<think>unclosed") == "ab"


def test_feedback_template_only_without_solution(tok):
    ids, _ = _ids(tok, solution=None, feedback="Your answer 41 is wrong.")
    text = tok.decode(ids)
    assert "feedback from your unsuccessful earlier attempt: Your answer 41 is wrong." in text
    assert "Correct solution" not in text
    with pytest.raises(ValueError, match="sibling solution or a feedback"):
        teacher_messages(MESSAGES, reprompt_template=CFG.reprompt_template, feedback_template=CFG.feedback_template)


def test_overlong_prompt_cuts_the_demonstration_from_its_left(tok):
    demo = "".join(str(i % 10) for i in range(200))
    full, _ = _ids(tok, solution=demo)
    limit = len(full) - 50
    ids, cut = _ids(tok, solution=demo, max_length=limit)
    text = tok.decode(ids)
    assert len(ids) <= limit and cut >= 50
    # The question, the instruction and the generation prompt survive; the demo keeps its right end.
    assert "12+30=\nCorrect solution:\n" in text
    assert text.endswith("\nCorrectly solve the original question.<|im_end|>\n<|im_start|>assistant\n")
    kept = text.split("Correct solution:\n")[1].split("\nCorrectly")[0]
    assert demo.endswith(kept) and len(kept) < len(demo)


def test_overlong_prompt_raises_when_configured(tok):
    with pytest.raises(ValueError, match="max_teacher_prompt_length"):
        _ids(tok, solution="9" * 100, max_length=60, overflow="error")


def test_question_alone_too_long_raises(tok):
    with pytest.raises(ValueError, match="question alone is too long"):
        _ids(tok, max_length=20)

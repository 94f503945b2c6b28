"""Teacher prompts (docs/spec.md §1.5): rewritten last user turn, kept system message, left
truncation, the sibling's own token ids spliced in. Adversarial demonstrations (role injection, empty
ones) are in tests/reliability/test_teacher_prompt_checks.py."""

import pytest

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.demo.tiny_model import build_tokenizer
from srpo_verl.integration import teacher_prompt
from srpo_verl.integration.teacher_prompt import (
    demonstration_ids,
    has_demonstration_content,
    strip_thinking,
    teacher_messages,
    teacher_prompt_ids,
)
from srpo_verl.tasks import common

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
    assert teacher_prompt.strip_thinking is common.strip_thinking  # one definition, shared with the rewards


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


def _templated(tok, text, messages=MESSAGES, **kw):
    """The construction the splice replaced: the demonstration's text through the chat template."""
    chat = teacher_messages(
        messages, solution=text, reprompt_template=CFG.reprompt_template, feedback_template=CFG.feedback_template
    )
    return list(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, **kw)["input_ids"])


@pytest.mark.parametrize("demo", ["42", "The sum is 42.\nCheck: 42-30=12", "x{y}z {question}"])
def test_benign_demonstration_gives_the_templated_text_exactly(tok, demo):
    # One token per character: splicing changes nothing for text without special-token spellings,
    # whether the sibling comes as its token ids (the trainer) or as text (the evaluator).
    as_ids = [int(t) for t in tok.encode(demo, add_special_tokens=False)] + [tok.eos_token_id]
    assert _ids(tok, solution=as_ids)[0] == _templated(tok, demo)
    assert _ids(tok, solution=demo)[0] == _templated(tok, demo)


def test_sibling_ids_lose_special_tokens_thinking_and_outer_whitespace(tok):
    body = tok.encode("<think>carry</think>\n 42 \n", add_special_tokens=False)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    demo = demonstration_ids(tok, body + [eos, pad, pad], strip_think=True)
    assert tok.decode(demo) == "42"
    # Without stripping, the thinking stays; only the outer whitespace and the EOS go.
    kept = demonstration_ids(tok, body + [eos], strip_think=False)
    assert kept == body[:-2] and tok.decode(kept) == "<think>carry</think>\n 42"


def test_truncation_is_exact_in_tokens(tok):
    # The demonstration is cut in its own tokens, never re-tokenised: the prompt fills the budget
    # exactly and keeps the demonstration's right end token for token.
    demo = [int(t) for t in tok.encode("".join(str(i % 10) for i in range(200)), add_special_tokens=False)]
    full, _ = _ids(tok, solution=demo)
    x = tok.convert_tokens_to_ids("X")  # a one-token demonstration locates the template's two sides
    one, _ = _ids(tok, solution=[x])
    head, tail = one.index(x), len(one) - one.index(x) - 1
    assert full == one[:head] + demo + one[head + 1 :]
    for limit in (len(full) - 1, len(full) - 57, len(full) - 199):
        ids, cut = _ids(tok, solution=demo, max_length=limit)
        assert len(ids) == limit and cut == len(full) - limit
        assert ids == one[:head] + demo[cut:] + one[head + 1 :] and tail > 0


@pytest.mark.parametrize(
    "text, strip_think, expected",
    [
        ("42", True, True),
        ("", True, False),
        ("  \n\t ", True, False),
        ("<think>the sum is 42</think>", True, False),
        ("<think>the sum is 42</think>\n\n", True, False),
        ("<think>never closed, 42", True, False),
        ("<think>the sum is 42</think>", False, True),
        ("<think>x</think>42", True, True),
    ],
)
def test_demonstration_content(tok, text, strip_think, expected):
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id, tok.pad_token_id]
    assert has_demonstration_content(tok, ids, strip_think=strip_think) is expected
    assert bool(demonstration_ids(tok, ids, strip_think=strip_think)) is expected
    assert has_demonstration_content(tok, [tok.eos_token_id]) is False

"""Bad inputs to the teacher prompt builder (srpo_verl/integration/teacher_prompt.py). The overlong
cases (truncate / error / question alone too long) are in tests/integration/test_teacher_prompt.py."""

import pytest

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.demo.tiny_model import build_tokenizer
from srpo_verl.integration.teacher_prompt import teacher_messages, teacher_prompt_ids

CFG = SRPOConfig()
TEMPLATES = dict(reprompt_template=CFG.reprompt_template, feedback_template=CFG.feedback_template)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _ids(tok, messages, **kw):
    args = dict(solution="42", feedback=None, strip_think=True, max_length=1000, overflow="truncate", **TEMPLATES)
    args.update(kw)
    return teacher_prompt_ids(tok, messages, **args)


def test_prompt_without_user_turn_is_an_error(tok):
    with pytest.raises(ValueError, match="no user turn to rewrite"):
        _ids(tok, [{"role": "system", "content": "Add."}])


def test_structured_user_content_is_an_error_not_its_repr():
    content = [{"type": "text", "text": "1+2="}, {"type": "image"}]
    with pytest.raises(ValueError, match="content is a list, not text"):
        teacher_messages([{"role": "user", "content": content}], solution="3", **TEMPLATES)


def test_neither_solution_nor_feedback_is_an_error():
    with pytest.raises(ValueError, match="needs a sibling solution or a feedback string"):
        teacher_messages([{"role": "user", "content": "1+2="}], **TEMPLATES)


@pytest.mark.parametrize("limit", [0, -5, 2.5], ids=["zero", "negative", "float"])
def test_invalid_teacher_prompt_budget_is_an_error(tok, limit):
    with pytest.raises(ValueError, match=f"max_length={limit!r}"):
        _ids(tok, [{"role": "user", "content": "1+2="}], max_length=limit)


def test_unknown_overflow_mode_is_an_error(tok):
    # Before: any value other than "error" silently truncated.
    with pytest.raises(ValueError, match="overflow='drop'"):
        _ids(tok, [{"role": "user", "content": "1+2="}], overflow="drop")


def test_valid_prompt_builds(tok):
    # Control: the same calls with valid inputs build the rewritten prompt.
    ids, cut = _ids(tok, [{"role": "user", "content": "1+2="}], solution="3")
    assert cut == 0 and "1+2=\nCorrect solution:\n3\nCorrectly solve" in tok.decode(ids)

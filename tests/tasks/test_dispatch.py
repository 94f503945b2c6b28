"""`srpo_verl.tasks.compute_score`: the reward entry point the recipes give verl."""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srpo_verl import tasks
from srpo_verl.tasks.common import strip_thinking

KEYS = {"score", "acc", "pred", "format_error", "feedback", "score_lenient", "reward_error"}
TOOL_GOLD = json.dumps([{"Action": "getX", "Action_Input": "{}"}])


@pytest.mark.parametrize(
    "data_source,response,gold,score",
    [
        ("sciknoweval", "<answer>B</answer>", "B", 1.0),
        ("sciknoweval", "<answer>C</answer>", "B", 0.0),
        ("tooluse", "Action: getX\nAction Input: {}", TOOL_GOLD, 1.0),
        ("tooluse", "Action: getY\nAction Input: {}", TOOL_GOLD, 0.0),
        # names written by earlier versions of the prepare scripts
        ("sciknoweval_chemistry", "<answer>B</answer>", "B", 1.0),
        ("toolalpaca", "Action: getX\nAction Input: {}", TOOL_GOLD, 1.0),
    ],
)
def test_data_source_picks_the_task(data_source, response, gold, score):
    result = tasks.compute_score(data_source, response, gold, {"labels": ["A", "B", "C", "D"]})
    assert set(result) == KEYS and result["score"] == score


def test_sdpo_data_sources_never_reach_verls_default_scorer(monkeypatch):
    import verl.utils.reward_score as verl_scores

    def refuse(*args, **kwargs):
        raise AssertionError("fell through to verl's default_compute_score")

    monkeypatch.setattr(verl_scores, "default_compute_score", refuse)
    assert tasks.compute_score("sciknoweval", "<answer>A</answer>", "A")["score"] == 1.0
    assert tasks.compute_score("tooluse", "Action: getX\nAction Input: {}", TOOL_GOLD)["score"] == 1.0


def test_misspelt_reward_kwarg_is_refused_naming_the_valid_ones():
    with pytest.raises(TypeError, match=r"\['lenent'\]; valid: \['lenient', 'ordered'\]"):
        tasks.compute_score("sciknoweval", "<answer>A</answer>", "A", lenent=True)


@pytest.mark.parametrize(
    "value", ["false", "False", "0", 0, 1, None], ids=["false", "False", "zero_str", "zero", "one", "none"]
)
def test_reward_switch_that_is_not_a_bool_is_refused_naming_the_key(value):
    """Before: `lenient='false'` (a truthy string) silently switched the lenient scorer on."""
    with pytest.raises(TypeError, match=r"reward_kwargs\.lenient=.*must be true or false"):
        tasks.compute_score("sciknoweval", "<answer>A</answer>", "A", lenient=value)
    assert tasks.compute_score("sciknoweval", "<answer>a</answer>", "A", lenient=np.bool_(False))["score"] == 0.0


def test_unknown_data_source_is_named_before_the_reward_is_called():
    """A misspelt data_source fell through to verl's default scorer, which raises at the first reward
    call; `unknown_data_source` is the driver's check of the same dispatch."""
    assert "'sciknoweva' is neither one of srpo_verl's tasks" in tasks.unknown_data_source("sciknoweva")
    with pytest.raises(NotImplementedError):
        tasks.compute_score("sciknoweva", "<answer>A</answer>", "A")
    for known in ("sciknoweval", "sciknoweval_chemistry", "tooluse", "toolalpaca", "openai/gsm8k", "lighteval/MATH"):
        assert tasks.unknown_data_source(known) is None, known


def test_lenient_override_reaches_the_reward_through_verls_loader():
    """The documented Hydra override composes (the `+` is needed: verl's config has no
    reward_kwargs key) and verl's own loader passes it to our reward."""
    from hydra import compose, initialize_config_module
    from verl.trainer.ppo.reward import get_custom_reward_fn

    base = [
        "reward.custom_reward_function.path=pkg://srpo_verl.tasks",
        "reward.custom_reward_function.name=compute_score",
    ]
    with initialize_config_module("srpo_verl.config", version_base=None):
        default = compose("srpo_trainer", overrides=base)
        lenient = compose(
            "srpo_trainer", overrides=[*base, "+reward.custom_reward_function.reward_kwargs.lenient=true"]
        )
        with pytest.raises(Exception, match="reward_kwargs"):
            compose("srpo_trainer", overrides=[*base, "reward.custom_reward_function.reward_kwargs.lenient=true"])
    response = "The answer is (A)."
    assert (
        get_custom_reward_fn(default)(data_source="sciknoweval", solution_str=response, ground_truth="A")["score"]
        == 0.0
    )
    result = get_custom_reward_fn(lenient)(data_source="sciknoweval", solution_str=response, ground_truth="A")
    assert result["score"] == 1.0


def test_other_data_sources_fall_back_to_verl_with_the_same_keys():
    result = tasks.compute_score("openai/gsm8k", "The answer is #### 72", "72")
    assert set(result) == KEYS and result["score"] == 1.0


def test_verl_loads_it_from_the_recipe_path():
    """The recipes set reward.custom_reward_function.path=pkg://srpo_verl.tasks, name=compute_score."""
    from verl.utils.import_utils import load_extern_object

    fn = load_extern_object(module_path="pkg://srpo_verl.tasks", object_name="compute_score")
    assert fn("sciknoweval", "<answer>A</answer>", "A")["score"] == 1.0


def test_fields_become_the_avg_at_16_metric_verl_logs():
    """Scored through verl's own validation aggregation: `acc` is the val-core avg@16 key under the
    SDPO data_source names, and the lenient score and the error count are logged beside it."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    responses = ["<answer>A</answer>"] * 4 + ["The answer is A."] * 4 + ["<answer>B</answer>"] * 8
    results = [tasks.compute_score("sciknoweval", r, "A") for r in responses]
    results += [tasks.compute_score("tooluse", "Action: getX\nAction Input: {}", TOOL_GOLD)] * 15
    results += [tasks.compute_score("tooluse", "Action: getY\nAction Input: " + "[" * 100_000, TOOL_GOLD)]
    infos = {"reward": [r["score"] for r in results], **{k: [r[k] for r in results] for k in KEYS}}
    sources = np.array(["sciknoweval"] * 16 + ["tooluse"] * 16, dtype=object)
    metrics = PPOTrainer._val_metrics_update(None, sources, ["q1"] * 16 + ["q2"] * 16, infos, [])
    assert metrics["val-core/sciknoweval/acc/mean@16"] == pytest.approx(0.25)
    assert metrics["val-aux/sciknoweval/score_lenient/mean@16"] == pytest.approx(0.5)
    assert metrics["val-core/tooluse/acc/mean@16"] == pytest.approx(15 / 16)
    assert metrics["val-aux/sciknoweval/format_error/mean@16"] == pytest.approx(0.25)  # the 4 untagged
    assert metrics["val-aux/tooluse/reward_error/mean@16"] == 0.0  # deep nesting is a format error, not a failure


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>a</think>b", "b"),
        ("<THINK>a</THINK> b <think>c</think>d", "b d"),
        ("a</think>b", "b"),  # block opened by the chat template
        ("x</think>y</think>z", "z"),  # the last lone closer wins
        ("b<think>unfinished", "b"),
        ("<think>a<think>b</think>c", "c"),  # an opener inside a block belongs to it
        ("plain", "plain"),
        ("", ""),
        (None, ""),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


def _strip_thinking_by_regex(text):
    """The former regex definition (quadratic on unclosed tags; fine on short strings): an oracle."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL | re.IGNORECASE)
    closes = list(re.finditer(r"</think>", text, flags=re.IGNORECASE))
    if closes:
        text = text[closes[-1].end() :]
    opened = re.search(r"<think>", text, flags=re.IGNORECASE)
    return (text[: opened.start()] if opened else text).strip()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["<think>", "</think>", "<THINK>", "</Think>", "a", " ", "\n", "İ", "<", ">"]), max_size=14
    )
)
def test_strip_thinking_agrees_with_the_regex_definition(parts):
    text = "".join(parts)
    assert strip_thinking(text) == _strip_thinking_by_regex(text)

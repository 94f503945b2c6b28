"""Bad trainer configurations, composed with Hydra exactly as `python -m srpo_verl.main_ppo` does, and
refused by `check_trainer_config` in the driver before Ray starts (srpo_verl/integration/config_checks.py)."""

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_module

from srpo_verl import SUPPORTED_VERL
from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration.config_checks import check_trainer_config

# A valid SRPO launch: the defaults (packed sequences, as the SRPO teacher pass needs).
BASE = ("algorithm=srpo",)
# The recipes' reward: srpo_verl's task reward.
TASK_REWARD = (
    "reward.custom_reward_function.path=pkg://srpo_verl.tasks",
    "reward.custom_reward_function.name=compute_score",
)


def _compose(*overrides):
    with initialize_config_module("srpo_verl.config", version_base=None):
        return compose("srpo_trainer", overrides=list(overrides))


def _check(*overrides, **kw):
    return check_trainer_config(_compose(*BASE, *overrides), verl_version=kw.pop("verl_version", SUPPORTED_VERL))


ERRORS = [
    # (id, overrides, exception, text the message must contain)
    ("rollout_n_1", ["actor_rollout_ref.rollout.n=1"], ValueError, "actor_rollout_ref.rollout.n=1"),
    ("beta_inf", ["algorithm.srpo.beta=inf"], ValueError, "algorithm.srpo.beta=inf"),
    ("beta_string", ["algorithm.srpo.beta=abc"], ValueError, "algorithm.srpo.beta='abc': must be a number"),
    ("topk_float", ["algorithm.srpo.topk=2.5"], ValueError, "algorithm.srpo.topk=2.5: must be an integer"),
    ("topk_bool", ["algorithm.srpo.topk=true"], ValueError, "algorithm.srpo.topk=True: must be an integer"),
    ("alpha_negative", ["algorithm.srpo.alpha=-0.1"], ValueError, "algorithm.srpo.alpha=-0.1"),
    ("alpha_nan", ["algorithm.srpo.alpha=nan"], ValueError, "algorithm.srpo.alpha=nan"),
    ("ema_rate_0", ["algorithm.srpo.ema_rate=0"], ValueError, "algorithm.srpo.ema_rate=0"),
    ("threshold_nan", ["algorithm.srpo.success_threshold=nan"], ValueError, "algorithm.srpo.success_threshold=nan"),
    ("is_clip_0", ["algorithm.srpo.is_clip=0"], ValueError, "algorithm.srpo.is_clip=0"),
    ("chunk_size_0", ["algorithm.srpo.chunk_size=0"], ValueError, "algorithm.srpo.chunk_size=0"),
    ("teacher_limit_0", ["algorithm.srpo.max_teacher_prompt_length=0"], ValueError, "max_teacher_prompt_length=0"),
    ("overflow_mode", ["algorithm.srpo.teacher_prompt_overflow=drop"], ValueError, "teacher_prompt_overflow='drop'"),
    (
        "use_feedback_string",
        ["algorithm.srpo.use_feedback=yes"],
        ValueError,
        "use_feedback='yes': must be true or false",
    ),
    ("entropy_mode", ["algorithm.srpo.entropy_mode=topk"], ValueError, "algorithm.srpo.entropy_mode='topk'"),
    ("distill_mode", ["algorithm.srpo.distill_mode=kl"], ValueError, "algorithm.srpo.distill_mode='kl'"),
    (
        "feedback_template",
        ["algorithm.srpo.feedback_template=no_slot"],
        ValueError,
        "must contain ['{question}', '{feedback}']",
    ),
    ("appended_unknown_key", ["+algorithm.srpo.bta=0"], ValueError, "Unknown key(s) under algorithm.srpo: ['bta']"),
    ("teacher_student", ["algorithm.srpo.teacher=student"], ValueError, "algorithm.srpo.teacher='student'"),
    (
        "padded_model",
        ["actor_rollout_ref.model.use_remove_padding=False"],
        ValueError,
        "actor_rollout_ref.model.use_remove_padding=False",
    ),
    (
        "padded_actor",
        ["actor_rollout_ref.actor.use_remove_padding=False"],
        ValueError,
        "actor_rollout_ref.actor.use_remove_padding=False",
    ),
    (
        "cpu_platform_padding",
        ["platform=cpu", "actor_rollout_ref.model.use_remove_padding=False"],
        ValueError,
        "use_remove_padding=False",
    ),
    (
        "ulysses",
        ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"],
        NotImplementedError,
        "ulysses_sequence_parallel_size=2",
    ),
    (
        "trainer_mode_sync",
        ["trainer.v1.trainer_mode=sync"],
        ValueError,
        "algorithm.srpo is set but trainer.v1.trainer_mode=sync",
    ),
    (
        "srpo_trainer_without_block",
        ["algorithm=grpo", "trainer.v1.trainer_mode=srpo"],
        ValueError,
        "needs an algorithm.srpo block",
    ),
    # Templates are checked when the block is built (was: at the first teacher step, not naming the key).
    (
        "template_extra_field",
        ["algorithm.srpo.reprompt_template='{question} {solution} {hint}'"],
        ValueError,
        "algorithm.srpo.reprompt_template='{question} {solution} {hint}': placeholders other than {question} and "
        "{solution}: ['{hint}']",
    ),
    (
        "template_stray_brace",
        ["algorithm.srpo.reprompt_template='{question} { {solution}'"],
        ValueError,
        "algorithm.srpo.reprompt_template=",
    ),
    (
        "template_positional",
        ["algorithm.srpo.feedback_template='{0} {question} {feedback}'"],
        ValueError,
        "algorithm.srpo.feedback_template='{0} {question} {feedback}': placeholders other than {question} and "
        "{feedback}: ['{0}']",
    ),
    (
        "template_escaped_question",
        ["algorithm.srpo.reprompt_template='{{question}} {solution}'"],
        ValueError,
        "algorithm.srpo.reprompt_template='{{question}} {solution}': must contain ['{question}']",
    ),
    (
        "template_solution_twice",
        ["algorithm.srpo.reprompt_template='{question} {solution} {solution}'"],
        ValueError,
        "must contain {solution} exactly once, not 2 times",
    ),
    (
        "feedback_key_empty",
        ["algorithm.srpo.use_feedback=true", "algorithm.srpo.feedback_key=''"],
        ValueError,
        "algorithm.srpo.feedback_key='': must name",
    ),
    # verl keys given as strings (was: a bare TypeError at the first comparison).
    (
        "rollout_n_string",
        ["actor_rollout_ref.rollout.n='8'"],
        ValueError,
        "actor_rollout_ref.rollout.n='8': must be an integer",
    ),
    (
        "mini_batch_string",
        ["actor_rollout_ref.actor.ppo_mini_batch_size='8'"],
        ValueError,
        "actor_rollout_ref.actor.ppo_mini_batch_size='8': must be an integer",
    ),
    (
        "train_batch_string",
        ["data.train_batch_size='32'"],
        ValueError,
        "data.train_batch_size='32': must be an integer",
    ),
    (
        "ppo_epochs_string",
        ["actor_rollout_ref.actor.ppo_epochs='2'"],
        ValueError,
        "actor_rollout_ref.actor.ppo_epochs='2': must be an integer",
    ),
    (
        "max_prompt_string",
        ["data.max_prompt_length='512'", "algorithm.srpo.max_teacher_prompt_length=1024"],
        ValueError,
        "data.max_prompt_length='512': must be an integer",
    ),
    (
        "ulysses_string",
        ["actor_rollout_ref.ref.ulysses_sequence_parallel_size='2'"],
        ValueError,
        "actor_rollout_ref.ref.ulysses_sequence_parallel_size='2': must be an integer",
    ),
    (
        "remove_padding_string",
        ["actor_rollout_ref.model.use_remove_padding='False'"],
        ValueError,
        "actor_rollout_ref.model.use_remove_padding='False': must be true or false",
    ),
    # Values that would silently change the objective (issue 23), refused naming the key.
    (
        "temperature_zero",
        ["actor_rollout_ref.rollout.temperature=0"],
        ValueError,
        "actor_rollout_ref.rollout.temperature=0: must be a finite number > 0",
    ),
    (
        "temperature_negative",
        ["actor_rollout_ref.rollout.temperature=-1"],
        ValueError,
        "actor_rollout_ref.rollout.temperature=-1: must be a finite number > 0",
    ),
    (
        "temperature_nan",
        ["actor_rollout_ref.rollout.temperature=nan"],
        ValueError,
        "actor_rollout_ref.rollout.temperature=nan: must be a finite number > 0",
    ),
    (
        "temperature_string",
        ["actor_rollout_ref.rollout.temperature='1.0'"],
        ValueError,
        "actor_rollout_ref.rollout.temperature='1.0': must be a finite number > 0",
    ),
    ("beta_huge", ["algorithm.srpo.beta=1e308"], ValueError, "algorithm.srpo.beta=1e+308: must be <= 4.05e+306"),
    (
        "ema_rate_below_fp32",
        ["algorithm.srpo.ema_rate=1e-30"],
        ValueError,
        "algorithm.srpo.ema_rate=1e-30: must be >= 1.19e-07",
    ),
    (
        "reward_kwarg_string",
        [*TASK_REWARD, "+reward.custom_reward_function.reward_kwargs.lenient='false'"],
        ValueError,
        "reward.custom_reward_function.reward_kwargs.lenient='false': must be true or false",
    ),
    (
        "reward_kwarg_misspelt",
        [*TASK_REWARD, "+reward.custom_reward_function.reward_kwargs.lenent=true"],
        ValueError,
        "unknown reward.custom_reward_function.reward_kwargs ['lenent']",
    ),
    (
        "threshold_above_binary",
        [*TASK_REWARD, "algorithm.srpo.success_threshold=1.5"],
        ValueError,
        "algorithm.srpo.success_threshold=1.5: srpo_verl.tasks' rewards are 0 or 1",
    ),
    (
        "threshold_zero_binary",
        [*TASK_REWARD, "algorithm.srpo.success_threshold=0"],
        ValueError,
        "algorithm.srpo.success_threshold=0: srpo_verl.tasks' rewards are 0 or 1",
    ),
    (
        "max_response_string",
        ["data.max_response_length='512'"],
        ValueError,
        "data.max_response_length='512': must be an integer",
    ),
    (
        "feedback_key_pred",
        ["algorithm.srpo.use_feedback=true", "algorithm.srpo.feedback_key=pred"],
        ValueError,
        "algorithm.srpo.feedback_key='pred': the reward result's 'pred' is a score or the model's own prediction",
    ),
    (
        "feedback_key_typo",
        [*TASK_REWARD, "algorithm.srpo.use_feedback=true", "algorithm.srpo.feedback_key=feedbak"],
        ValueError,
        "algorithm.srpo.feedback_key='feedbak': srpo_verl.tasks.compute_score returns no such field",
    ),
    (
        "teacher_limit_below_prompt",
        ["data.max_prompt_length=512", "algorithm.srpo.max_teacher_prompt_length=256"],
        ValueError,
        "max_teacher_prompt_length=256 < data.max_prompt_length=512",
    ),
]


@pytest.mark.parametrize("overrides, error, text", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_config_error_names_the_key(overrides, error, text):
    with pytest.raises(error, match=re.escape(text)):
        _check(*overrides)


@pytest.mark.parametrize("installed", ["0.9.2", "0.10.0", "0.9.1rc1"], ids=["patch", "minor", "pre_release"])
def test_unsupported_verl_version_is_refused_naming_both(installed):
    with pytest.raises(RuntimeError) as err:
        _check(verl_version=installed)
    assert f"verl {installed} is installed" in str(err.value) and f"verl {SUPPORTED_VERL} only" in str(err.value)
    assert "SRPO_VERL_ALLOW_ANY_VERL=1" in str(err.value)


@pytest.mark.parametrize("installed", [f"{SUPPORTED_VERL}.post1", f"{SUPPORTED_VERL}+cluster.patch"])
def test_builds_of_the_supported_verl_are_accepted(installed):
    # Before: an exact string compare refused post-releases and local (patched) builds.
    assert _check(verl_version=installed).method == "srpo"


def test_the_override_runs_an_unsupported_verl_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("SRPO_VERL_ALLOW_ANY_VERL", "1")
    with caplog.at_level(logging.WARNING, logger="srpo_verl.verl_compat"):
        assert _check(verl_version="0.10.0").method == "srpo"
    assert "unsupported verl" in caplog.text and "0.10.0" in caplog.text


def test_several_optimiser_steps_per_batch_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.config_checks"):
        _check("actor_rollout_ref.actor.ppo_mini_batch_size=8", "data.train_batch_size=32")
    assert "several optimiser steps per batch" in caplog.text and "ppo_mini_batch_size=8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.config_checks"):
        _check()  # the paper's setting: one step per batch, nothing logged
    assert "several optimiser steps" not in caplog.text


def test_valid_configs_pass():
    # Control: the shipped switches pass (so the refusals above are specific), grpo has no block.
    block = _check("algorithm.srpo.beta=0", "algorithm.srpo.topk=20")
    assert isinstance(block, SRPOConfig) and (block.beta, block.topk) == (0.0, 20)
    assert isinstance(_check("algorithm=sdpo"), SRPOConfig)
    assert _check("trainer.v1.trainer_mode=srpo_colocate_async").method == "srpo"
    # The CPU platform's defaults agree with SRPO's (packed sequences): no override needed.
    assert isinstance(_check("platform=cpu"), SRPOConfig)
    assert check_trainer_config(_compose("algorithm=grpo")) is None
    # The task reward with bool switches and the feedback key it returns; the smallest fp32-resolved EMA rate.
    lenient = (
        "+reward.custom_reward_function.reward_kwargs.lenient=true",
        "+reward.custom_reward_function.reward_kwargs.ordered=false",
    )
    assert _check(*TASK_REWARD, *lenient, "algorithm.srpo.use_feedback=true").feedback_key == "feedback"
    assert (
        _check(
            "algorithm.srpo.ema_rate=1.2e-7", "algorithm.srpo.beta=1e6", "actor_rollout_ref.rollout.temperature=0.6"
        ).ema_rate
        == 1.2e-7
    )


def test_teacher_sharing_storage_with_the_student_is_refused():
    # The EMA teacher's parameter pairs are checked every EMA step (worker._param_pairs): a
    # teacher whose tensor is the student's would be the live student (docs/spec.md §4).
    from srpo_verl.integration.worker import SRPOActorRolloutRefWorker

    def engine(module):
        return SimpleNamespace(engine=SimpleNamespace(module=module))

    student = torch.nn.Linear(2, 2)
    separate = torch.nn.Linear(2, 2)
    worker = SimpleNamespace(actor=engine(student))
    assert len(list(SRPOActorRolloutRefWorker._param_pairs(worker, engine(separate)))) == 2
    shared = torch.nn.Linear(2, 2)
    shared.weight = student.weight  # the same Parameter object: shared storage
    with pytest.raises(RuntimeError, match="EMA teacher parameter weight is the live student's tensor"):
        list(SRPOActorRolloutRefWorker._param_pairs(worker, engine(shared)))

"""`python -m srpo_verl.main_ppo` runs the config and data checks in the driver, before verl's main
(which starts Ray) is called."""

import os

import pytest
from hydra import compose, initialize_config_module

from srpo_verl import cpu, main_ppo
from srpo_verl.demo.harness import tiny_cpu_overrides


def _config(model, data, *extra):
    # platform=cpu dropped: it would activate the CPU backend inside the test process.
    overrides = [o for o in tiny_cpu_overrides(model, data, "/tmp/unused", total_steps=1) if o != "platform=cpu"]
    with initialize_config_module("srpo_verl.config", version_base=None):
        return compose("srpo_trainer", overrides=[*overrides, *extra])


@pytest.fixture
def verl_main(monkeypatch):
    """verl's main replaced by a recorder: reaching it means Ray would start now."""
    import verl.trainer.main_ppo

    calls = []

    def fake(config):
        calls.append(config)

    monkeypatch.setattr(verl.trainer.main_ppo, "main", type("Main", (), {"__wrapped__": staticmethod(fake)})())
    monkeypatch.delenv(cpu.ENV_VAR, raising=False)
    return calls


@pytest.mark.parametrize(
    "extra, text",
    [
        (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n=1"),
        (
            ["data.max_prompt_length=4", "algorithm.srpo.max_teacher_prompt_length=null"],
            "longer than data.max_prompt_length=4",
        ),
    ],
    ids=["config", "data"],
)
def test_bad_input_fails_before_verl_main(tiny_model_path, addition_data, verl_main, extra, text):
    config = _config(tiny_model_path, addition_data, *extra)
    with pytest.raises(ValueError, match=text):
        main_ppo.main.__wrapped__(config)
    assert verl_main == [] and os.environ.get(cpu.ENV_VAR) is None


def test_valid_launch_reaches_verl_main(tiny_model_path, addition_data, verl_main):
    config = _config(tiny_model_path, addition_data)
    main_ppo.main.__wrapped__(config)
    assert verl_main == [config]

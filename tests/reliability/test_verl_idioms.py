"""verl idioms that must not silently train the wrong method, and the checks on verl's own entry point.

The estimator and loss refusals themselves (verl's stock config with `adv_estimator=srpo`) are in
test_registration.py; here the SRPO side: what `algorithm=srpo` accepts, the SRPO trainer running the
driver's checks before any worker starts, and a validation-only run building no EMA teacher.
"""

import re

import pytest
from omegaconf import OmegaConf
from test_config_checks import _check, _compose

from srpo_verl.integration import registrations
from srpo_verl.integration import trainer as trainer_module
from srpo_verl.integration.config_checks import DRIVER_CHECKED_KEY


@pytest.mark.parametrize(
    "override, key",
    [
        ("algorithm.adv_estimator=gae", "algorithm.adv_estimator=gae"),  # would even build a critic
        ("algorithm.adv_estimator=rloo", "algorithm.adv_estimator=rloo"),
        ("algorithm.adv_estimator=grpo", "algorithm.adv_estimator=grpo"),
        ("actor_rollout_ref.actor.policy_loss.loss_mode=vanilla", "policy_loss.loss_mode=vanilla"),
    ],
)
def test_an_srpo_method_refuses_what_it_does_not_define(override, key):
    # Before: accepted; the SRPO step ran on top of another estimator, or ignored the loss setting.
    with pytest.raises(ValueError, match=re.escape(key)):
        _check(override)


def test_sdpo_and_the_ablations_use_the_srpo_estimator():
    for method in ("sdpo", "srpo_no_dw", "advantage_mix"):
        config = _compose(f"algorithm={method}")
        assert config.algorithm.adv_estimator == "srpo", method
        assert _check(f"algorithm={method}") is not None


def test_an_srpo_launch_fails_naming_a_registration_that_failed(monkeypatch):
    from srpo_verl import main_ppo

    monkeypatch.setattr(registrations, "_ERRORS", {"trainers": "ImportError: cannot import name X"})
    with pytest.raises(RuntimeError, match="not registered with verl.*cannot import name X"):
        main_ppo.prepare(_compose("algorithm=srpo"), check_data=False)
    main_ppo.prepare(_compose("algorithm=grpo"), check_data=False)  # plain verl methods still launch


class _VerlTrainer:
    """Stands for verl's v1 trainer: records what ran (its __init__ is where workers get built)."""

    def __init__(self, config):
        self.config, self.calls = config, ["verl init"]

    def _load_checkpoint(self):
        self.calls.append("verl load")


class _Trainer(trainer_module.SRPOStepMixin, _VerlTrainer):
    pass


def test_the_trainer_checks_config_and_data_before_verl_builds_anything(monkeypatch):
    # verl's own entry point (python -m verl.trainer.main_ppo ...) never runs srpo_verl.main_ppo.prepare.
    seen = []
    monkeypatch.setattr(trainer_module, "check_data_files", lambda config: seen.append("data"))
    with pytest.raises(ValueError, match="rollout.n=1"):
        _Trainer(_compose("algorithm=srpo", "actor_rollout_ref.rollout.n=1"))
    assert seen == []  # refused before verl's __init__ (no "verl init"), and before the data
    trainer = _Trainer(_compose("algorithm=srpo"))
    assert seen == ["data"] and trainer.calls == ["verl init"] and trainer.srpo.method == "srpo"
    # After srpo_verl.main_ppo's driver checks, the data files are not read twice.
    config = _compose("algorithm=srpo")
    OmegaConf.update(config, DRIVER_CHECKED_KEY, True, force_add=True)
    _Trainer(config)
    assert seen == ["data"]


def test_a_validation_only_run_builds_no_ema_teacher(monkeypatch):
    monkeypatch.setattr(trainer_module, "check_data_files", lambda config: None)
    setups = []

    class WorkerGroup:
        def srpo_setup(self, node, k):
            setups.append(k)

    def trainer(*overrides):
        t = _Trainer(_compose("algorithm=srpo", *overrides))
        t.actor_rollout_wg, t.tokenizer = WorkerGroup(), list(range(50))
        t._load_checkpoint()
        return t

    # Before: the teacher (an fp32 copy of the model) was built for a run that only validates.
    assert trainer("trainer.val_only=True").calls == ["verl init", "verl load"] and setups == []
    # val_only without val_before_train: verl trains after all, so SRPO is set up.
    trainer("trainer.val_only=True", "trainer.val_before_train=False")
    assert len(setups) == 1

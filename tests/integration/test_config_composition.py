"""`algorithm=grpo|sdpo|srpo` compose against verl's stock ppo_trainer with the paper's values."""

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from srpo_verl.algo_config import SRPOAlgoConfig, SRPOConfig, srpo_config_of


def _compose(*overrides):
    with initialize_config_module("srpo_verl.config", version_base=None):
        return compose("srpo_trainer", overrides=list(overrides))


# (switch, adv_estimator, loss_mode, trainer_mode, lr, mini-batch prompts, method, beta) from SRPO Table 3.
EXPECTED = [
    ("grpo", "grpo", "vanilla", "sync", 1e-6, 8, None, None),
    ("sdpo", "srpo", "srpo", "srpo", 1e-5, 32, "sdpo", 0.0),
    ("srpo", "srpo", "srpo", "srpo", 5e-6, 32, "srpo", 1.0),
    ("srpo_no_dw", "srpo", "srpo", "srpo", 5e-6, 32, "srpo", 0.0),
    ("advantage_mix", "srpo", "srpo", "srpo", 5e-6, 32, "advantage_mix", 1.0),
]


@pytest.mark.parametrize("switch,adv,loss_mode,trainer_mode,lr,mini,method,beta", EXPECTED)
def test_switch_sets_every_method_key(switch, adv, loss_mode, trainer_mode, lr, mini, method, beta):
    cfg = _compose(f"algorithm={switch}")
    actor = cfg.actor_rollout_ref.actor
    assert cfg.algorithm.adv_estimator == adv
    assert actor.policy_loss.loss_mode == loss_mode
    assert cfg.trainer.v1.trainer_mode == trainer_mode
    assert actor.optim.lr == pytest.approx(lr)
    assert actor.ppo_mini_batch_size == mini
    # Shared paper settings (Table 3), identical for every method.
    assert cfg.algorithm.norm_adv_by_std_in_grpo is False
    assert cfg.algorithm.rollout_correction.rollout_is == "token"
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == 2.0
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    assert actor.use_kl_loss is False and actor.entropy_coeff == 0
    assert (actor.optim.lr_warmup_steps, actor.optim.weight_decay, actor.optim.clip_grad) == (10, 0.01, 1.0)
    assert cfg.actor_rollout_ref.rollout.n == 8 and cfg.actor_rollout_ref.rollout.temperature == 1.0
    val = cfg.actor_rollout_ref.rollout.val_kwargs
    assert (val.n, val.temperature, val.top_p, val.do_sample) == (16, 0.6, 0.95, True)
    assert cfg.data.train_batch_size == 32
    srpo = cfg.algorithm.get("srpo")
    if method is None:
        assert srpo is None
    else:
        assert (srpo.method, srpo.beta) == (method, beta)
        assert (srpo.topk, srpo.alpha, srpo.ema_rate, srpo.is_clip) == (100, 0.5, 0.05, 2.0)


def test_default_switch_is_srpo():
    assert _compose().algorithm.srpo.method == "srpo"


def test_override_reaches_the_dataclass():
    cfg = _compose("algorithm=srpo", "algorithm.srpo.beta=0", "algorithm.srpo.topk=20")
    block = srpo_config_of(cfg)
    assert (block.beta, block.topk) == (0.0, 20)


def test_unknown_key_is_refused_by_hydra_naming_it():
    with pytest.raises(ConfigCompositionException, match="algorithm.srpo.bta"):
        _compose("algorithm=srpo", "algorithm.srpo.bta=0")


def test_appended_unknown_key_is_refused_by_the_dataclass_naming_it():
    cfg = _compose("algorithm=srpo", "+algorithm.srpo.bta=0")
    with pytest.raises(ValueError, match="bta"):
        srpo_config_of(cfg)


@pytest.mark.parametrize(
    "override,key",
    [
        ("algorithm.srpo.beta=-1", "beta"),
        ("algorithm.srpo.topk=0", "topk"),
        ("algorithm.srpo.alpha=1.5", "alpha"),
        ("algorithm.srpo.ema_rate=1.0", "ema_rate"),
        ("algorithm.srpo.method=ppo", "method"),
        ("algorithm.srpo.reprompt_template=no_placeholders", "reprompt_template"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ValueError, match=f"algorithm.srpo.{key}"):
        srpo_config_of(_compose("algorithm=srpo", override))


@pytest.mark.parametrize("switch", ["grpo", "srpo", "sdpo"])
def test_verl_algo_config_dataclass_conversion_still_works(switch):
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass

    algo = omega_conf_to_dataclass(_compose(f"algorithm={switch}").algorithm)
    assert isinstance(algo, AlgoConfig)
    assert algo.rollout_correction["rollout_is"] == "token"  # verl keeps this node a dict
    if switch != "grpo":
        assert isinstance(algo, SRPOAlgoConfig) and isinstance(algo.srpo, SRPOConfig)


def test_yaml_defaults_equal_dataclass_defaults():
    """One source of truth: the YAML block restates SRPOConfig's defaults exactly."""
    cfg = _compose("algorithm=srpo")
    yaml_block = OmegaConf.to_container(cfg.algorithm.srpo)
    yaml_block.pop("_target_")
    assert yaml_block == {k: v for k, v in SRPOConfig().items() if k != "_target_"}

"""Settings that would crash SRPO on GPU or silently change what it optimises, refused in the driver
by `config_checks.check_gpu_path_config` (called from `check_trainer_config`), naming the key."""

import pytest
from test_config_checks import _check  # a valid SRPO launch composed as main_ppo does, then checked


REFUSED = [
    # (id, overrides, exception, text the message must contain)
    (
        "fused_kernels",
        ["actor_rollout_ref.model.use_fused_kernels=True"],
        ValueError,
        "actor_rollout_ref.model.use_fused_kernels=True",
    ),
    (
        "teacher_fsdp_size",
        ["actor_rollout_ref.ref.fsdp_config.fsdp_size=4"],
        ValueError,
        "actor_rollout_ref.ref.fsdp_config.fsdp_size=4",
    ),
    (
        "teacher_wrap_policy",
        ["actor_rollout_ref.ref.fsdp_config.wrap_policy.min_num_params=1000"],
        ValueError,
        "actor_rollout_ref.ref.fsdp_config.wrap_policy",
    ),
    (
        "teacher_bf16",
        ["actor_rollout_ref.ref.fsdp_config.model_dtype=bf16"],
        ValueError,
        "actor_rollout_ref.ref.fsdp_config.model_dtype=bf16",
    ),
    (
        "teacher_strategy_differs",
        ["actor_rollout_ref.ref.strategy=fsdp2"],
        ValueError,
        "actor_rollout_ref.ref.strategy=fsdp2",
    ),
    (
        "use_kl_loss",
        ["actor_rollout_ref.actor.use_kl_loss=True"],
        ValueError,
        "actor_rollout_ref.actor.use_kl_loss=True",
    ),
    (
        "bypass_mode",
        ["algorithm.rollout_correction.bypass_mode=True"],
        ValueError,
        "algorithm.rollout_correction.bypass_mode=True",
    ),
    (
        "entropy_coeff",
        ["actor_rollout_ref.actor.entropy_coeff=0.01"],
        ValueError,
        "actor_rollout_ref.actor.entropy_coeff=0.01",
    ),
    (
        "loss_agg_mode",
        ["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum"],
        ValueError,
        "loss_agg_mode=seq-mean-token-sum",
    ),
    (
        "loss_scale_factor",
        ["actor_rollout_ref.actor.loss_scale_factor=2.0"],
        ValueError,
        "actor_rollout_ref.actor.loss_scale_factor=2.0",
    ),
    (
        "del_local_ckpt",
        ["trainer.del_local_ckpt_after_load=True"],
        ValueError,
        "trainer.del_local_ckpt_after_load=True",
    ),
    ("lora", ["actor_rollout_ref.model.lora_rank=8"], NotImplementedError, "actor_rollout_ref.model.lora_rank"),
    # Ulysses SP through the key verl's engine reads (the deprecated top-level key is in test_config_checks).
    (
        "ulysses_actor_engine_key",
        ["actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=2"],
        NotImplementedError,
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=2",
    ),
    (
        "ulysses_ref_engine_key",
        ["actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size=2"],
        NotImplementedError,
        "actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size=2",
    ),
    (
        "pad_to_length",
        ["actor_rollout_ref.actor.pad_to_length=True"],
        ValueError,
        "actor_rollout_ref.actor.pad_to_length=True",
    ),
    (
        "pad_to_length_ref",
        ["actor_rollout_ref.ref.fsdp_config.pad_to_length=True"],
        ValueError,
        "actor_rollout_ref.ref.fsdp_config.pad_to_length=True",
    ),
    (
        "teacher_keeps_unsharded",
        ["actor_rollout_ref.ref.fsdp_config.reshard_after_forward=False"],
        ValueError,
        "actor_rollout_ref.ref.fsdp_config.reshard_after_forward=False",
    ),
    (
        "qat",
        ["actor_rollout_ref.actor.fsdp_config.qat.enable=True"],
        NotImplementedError,
        "actor_rollout_ref.actor.fsdp_config.qat.enable=True",
    ),
    (
        "megatron",
        ["actor_rollout_ref.actor.strategy=megatron", "actor_rollout_ref.ref.strategy=megatron"],
        NotImplementedError,
        "actor_rollout_ref.actor.strategy=megatron",
    ),
]


@pytest.mark.parametrize("overrides,exc,text", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_gpu_path_setting_is_refused_naming_the_key(overrides, exc, text):
    with pytest.raises(exc) as err:
        _check(*overrides)
    assert text in str(err.value)


CONTROLS = [
    ("defaults", []),
    ("fsdp2_both", ["actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2"]),
    ("calculate_entropy", ["actor_rollout_ref.actor.calculate_entropy=True"]),
    ("ulysses_one", ["actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=1"]),
    # The student may keep unsharded parameters between forwards: the EMA step runs after backward,
    # which reshards them.
    ("actor_keeps_unsharded", ["actor_rollout_ref.actor.fsdp_config.reshard_after_forward=False"]),
]


@pytest.mark.parametrize("overrides", [c[1] for c in CONTROLS], ids=[c[0] for c in CONTROLS])
def test_gpu_path_controls_pass(overrides):
    assert _check(*overrides).method == "srpo"


def test_a_vision_language_model_is_refused_naming_its_type(tmp_path):
    # The teacher pass re-prompts with text only; verl's VL forwards need image inputs and 3-D positions.
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl", "vision_config": {"depth": 2}}')
    with pytest.raises(NotImplementedError, match="qwen2_5_vl vision-language model"):
        _check(f"actor_rollout_ref.model.path={tmp_path}")
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    assert _check(f"actor_rollout_ref.model.path={tmp_path}").method == "srpo"


@pytest.mark.parametrize(
    "override, text",
    [
        # A string "False" is truthy: before, these were refused with messages saying the key was True.
        (
            "actor_rollout_ref.actor.use_kl_loss='False'",
            "actor_rollout_ref.actor.use_kl_loss='False': must be true or false",
        ),
        ("actor_rollout_ref.model.use_fused_kernels='False'", "use_fused_kernels='False': must be true or false"),
        ("trainer.del_local_ckpt_after_load='no'", "trainer.del_local_ckpt_after_load='no': must be true or false"),
        ("algorithm.rollout_correction.bypass_mode='False'", "bypass_mode='False': must be true or false"),
        ("actor_rollout_ref.model.lora_rank='8'", "actor_rollout_ref.model.lora_rank='8': must be an integer"),
        (
            "actor_rollout_ref.actor.entropy_coeff='0.01'",
            "actor_rollout_ref.actor.entropy_coeff='0.01': must be a number",
        ),
    ],
)
def test_string_typed_gpu_keys_are_refused_by_type_not_by_a_value_they_do_not_have(override, text):
    with pytest.raises(ValueError) as err:
        _check(override)
    assert text in str(err.value)

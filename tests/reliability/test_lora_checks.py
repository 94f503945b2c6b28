"""A LoRA student: what its EMA adapter teacher cannot serve is refused by key in the driver
(`config_checks.check_lora_config`), and at worker start a student whose base is not frozen."""

import pytest
from test_config_checks import _check  # a valid SRPO launch composed as main_ppo does, then checked

FSDP2 = ("actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2")
LORA = ("actor_rollout_ref.model.lora_rank=8",)

REFUSED = [
    # (id, overrides, exception, text the message must contain)
    ("lora_fsdp1", [*LORA], NotImplementedError, "actor_rollout_ref.actor.strategy=fsdp"),
    (
        "lora_hf_unmerged",
        [*LORA, *FSDP2, "platform=cpu", "actor_rollout_ref.model.lora.merge=False"],
        ValueError,
        "actor_rollout_ref.model.lora.merge=False",
    ),
    (
        "megatron_lora_rank_alone",
        [*FSDP2, "actor_rollout_ref.model.lora.rank=8"],
        ValueError,
        "actor_rollout_ref.model.lora.rank=8",
    ),
]


@pytest.mark.parametrize("overrides, exc, text", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_lora_setting_the_adapter_teacher_cannot_serve_is_refused_naming_the_key(overrides, exc, text):
    with pytest.raises(exc) as err:
        _check(*overrides)
    assert text in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [*LORA, *FSDP2],
        [*LORA, *FSDP2, "platform=cpu", "actor_rollout_ref.model.lora.merge=True"],
        [*LORA, *FSDP2, "algorithm.srpo.teacher=trust_region"],
    ],
    ids=["fsdp2", "cpu_merged", "trust_region"],
)
def test_lora_student_on_fsdp2_passes(overrides):
    assert _check(*overrides) is not None


def test_a_lora_student_with_a_trainable_base_weight_is_refused_at_teacher_build():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    from srpo_verl.integration.lora_teacher import AdapterTeacher

    config = Qwen3Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=8, intermediate_size=32, vocab_size=20)  # fmt: skip
    model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=2, target_modules="all-linear"))
    model.base_model.model.model.norm.weight.requires_grad_(True)  # as PEFT's modules_to_save would leave it
    with pytest.raises(
        RuntimeError, match=r"trainable non-adapter parameters \(e\.g\. \['base_model\.model\.model\.norm"
    ):
        AdapterTeacher(model)

"""Checks of a composed trainer config, run in the driver before Ray starts (`main_ppo.prepare`) and
again where the SRPO trainer builds its `algorithm.srpo` block (launches through verl's own entry
point skip prepare). Pure functions of the config: no Ray, no TransferQueue, no tensors.

A bad setting raises an error naming the key and the reason; a setting that changes the method in a
documented way is logged at WARNING. docs/reliability.md lists every case and the test that holds it.
"""

# device: host-side module (driver config checks); see tests/gpu/test_device_discipline.py
from __future__ import annotations

import json
import logging
import math
import os
from typing import Optional

from omegaconf import OmegaConf

from srpo_verl.algo_config import SRPOConfig, srpo_config_of
from srpo_verl.verl_compat import verl_version_problem

logger = logging.getLogger(__name__)

SRPO_TRAINER_MODES = ("srpo", "srpo_colocate_async")
# Set by srpo_verl.main_ppo.prepare once the driver has checked the data files (the trainer then skips them).
DRIVER_CHECKED_KEY = "srpo_verl.driver_checked"


def _int_setting(node, key: str, name: str, default=None):
    """An integer verl setting, or `default` when absent. A Hydra override such as `rollout.n='8'`
    arrives as a str and would otherwise end in a bare TypeError at the first comparison."""
    value = node.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be an integer, not a {type(value).__name__}")
    return value


def _bool_setting(node, key: str, name: str, default: bool) -> bool:
    value = node.get(key, default)
    if not isinstance(value, bool):  # the string "False" is truthy: it would silently mean True
        raise ValueError(f"{name}={value!r}: must be true or false, not a {type(value).__name__}")
    return value


def check_trainer_config(config, *, verl_version: Optional[str] = None) -> Optional[SRPOConfig]:
    """Checks of a composed trainer config: in the driver before Ray starts (main_ppo.prepare), and
    again where the SRPO trainer builds its block (launches through verl's own entry point skip prepare).

    Returns the validated `algorithm.srpo` block (None for a plain verl algorithm such as grpo).
    Raises ValueError for invalid or contradictory settings and NotImplementedError for declared
    but unimplemented ones, naming the key; logs a WARNING for settings that change the method in
    a documented way. `verl_version` defaults to the installed one (a parameter for the tests).
    """
    mode = config.trainer.get("v1", {}).get("trainer_mode", None)
    srpo = srpo_config_of(config)  # SRPOConfig validation: unknown keys, ranges, types
    srpo_mode = mode in SRPO_TRAINER_MODES
    if srpo_mode and srpo is None:
        raise ValueError(
            f"trainer.v1.trainer_mode={mode} needs an algorithm.srpo block: launch with algorithm=srpo or "
            "algorithm=sdpo"
        )
    if srpo is not None and not srpo_mode:
        # The SRPO step lives in the SRPO trainers; any other trainer would silently run plain GRPO.
        raise ValueError(
            f"algorithm.srpo is set but trainer.v1.trainer_mode={mode}: the routing, teacher pass and EMA "
            f"teacher would not run. Use trainer.v1.trainer_mode=srpo or srpo_colocate_async."
        )
    check_reward_config(config, srpo)
    if srpo is None:
        return None

    if verl_version is None:
        import verl

        verl_version = getattr(verl, "__version__", "unknown")
    problem = verl_version_problem(str(verl_version), "srpo_verl's SRPO trainer")
    if problem:
        raise RuntimeError(problem)
    algo = config.algorithm
    if algo.get("adv_estimator", None) != "srpo":
        # verl's estimator runs on every row before the SRPO step adds its branch (gae even builds a critic).
        raise ValueError(
            f"algorithm.adv_estimator={algo.get('adv_estimator', None)} under an SRPO method: the GRPO branch's "
            "advantage is the srpo estimator's (group mean baseline); set algorithm.adv_estimator=srpo"
        )
    loss_mode = OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.loss_mode", default="srpo")
    if loss_mode != "srpo":
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} under an SRPO method: the SRPO trainer "
            "installs its own loss, so this one would be silently ignored; set it to srpo"
        )

    arr = config.actor_rollout_ref
    n = _int_setting(arr.rollout, "n", "actor_rollout_ref.rollout.n")
    if n is None or n < 2:
        raise ValueError(
            f"actor_rollout_ref.rollout.n={n!r}: SRPO needs groups of >= 2 responses per prompt "
            "(a sample is never its own demonstration, so with n=1 no sample could ever have a teacher)"
        )
    temperature = arr.rollout.get("temperature", 1.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not temperature > 0
        or (not math.isfinite(temperature))
    ):
        # verl divides the logits by it for the student and the teacher pass: 0 gives non-finite
        # teacher scores, a negative value inverts the distributions.
        raise ValueError(
            f"actor_rollout_ref.rollout.temperature={temperature!r}: must be a finite number > 0 (the student's "
            "and the teacher's log-probs are taken at this temperature)"
        )
    for key, node in (("actor_rollout_ref.model", arr.model), ("actor_rollout_ref.actor", arr.actor)):
        if not _bool_setting(node, "use_remove_padding", f"{key}.use_remove_padding", True):
            raise ValueError(
                f"{key}.use_remove_padding=False: the SRPO teacher pass and loss work on packed sequences; "
                "set actor_rollout_ref.model.use_remove_padding=True"
            )
    # Both spellings: the deprecated top-level key and the fsdp_config one verl's engine reads. With
    # sp > 1 each rank holds a sequence slice of the logits, while the SRPO logits processor and the
    # student top-K index positions of the whole packed sequence.
    for key in ("actor", "ref"):
        for node, name in (
            (arr[key], f"actor_rollout_ref.{key}.ulysses_sequence_parallel_size"),
            (
                arr[key].get("fsdp_config", None) or {},
                f"actor_rollout_ref.{key}.fsdp_config.ulysses_sequence_parallel_size",
            ),
        ):
            sp = _int_setting(node, "ulysses_sequence_parallel_size", name)
            if sp is not None and sp > 1:
                raise NotImplementedError(
                    f"{name}={sp}: Ulysses sequence parallelism is not implemented in the SRPO logits "
                    "processor and teacher pass (they index the whole packed sequence); set it to 1"
                )
    max_prompt = _int_setting(config.data, "max_prompt_length", "data.max_prompt_length")
    # An unset teacher budget is max_prompt_length + max_response_length, summed at the teacher step.
    _int_setting(config.data, "max_response_length", "data.max_response_length")
    teacher_limit = srpo.max_teacher_prompt_length
    if teacher_limit is not None and max_prompt is not None and teacher_limit < max_prompt:
        # The teacher prompt contains the whole student prompt plus the template and a demonstration.
        raise ValueError(
            f"algorithm.srpo.max_teacher_prompt_length={srpo.max_teacher_prompt_length} < "
            f"data.max_prompt_length={max_prompt}: a prompt at the data limit could never fit in its teacher "
            "prompt (which contains it); raise the teacher limit or leave it null"
        )
    actor = arr.actor
    mini = _int_setting(actor, "ppo_mini_batch_size", "actor_rollout_ref.actor.ppo_mini_batch_size")
    batch = _int_setting(config.data, "train_batch_size", "data.train_batch_size")
    epochs = _int_setting(actor, "ppo_epochs", "actor_rollout_ref.actor.ppo_epochs", 1)
    if epochs > 1 or (mini is not None and batch is not None and mini < batch):
        logger.warning(
            "SRPO with several optimiser steps per batch (ppo_epochs=%s, ppo_mini_batch_size=%s < "
            "train_batch_size=%s): later mini-batches distil on the student's top-K ids taken before the "
            "first step (docs/design.md, 'Top-K ids from the pre-update policy'); "
            "actor/srpo/topk_match_fraction shows how far they drift",
            epochs,
            mini,
            batch,
        )
    check_gpu_path_config(config)
    return srpo


def check_reward_config(config, srpo: Optional[SRPOConfig]) -> None:
    """What the reward step would refuse, or silently get wrong, refused by key before Ray starts:
    srpo_verl's task reward with a misspelt or non-bool `reward_kwargs` switch (`lenient='false'` is
    a truthy string), and a `feedback_key` that is not the reward's feedback field (a typo leaves
    every row without feedback; `pred` would show the teacher the model's own prediction)."""
    from srpo_verl import tasks

    fn_config = (config.get("reward", {}) or {}).get("custom_reward_function", {}) or {}
    ours = tasks.is_task_reward(fn_config.get("path", None), fn_config.get("name", None))
    if ours:
        try:
            tasks.check_reward_kwargs(dict(fn_config.get("reward_kwargs", {}) or {}))
        except TypeError as err:
            raise ValueError(str(err)) from None
    if ours and srpo is not None and not 0 < srpo.success_threshold <= 1:
        # The task rewards score 0 or 1: above 1 no response is ever correct (no demonstration, ever);
        # at or below 0 every response is (no failed sample is ever distilled).
        raise ValueError(
            f"algorithm.srpo.success_threshold={srpo.success_threshold!r}: srpo_verl.tasks' rewards are 0 or 1, "
            "so it must be in (0, 1] (the paper uses 0.5)"
        )
    if srpo is None or not srpo.use_feedback:
        return
    key = srpo.feedback_key
    if key in tasks.RESULT_KEYS - {tasks.FEEDBACK_KEY}:
        raise ValueError(
            f"algorithm.srpo.feedback_key={key!r}: the reward result's {key!r} is a score or the model's own "
            f"prediction, not environment feedback; the reward functions of srpo_verl.tasks use "
            f"{tasks.FEEDBACK_KEY!r}"
        )
    if ours and key != tasks.FEEDBACK_KEY:
        raise ValueError(
            f"algorithm.srpo.feedback_key={key!r}: srpo_verl.tasks.compute_score returns no such field "
            f"(its fields: {sorted(tasks.RESULT_KEYS)}); feedback would silently never be found. Use "
            f"{tasks.FEEDBACK_KEY!r}"
        )


def _dtype_name(value) -> str:
    return str(value).replace("torch.", "").lower()


def _vision_model_type(path) -> Optional[str]:
    """The model type of a local HF checkpoint whose config.json has a vision tower, else None (hub ids
    and unreadable configs are left to verl, which loads them later)."""
    config_file = os.path.join(str(path), "config.json") if path else ""
    if not os.path.isfile(config_file):
        return None
    try:
        with open(config_file) as f:
            hf_config = json.load(f)
    except (OSError, ValueError):
        return None
    return str(hf_config.get("model_type", "?")) if "vision_config" in hf_config else None


def check_lora_config(config) -> None:
    """A LoRA student (`actor_rollout_ref.model.lora_rank > 0`) gets an EMA teacher of its adapter only
    (integration/lora_teacher.py); what that teacher cannot serve is refused here by key."""
    arr = config.actor_rollout_ref
    model = arr.model
    lora_rank = _int_setting(model, "lora_rank", "actor_rollout_ref.model.lora_rank", 0) or 0
    lora_block = model.get("lora", {}) or {}
    block_rank = _int_setting(lora_block, "rank", "actor_rollout_ref.model.lora.rank", 0) or 0
    if block_rank > 0 and lora_rank == 0:
        # verl's FSDP engine reads lora_rank only; lora.rank is its Megatron LoRA: the student would be full.
        raise ValueError(
            f"actor_rollout_ref.model.lora.rank={block_rank} with lora_rank=0: verl's FSDP engine reads "
            "actor_rollout_ref.model.lora_rank (lora.rank is Megatron's), so the student would train every "
            "weight; set actor_rollout_ref.model.lora_rank instead"
        )
    if lora_rank == 0:
        return
    strategy = str(arr.actor.get("strategy", "fsdp"))
    if strategy != "fsdp2":
        # The adapter swap writes rank-local DTensor shards in place; FSDP1's flat parameters (views of
        # one flat buffer under use_orig_params) are not covered by it or by its tests.
        raise NotImplementedError(
            f"actor_rollout_ref.actor.strategy={strategy} with actor_rollout_ref.model.lora_rank={lora_rank}: the "
            "EMA adapter teacher of a LoRA student is implemented for FSDP2 only; set strategy=fsdp2 (actor and ref)"
        )
    rollout = str(arr.rollout.get("name", ""))
    merge = _bool_setting(lora_block, "merge", "actor_rollout_ref.model.lora.merge", False)
    if rollout == "hf" and not merge:
        raise ValueError(
            f"actor_rollout_ref.model.lora_rank={lora_rank} with rollout.name=hf and "
            "actor_rollout_ref.model.lora.merge=False: the CPU rollout server takes full weights only; set "
            "actor_rollout_ref.model.lora.merge=True (verl then syncs base + adapter merged)"
        )


def check_gpu_path_config(config) -> None:
    """Settings that would break SRPO on GPU, or silently change what it optimises, refused by key.

    The SRPO loss replaces verl's whole policy loss (so verl's loss options would be ignored), reads the
    student's logits in a logits processor, and keeps an EMA teacher paired with the student shard by
    shard and saved beside the actor checkpoint. Each refusal below names the key and the reason.
    """
    arr = config.actor_rollout_ref
    model, actor, ref = arr.model, arr.actor, arr.ref
    for key, node in (("actor_rollout_ref.model", model), ("actor_rollout_ref.actor", actor)):
        if _bool_setting(node, "use_fused_kernels", f"{key}.use_fused_kernels", False):
            raise ValueError(
                f"{key}.use_fused_kernels=True: verl's fused kernels compute token log-probs without the "
                "logits, which the SRPO distillation reads (logits processor); set it to False"
            )
    for key, node in (("actor_rollout_ref.actor", actor), ("actor_rollout_ref.ref", ref)):
        strategy = str(node.get("strategy", "fsdp"))
        if strategy not in ("fsdp", "fsdp2"):
            raise NotImplementedError(
                f"{key}.strategy={strategy}: the SRPO worker extends verl's FSDP engine worker only "
                "(Megatron and other engines are not implemented); use fsdp or fsdp2"
            )
    if str(ref.get("strategy", "fsdp")) != str(actor.get("strategy", "fsdp")):
        raise ValueError(
            f"actor_rollout_ref.ref.strategy={ref.strategy} != actor_rollout_ref.actor.strategy={actor.strategy}: "
            "the EMA teacher is built from the ref config and paired with the student shard by shard"
        )
    check_lora_config(config)
    actor_fsdp, ref_fsdp = actor.get("fsdp_config", {}) or {}, ref.get("fsdp_config", {}) or {}
    for sub in ("fsdp_size", "wrap_policy"):
        a, r = actor_fsdp.get(sub, None), ref_fsdp.get(sub, None)
        if a != r:
            raise ValueError(
                f"actor_rollout_ref.ref.fsdp_config.{sub}={r} differs from actor_rollout_ref.actor.fsdp_config."
                f"{sub}={a}: the EMA teacher (built from the ref config) is updated shard by shard by "
                "parameter name, so both must be sharded alike"
            )
    for key, node in (("actor", actor), ("actor", actor_fsdp), ("ref", ref), ("ref", ref_fsdp)):
        where = "fsdp_config." if node is actor_fsdp or node is ref_fsdp else ""
        if _bool_setting(node, "pad_to_length", f"actor_rollout_ref.{key}.{where}pad_to_length", False):
            raise ValueError(
                f"actor_rollout_ref.{key}.{where}pad_to_length=True: verl refuses a static pad with top-K "
                "distillation, which SRPO uses (it would raise at the first update); set it to False"
            )
    if not _bool_setting(
        ref_fsdp, "reshard_after_forward", "actor_rollout_ref.ref.fsdp_config.reshard_after_forward", True
    ):
        raise ValueError(
            "actor_rollout_ref.ref.fsdp_config.reshard_after_forward=False: the EMA teacher (built from the ref "
            "config) would keep unsharded parameters between forwards, which the EMA step, writing the "
            "shards, does not update; set it to True"
        )
    qat = _bool_setting(
        actor_fsdp.get("qat", None) or {}, "enable", "actor_rollout_ref.actor.fsdp_config.qat.enable", False
    )
    if qat:
        raise NotImplementedError(
            "actor_rollout_ref.actor.fsdp_config.qat.enable=True: verl applies QAT to training engines only, so "
            "the EMA teacher (a forward-only engine) would not pair parameter for parameter with the "
            "quantization-aware student; set it to False"
        )
    vision = _vision_model_type(model.get("path", None))
    if vision is not None:
        raise NotImplementedError(
            f"actor_rollout_ref.model.path={model.path}: a {vision} vision-language model; the SRPO teacher pass "
            "re-prompts with text only (no image inputs, 1-D position ids), so its scores would not be the "
            "teacher's. Use a text-only model"
        )
    teacher_dtype = _dtype_name(ref_fsdp.get("model_dtype", "fp32"))
    if teacher_dtype not in ("fp32", "float32"):
        raise ValueError(
            f"actor_rollout_ref.ref.fsdp_config.model_dtype={teacher_dtype}: the EMA teacher must be kept in "
            "fp32 (a bf16 teacher rounds most updates of size rate * (theta - theta') away at rate 0.05)"
        )
    correction = config.algorithm.get("rollout_correction", None) or {}
    if _bool_setting(correction, "bypass_mode", "algorithm.rollout_correction.bypass_mode", False):
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode=True: verl then skips its old-log-prob forward, in which "
            "SRPO takes the student's top-K ids of the teacher rows (no second student forward); set it to False"
        )
    if _bool_setting(actor, "use_kl_loss", "actor_rollout_ref.actor.use_kl_loss", False):
        raise ValueError(
            "actor_rollout_ref.actor.use_kl_loss=True: the SRPO loss replaces verl's policy loss and has no "
            "KL term (the paper uses none); it would be silently ignored. Set it to False"
        )
    entropy_coeff = actor.get("entropy_coeff", 0) or 0
    if isinstance(entropy_coeff, bool) or not isinstance(entropy_coeff, (int, float)):
        raise ValueError(
            f"actor_rollout_ref.actor.entropy_coeff={entropy_coeff!r}: must be a number, not a "
            f"{type(entropy_coeff).__name__}"
        )
    if entropy_coeff != 0:
        raise ValueError(
            f"actor_rollout_ref.actor.entropy_coeff={entropy_coeff}: the SRPO loss has no entropy bonus; it "
            "would be silently ignored. Set it to 0"
        )
    agg = actor.get("loss_agg_mode", "token-mean")
    if agg != "token-mean":
        raise ValueError(
            f"actor_rollout_ref.actor.loss_agg_mode={agg}: the SRPO objective has one token-mean denominator "
            "(all valid response tokens of the mini-batch); other aggregations would be silently ignored"
        )
    if actor.get("loss_scale_factor", None) is not None:
        raise ValueError(
            f"actor_rollout_ref.actor.loss_scale_factor={actor.loss_scale_factor}: not applied by the SRPO loss "
            "(it would be silently ignored); leave it null"
        )
    if _bool_setting(config.trainer, "del_local_ckpt_after_load", "trainer.del_local_ckpt_after_load", False):
        raise ValueError(
            "trainer.del_local_ckpt_after_load=True: verl deletes the checkpoint directory after loading the "
            "actor, before the EMA teacher's shards in it are read; set it to False"
        )

"""Input checks for SRPO: the trainer configuration (driver), the data files (driver) and each
step's batch (trainer). Pure functions: no Ray, no TransferQueue; the callers pass plain values.

Every bad input ends in one of two ways, never in a silent wrong update:
  - an error naming the field, the offending value and, for batch/data problems, the rows;
  - a documented behaviour that is counted in the returned metrics (and logged at WARNING when it
    means a row cannot take part in SRPO), e.g. an empty response is never routed to the teacher.
docs/reliability.md lists every case, its outcome and the test that holds it.
"""

# device: host-side module (driver and trainer checks on host tensors); see tests/gpu/test_device_discipline.py
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from srpo_verl import core_algos
from srpo_verl.algo_config import SRPOConfig, srpo_config_of

logger = logging.getLogger(__name__)

SRPO_TRAINER_MODES = ("srpo", "srpo_colocate_async")
METRIC_PREFIX = "srpo/check/"


def _rows(indices: Iterable[int], limit: int = 10) -> str:
    """`[3, 7, 9]`, or the first `limit` and a count: error messages stay one line."""
    indices = list(indices)
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}]" if len(indices) <= limit else f"[{shown}, ...] ({len(indices)} rows)"


# ============================================================================ trainer configuration


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


def verl_version_problem(installed: str, supported: str) -> Optional[str]:
    """Why `installed` verl cannot run the SRPO trainer, or None. The trainer and worker subclass
    verl's v1 trainer and engine worker and override private hooks that change between releases."""
    if installed == supported:
        return None
    return (
        f"srpo_verl's SRPO trainer supports verl {supported} only, but verl {installed} is installed: it "
        f"overrides private hooks of verl's v1 trainer and engine worker. Install verl=={supported}."
    )


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
    if srpo is None:
        return None

    if verl_version is None:
        import verl

        verl_version = getattr(verl, "__version__", "unknown")
    from srpo_verl import SUPPORTED_VERL

    problem = verl_version_problem(str(verl_version), SUPPORTED_VERL)
    if problem:
        raise RuntimeError(problem)

    arr = config.actor_rollout_ref
    n = _int_setting(arr.rollout, "n", "actor_rollout_ref.rollout.n")
    if n is None or n < 2:
        raise ValueError(
            f"actor_rollout_ref.rollout.n={n!r}: SRPO needs groups of >= 2 responses per prompt "
            "(a sample is never its own demonstration, so with n=1 no sample could ever have a teacher)"
        )
    for key, node in (("actor_rollout_ref.model", arr.model), ("actor_rollout_ref.actor", arr.actor)):
        if not _bool_setting(node, "use_remove_padding", f"{key}.use_remove_padding", True):
            raise ValueError(
                f"{key}.use_remove_padding=False: the SRPO teacher pass and loss work on packed sequences; "
                "set actor_rollout_ref.model.use_remove_padding=True"
            )
    for key in ("actor", "ref"):
        name = f"actor_rollout_ref.{key}.ulysses_sequence_parallel_size"
        sp = _int_setting(arr[key], "ulysses_sequence_parallel_size", name)
        if sp is not None and sp > 1:
            raise NotImplementedError(
                f"{name}={sp}: Ulysses sequence parallelism is "
                "not implemented in the SRPO teacher pass; set it to 1"
            )
    max_prompt = _int_setting(config.data, "max_prompt_length", "data.max_prompt_length")
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


def _dtype_name(value) -> str:
    return str(value).replace("torch.", "").lower()


def check_gpu_path_config(config) -> None:
    """Settings that would break SRPO on GPU, or silently change what it optimises, refused by key.

    The SRPO loss replaces verl's whole policy loss (so verl's loss options would be ignored), reads the
    student's logits in a logits processor, and keeps an EMA teacher paired with the student shard by
    shard and saved beside the actor checkpoint. Each refusal below names the key and the reason.
    """
    arr = config.actor_rollout_ref
    model, actor, ref = arr.model, arr.actor, arr.ref
    for key, node in (("actor_rollout_ref.model", model), ("actor_rollout_ref.actor", actor)):
        if node.get("use_fused_kernels", False):
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
    if (model.get("lora_rank", 0) or 0) > 0 or ((model.get("lora", {}) or {}).get("rank", 0) or 0) > 0:
        raise NotImplementedError(
            "actor_rollout_ref.model.lora_rank > 0: an EMA teacher of a LoRA student is not implemented "
            "(the teacher would average base weights that never change); set lora_rank=0"
        )
    actor_fsdp, ref_fsdp = actor.get("fsdp_config", {}) or {}, ref.get("fsdp_config", {}) or {}
    for sub in ("fsdp_size", "wrap_policy"):
        a, r = actor_fsdp.get(sub, None), ref_fsdp.get(sub, None)
        if a != r:
            raise ValueError(
                f"actor_rollout_ref.ref.fsdp_config.{sub}={r} differs from actor_rollout_ref.actor.fsdp_config."
                f"{sub}={a}: the EMA teacher (built from the ref config) is updated shard by shard by "
                "parameter name, so both must be sharded alike"
            )
    teacher_dtype = _dtype_name(ref_fsdp.get("model_dtype", "fp32"))
    if teacher_dtype not in ("fp32", "float32"):
        raise ValueError(
            f"actor_rollout_ref.ref.fsdp_config.model_dtype={teacher_dtype}: the EMA teacher must be kept in "
            "fp32 (a bf16 teacher rounds most updates of size rate * (theta - theta') away at rate 0.05)"
        )
    if actor.get("use_kl_loss", False):
        raise ValueError(
            "actor_rollout_ref.actor.use_kl_loss=True: the SRPO loss replaces verl's policy loss and has no "
            "KL term (the paper uses none); it would be silently ignored. Set it to False"
        )
    entropy_coeff = actor.get("entropy_coeff", 0) or 0
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
    if config.trainer.get("del_local_ckpt_after_load", False):
        raise ValueError(
            "trainer.del_local_ckpt_after_load=True: verl deletes the checkpoint directory after loading the "
            "actor, before the EMA teacher's shards in it are read; set it to False"
        )


# ============================================================================ data files


class DataReport(NamedTuple):
    rows: int
    overlong_rows: list[int]  # rows whose prompt exceeds max_prompt_length (allowed by the config)
    max_prompt_tokens: Optional[int]  # None when lengths were not measured


def _as_list(value) -> Optional[list]:
    if isinstance(value, np.ndarray):
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_data_rows(
    rows: Sequence[dict],
    *,
    source: str = "data",
    prompt_key: str = "prompt",
    require_reward_fields: bool = True,
    tokenizer=None,
    max_prompt_length: Optional[int] = None,
    overlong: str = "error",
    apply_chat_template_kwargs: Optional[dict] = None,
) -> DataReport:
    """Check verl RL rows ({prompt_key: chat messages, data_source, reward_model.ground_truth, ...}).

    Errors (ValueError naming `source`, the field and the row indices):
      - `prompt_key` missing, or not a list of {"role", "content"} messages;
      - a prompt without a user turn (the teacher prompt rewrites the last user turn), or whose
        user turns are all empty;
      - with `require_reward_fields` (verl's built-in reward managers read both), a missing
        `data_source` or `reward_model.ground_truth`, or a gold answer the paper's task reward cannot
        use (`srpo_verl.tasks.gold_problem`: an MCQ answer that is not one of the row's labels, a
        ToolAlpaca answer that is not a list of tool calls);
      - with a tokenizer and `max_prompt_length`, prompts longer than the limit when
        overlong="error". overlong="filter" (verl drops them: data.filter_overlong_prompts) and
        "truncate" (verl 0.9.1's agent loop keeps the last max_prompt_length tokens) only report them.
    """
    if overlong not in ("error", "filter", "truncate"):
        raise ValueError(f"overlong={overlong!r}: must be error, filter or truncate")
    problems: dict[str, list[int]] = {}

    def bad(what: str, i: int) -> None:
        problems.setdefault(what, []).append(i)

    messages_of: list[Optional[list]] = []
    for i, row in enumerate(rows):
        messages = _as_list(row.get(prompt_key)) if prompt_key in row else None
        if prompt_key not in row or _missing(row.get(prompt_key)):
            bad(f"missing `{prompt_key}`", i)
        elif messages is None or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            bad(f"`{prompt_key}` is not a list of {{role, content}} chat messages", i)
            messages = None
        elif not messages:
            bad(f"empty `{prompt_key}` (no messages)", i)
            messages = None
        else:
            users = [m for m in messages if m.get("role") == "user"]
            if not users:
                bad(f"`{prompt_key}` has no user turn (the teacher prompt rewrites the last user turn)", i)
            elif all(not str(m.get("content") or "").strip() for m in users):
                bad(f"`{prompt_key}` has only empty user turns", i)
        messages_of.append(messages)
        if require_reward_fields:
            if _missing(row.get("data_source")) or str(row.get("data_source")).strip() == "":
                bad("missing `data_source`", i)
            reward_model = row.get("reward_model")
            if not isinstance(reward_model, dict) or _missing(reward_model.get("ground_truth")):
                bad("missing `reward_model.ground_truth`", i)
            else:  # the paper's tasks: a gold answer their reward cannot match would score 0 silently
                from srpo_verl.tasks import gold_problem

                problem = gold_problem(row.get("data_source"), reward_model["ground_truth"], row.get("extra_info"))
                if problem:
                    bad(problem, i)
    if problems:
        detail = "; ".join(f"{what} at rows {_rows(idx)}" for what, idx in problems.items())
        raise ValueError(f"{source}: {detail}")

    if tokenizer is None or max_prompt_length is None:
        return DataReport(rows=len(rows), overlong_rows=[], max_prompt_tokens=None)
    kwargs = dict(apply_chat_template_kwargs or {})
    lengths = []
    for messages in messages_of:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        lengths.append(len(ids))
    over = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if over and overlong == "error":
        raise ValueError(
            f"{source}: prompts longer than data.max_prompt_length={max_prompt_length} at rows {_rows(over)} "
            f"(longest {max(lengths)} tokens). verl 0.9.1 would cut them from the left, dropping the system "
            "prompt and the start of the question, while the teacher prompt keeps them. Raise "
            "data.max_prompt_length, or set data.filter_overlong_prompts=True to drop them, or "
            "data.truncation=left to accept the cut"
        )
    if over:
        logger.warning(
            "%s: %d prompt(s) longer than data.max_prompt_length=%d (rows %s) will be %s",
            source,
            len(over),
            max_prompt_length,
            _rows(over),
            "dropped by verl (data.filter_overlong_prompts=True)"
            if overlong == "filter"
            else "cut from the left by verl",
        )
    return DataReport(rows=len(rows), overlong_rows=over, max_prompt_tokens=max(lengths) if lengths else 0)


def _read_rows(path: str) -> list[dict]:
    import pandas as pd

    if path.endswith(".parquet"):
        frame = pd.read_parquet(path)
    elif path.endswith(".json") or path.endswith(".jsonl"):
        frame = pd.read_json(path, lines=path.endswith(".jsonl"))
    else:
        raise ValueError(f"data file {path}: unsupported format (verl reads .parquet, .json, .jsonl)")
    return frame.to_dict(orient="records")


def _load_tokenizer(config):
    """The model's tokenizer in the driver, or None (with a WARNING) when it cannot be loaded here."""
    model = config.actor_rollout_ref.model
    path = model.path
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            os.path.expanduser(str(path)), trust_remote_code=bool(model.get("trust_remote_code", False))
        )
        if model.get("custom_chat_template", None):  # verl applies it to the tokenizer it loads
            tokenizer.chat_template = model.custom_chat_template
        return tokenizer
    except Exception as exc:  # noqa: BLE001 - the length check is skipped, loudly; verl loads it later
        logger.warning("prompt length check skipped: tokenizer of %s not loadable in the driver (%s)", path, exc)
        return None


def check_data_files(config, *, tokenizer: Any = "auto") -> dict[str, DataReport]:
    """`check_data_rows` on every local file of data.train_files and data.val_files.

    Remote paths (hdfs://, s3://, ...) are left to verl, as are custom dataset classes and
    multimodal data. tokenizer="auto" loads the model's tokenizer; None skips the length check.
    """
    data = config.data
    if (data.get("custom_cls", {}) or {}).get("path"):
        logger.info("data checks skipped: custom dataset class %s", data.custom_cls.path)
        return {}
    reward = config.get("reward", {}) or {}
    require_reward_fields = (reward.get("reward_manager", {}) or {}).get("source", "register") == "register" and not (
        (reward.get("reward_model", {}) or {}).get("enable", False)
    )
    if data.get("filter_overlong_prompts", False):
        overlong = "filter"
    else:
        overlong = "error" if data.get("truncation", "error") == "error" else "truncate"
    if tokenizer == "auto":
        tokenizer = _load_tokenizer(config)
    reports = {}
    for key in ("train_files", "val_files"):
        files = data.get(key, None)
        if files is None:
            continue
        for path in [files] if isinstance(files, str) else list(files):
            path = str(path)
            if "://" in path:
                continue
            local = os.path.expanduser(path)
            if not os.path.exists(local):
                raise ValueError(f"data.{key}: {path} does not exist")
            reports[path] = check_data_rows(
                _read_rows(local),
                source=f"data.{key} {path}",
                prompt_key=data.get("prompt_key", "prompt"),
                require_reward_fields=require_reward_fields,
                tokenizer=tokenizer,
                max_prompt_length=data.get("max_prompt_length", None),
                overlong=overlong,
                apply_chat_template_kwargs=dict(data.get("apply_chat_template_kwargs", {}) or {}),
            )
    return reports


# ============================================================================ one step's batch


class StepInputs(NamedTuple):
    """Checked per-row inputs of one SRPO step (B rows)."""

    rewards: torch.Tensor  # (B,) float32, finite: the sequence-level reward r_i
    uid: np.ndarray  # (B,) object: group labels; padding rows get their own "__pad_<i>" group
    real: torch.Tensor  # (B,) bool: not a padding row added by verl
    usable: torch.Tensor  # (B,) bool: real and with >= 1 valid response token
    metrics: dict  # counts to log, keys "srpo/check/..."


def _missing_uid(u) -> bool:
    if u is None or (isinstance(u, float) and math.isnan(u)):
        return True
    text = str(u).strip()
    # "None"/"nan" are what str() makes of a missing value upstream; a real uid is never that.
    return text == "" or text.lower() in ("none", "nan")


def _reward_value(x) -> Optional[float]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        if x.dim() > 1:
            raise ValueError(
                f"rewards: a row has shape {tuple(x.shape)}; pass one scalar or a 1-D token-level row per response"
            )
        return float(x.detach().double().sum())  # token-level rewards: verl puts the score on one token
    if isinstance(x, (bool, int, float, np.integer, np.floating)):
        return float(x)
    raise ValueError(f"rewards: value {x!r} of type {type(x).__name__} is not a number")


def _unbind(rows, name: str, n: int) -> list:
    """Per-row values of a (B, T) tensor, a nested (jagged) tensor or a list, checked to be B."""
    if isinstance(rows, torch.Tensor):
        rows = list(rows.unbind())
    rows = list(rows)
    if len(rows) != n:
        raise ValueError(f"{name}: {len(rows)} rows for a batch of {n}")
    return [torch.as_tensor(r).reshape(-1) for r in rows]


def _check_one_prompt_per_uid(prompts: list[torch.Tensor], labels: np.ndarray, real: torch.Tensor) -> None:
    """ValueError naming the uid and rows when real rows of one uid hold different prompt tokens: one
    prompt's correct answer would become the other's demonstration. verl pads the prompts of a batch
    alike, so equal prompts have equal rows."""
    seen: dict[str, dict[bytes, list[int]]] = {}
    for i, p in enumerate(prompts):
        if real[i]:
            seen.setdefault(labels[i], {}).setdefault(p.to(torch.int64).numpy().tobytes(), []).append(i)
    mixed = {label: list(by.values()) for label, by in seen.items() if len(by) > 1}
    if mixed:
        label, parts = next(iter(mixed.items()))
        detail = " vs ".join(f"rows {_rows(rows)}" for rows in parts[:3])
        raise ValueError(
            f"uid: {len(mixed)} uid(s) shared by different prompts (e.g. {label!r}: {detail}): one prompt's "
            "responses would become the other's demonstrations"
        )


def check_step_inputs(
    rewards,
    uid,
    response_mask,
    *,
    real=None,
    group_size: Optional[int] = None,
    responses=None,
    eos_token_id=None,
    max_response_length: Optional[int] = None,
    prompts=None,
) -> StepInputs:
    """Check one step's rewards, group labels and responses before the advantage and the routing.

    rewards: B per-row rewards: a (B,) tensor, or a list of numbers / 0-d or 1-D (token-level,
        summed) tensors / None. uid: B group labels (verl's `uid`), or None if the field is absent.
    response_mask: B per-row 0/1 masks (a (B, T) tensor or a list of 1-D tensors, e.g. a nested
        tensor's unbind()). real: (B,) bool, False for padding rows (default all True).
    group_size: actor_rollout_ref.rollout.n; responses, eos_token_id (int or ints) and
        max_response_length: only to count responses truncated without EOS.
    prompts: B per-row prompt token ids (verl's `prompts`: (B, T), nested, or a list), to check
        that the rows of a uid share one prompt (with or without `group_size`).

    Raises ValueError naming the field and the rows for: rewards None / NaN / inf / non-numeric /
    of the wrong length; uid absent, missing (None, NaN, "", "None") on a real row, or shared by
    more than `group_size` real rows or by real rows with different prompts (two prompts would
    exchange demonstrations); response_mask, responses or prompts of the wrong length or not row-aligned.
    Counts (returned `metrics`, WARNING-logged when a row cannot take part in SRPO):
      empty_response_rows  real rows with no valid response token: never routed to the teacher nor
                           used as a demonstration; their tokens contribute nothing to the loss;
      singleton_groups     real groups of one row: no sibling, so no teacher; GRPO advantage 0;
      incomplete_groups    real groups with 1 < size < group_size (routing works within them);
      truncated_rows       responses at max_response_length without EOS: treated as any other
                           response (the reward decides c_i);
      non_binary_rewards   rewards other than 0/1: c_i = [r_i >= success_threshold], A_i uses r_i.
    """
    if uid is None:
        raise ValueError("uid: the batch has no `uid` field; SRPO groups responses by the prompt's uid")
    if isinstance(rewards, torch.Tensor):
        if not rewards.is_nested and rewards.dim() != 1:
            raise ValueError(
                f"rewards: shape {tuple(rewards.shape)}; pass (B,) sequence-level rewards or a list of token-level rows"
            )
        rewards = list(rewards.unbind())
    rewards = list(rewards)
    uid = list(uid)
    n = len(uid)
    if len(rewards) != n:
        raise ValueError(f"rewards: {len(rewards)} values for a batch of {n} rows (uid has {n})")
    real = torch.ones(n, dtype=torch.bool) if real is None else torch.as_tensor(real, dtype=torch.bool).reshape(-1)
    if real.numel() != n:
        raise ValueError(f"real: {real.numel()} flags for a batch of {n} rows")

    values = [_reward_value(r) for r in rewards]
    none_rows = [i for i, v in enumerate(values) if v is None]
    if none_rows:
        raise ValueError(
            f"rewards: None at rows {_rows(none_rows)}: the reward function returned no score; a missing "
            "reward is not a wrong answer, fix the reward function"
        )
    bad_rows = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad_rows:
        raise ValueError(
            f"rewards: non-finite values at rows {_rows(bad_rows)} "
            f"({', '.join(str(values[i]) for i in bad_rows[:3])}); "
            "a NaN/inf reward would corrupt the group advantage and the routing"
        )

    missing = [i for i, u in enumerate(uid) if real[i] and _missing_uid(u)]
    if missing:
        raise ValueError(
            f"uid: missing (None, NaN or empty) at rows {_rows(missing)}; every response needs its prompt's uid"
        )
    # Padding rows (added by verl for divisibility) form their own groups.
    labels = np.array([str(u) if real[i] else f"__pad_{i}" for i, u in enumerate(uid)], dtype=object)
    sizes = Counter(labels[i] for i in range(n) if real[i])
    if group_size is not None:
        oversized = sorted(label for label, size in sizes.items() if size > group_size)
        if oversized:
            rows = [i for i in range(n) if labels[i] in set(oversized)]
            raise ValueError(
                f"uid: {len(oversized)} group(s) have more than actor_rollout_ref.rollout.n={group_size} rows "
                f"(e.g. {oversized[0]!r}: {sizes[oversized[0]]}, rows {_rows(rows)}): different prompts share a uid "
                "and would use each other's responses as demonstrations"
            )

    if prompts is not None:
        _check_one_prompt_per_uid(_unbind(prompts, "prompts", n), labels, real)

    masks = [m.bool() for m in _unbind(response_mask, "response_mask", n)]
    valid = [int(m.sum()) for m in masks]
    resp = None
    if responses is not None:
        resp = _unbind(responses, "responses", n)
        misaligned = [i for i in range(n) if resp[i].numel() != masks[i].numel()]
        if misaligned:
            raise ValueError(f"responses: length differs from response_mask at rows {_rows(misaligned)}")
    usable = real & torch.tensor([v > 0 for v in valid], dtype=torch.bool)
    empty = [i for i in range(n) if real[i] and valid[i] == 0]

    truncated = 0
    if resp is not None and eos_token_id is not None and max_response_length is not None:
        eos = {int(eos_token_id)} if isinstance(eos_token_id, (int, np.integer)) else {int(e) for e in eos_token_id}
        for i in range(n):
            if real[i] and valid[i] >= max_response_length:
                truncated += int(int(resp[i][masks[i]][-1]) not in eos)

    singletons = [label for label, size in sizes.items() if size == 1]
    incomplete = [label for label, size in sizes.items() if group_size is not None and 1 < size < group_size]
    reward_t = torch.tensor(values, dtype=torch.float32)
    non_binary = int(((reward_t != 0) & (reward_t != 1) & real).sum())
    if empty:
        logger.warning(
            "SRPO step: %d response(s) with no valid token (rows %s): never routed to the teacher nor used as "
            "a demonstration",
            len(empty),
            _rows(empty),
        )
    if singletons:
        logger.warning(
            "SRPO step: %d group(s) of a single response (e.g. uid %r): no sibling, so no teacher; GRPO advantage 0",
            len(singletons),
            singletons[0],
        )
    metrics = {
        METRIC_PREFIX + "empty_response_rows": len(empty),
        METRIC_PREFIX + "singleton_groups": len(singletons),
        METRIC_PREFIX + "incomplete_groups": len(incomplete),
        METRIC_PREFIX + "truncated_rows": truncated,
        METRIC_PREFIX + "non_binary_rewards": non_binary,
    }
    return StepInputs(rewards=reward_t, uid=labels, real=real, usable=usable, metrics=metrics)


def route_step(step: StepInputs, *, success_threshold: float, has_feedback=None, demonstrable=None) -> core_algos.Routing:
    """SRPO routing of a checked step: `core_algos.routing_mask` restricted to the step's usable rows.

    A row without a valid response token can neither be distilled (nothing to score) nor serve as a
    demonstration (an empty "correct solution" teaches nothing); padding rows neither.
    has_feedback: optional (B,) bool, a non-empty feedback string (algorithm.srpo.use_feedback);
    demonstrable: optional (B,) bool, responses with content a teacher can read.
    """
    return core_algos.routing_mask(
        step.rewards,
        step.uid,
        success_threshold=success_threshold,
        has_feedback=has_feedback,
        usable=step.usable,
        demonstrable=demonstrable,
    )

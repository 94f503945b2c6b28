"""Checks of the local data files (data.train_files, data.val_files), run in the driver before Ray
starts (`main_ppo.prepare`, `python -m srpo_verl check`). A bad row raises a ValueError naming the
file, the field and the rows; prompts over the length limit that verl would drop or cut are logged.
docs/reliability.md lists every case and the test that holds it.
"""

# device: host-side module (driver data checks); see tests/gpu/test_device_discipline.py
from __future__ import annotations

import logging
import math
import os
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from srpo_verl.integration.step_checks import format_rows

logger = logging.getLogger(__name__)


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
        detail = "; ".join(f"{what} at rows {format_rows(idx)}" for what, idx in problems.items())
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
            f"{source}: prompts longer than data.max_prompt_length={max_prompt_length} at rows {format_rows(over)} "
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
            format_rows(over),
            "dropped by verl (data.filter_overlong_prompts=True)"
            if overlong == "filter"
            else "cut from the left by verl",
        )
    return DataReport(rows=len(rows), overlong_rows=over, max_prompt_tokens=max(lengths) if lengths else 0)


def read_rows(path: str) -> list[dict]:
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
                read_rows(local),
                source=f"data.{key} {path}",
                prompt_key=data.get("prompt_key", "prompt"),
                require_reward_fields=require_reward_fields,
                tokenizer=tokenizer,
                max_prompt_length=data.get("max_prompt_length", None),
                overlong=overlong,
                apply_chat_template_kwargs=dict(data.get("apply_chat_template_kwargs", {}) or {}),
            )
    return reports

"""Checks of the local data files (data.train_files, data.val_files), run in the driver before Ray
starts (`main_ppo.prepare`, `python -m srpo_verl check`). A bad row raises a ValueError naming the
file, the field and the rows; prompts over the length limit that verl would drop or cut are logged.
Which rows verl drops is read from verl's own dataset, built here as verl's trainer builds it
(`create_rl_dataset` on `data.*` with the model's tokenizer and processor), so the check follows
verl's filtering rather than a copy of it. docs/reliability.md lists every case and its test.
"""

# device: host-side module (driver data checks); see tests/gpu/test_device_discipline.py
from __future__ import annotations

import functools
import logging
import math
import os
import sys
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from srpo_verl.integration.step_checks import format_rows
from srpo_verl.integration.teacher_prompt import gold_teacher_messages

logger = logging.getLogger(__name__)


class DataReport(NamedTuple):
    rows: int
    overlong_rows: list[int]  # rows whose prompt exceeds max_prompt_length (allowed by the config)
    max_prompt_tokens: Optional[int]  # None when lengths were not measured
    teacher_overhead: Optional[int] = None  # most tokens a teacher template adds to a prompt; None: not measured
    verl_rows: Optional[int] = None  # rows verl's own dataset keeps; None: verl's dataset was not built


class TeacherSpec(NamedTuple):
    """What the SRPO teacher step will do with each row's prompt (the `algorithm.srpo` block)."""

    templates: tuple  # ((config key, template, slot), ...): slot "solution" or "feedback"
    limit: Optional[int]  # the teacher prompt budget in tokens; None: not known here
    limit_name: str  # where the budget comes from, for messages


def teacher_spec_of(config) -> Optional[TeacherSpec]:
    """The teacher step's templates and budget from a trainer config; None without algorithm.srpo."""
    from srpo_verl.algo_config import srpo_config_of

    srpo = srpo_config_of(config)
    if srpo is None:
        return None
    templates = [("algorithm.srpo.reprompt_template", srpo.reprompt_template, "solution")]
    if srpo.use_feedback:
        templates.append(("algorithm.srpo.feedback_template", srpo.feedback_template, "feedback"))
    limit, name = srpo.max_teacher_prompt_length, "algorithm.srpo.max_teacher_prompt_length"
    if limit is None:  # the trainer's default budget
        prompt, response = config.data.get("max_prompt_length", None), config.data.get("max_response_length", None)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (prompt, response))
        limit = prompt + response if ints else None
        name = "data.max_prompt_length + data.max_response_length (algorithm.srpo.max_teacher_prompt_length unset)"
    return TeacherSpec(tuple(templates), limit, name)


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
    teacher: Optional[TeacherSpec] = None,
    check_data_sources: bool = False,
    processor=None,
    tools: Optional[list] = None,
    verl_dataset: Optional[Callable[[], Any]] = None,
    teacher_prompted_validation: Optional[str] = None,
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
        "truncate" (verl 0.9.1's agent loop keeps the last max_prompt_length tokens) only report them;
        lengths are counted as verl's dataset counts them (`processor`, `tools`: verl's tool schemas).
        `verl_dataset` (a tokenizer needed) builds verl's own dataset of these rows once they pass the
        row checks: its settings (limit, filtering, truncation, template kwargs, tools) replace the
        arguments, and with filtering the rows reported over the limit are the ones it dropped, whatever
        the count here says (a disagreement is logged);
      - a prompt the chat template fails on (verl would drop it silently, or fail in the rollout);
      - with `teacher` (an SRPO run), what the teacher step would refuse: a last user turn that is
        not text (a list of parts, None, NaN, a number) or is blank, or that holds the builder's
        placeholder; with a tokenizer and a budget, a row whose teacher prompt (template and question,
        measured with this tokenizer) leaves no room for one demonstration token, and a budget
        below data.max_prompt_length plus the template's measured overhead plus one;
      - with `check_data_sources`, a `data_source` the reward function does not know (it would
        raise at the first reward call);
      - with `teacher_prompted_validation` (the reprompt template, for the guard's teacher-prompted
        validation of a data.val_files file), a row without a gold answer to show the teacher, and,
        with a tokenizer and `max_prompt_length`, a row whose teacher-prompted chat exceeds the limit
        (verl's rollout would cut the gold answer out of it).
    Logged at WARNING: ToolAlpaca gold tool names the reference rule can never read (not one word).
    """
    if overlong not in ("error", "filter", "truncate"):
        raise ValueError(f"overlong={overlong!r}: must be error, filter or truncate")
    problems: dict[str, list[int]] = {}

    def bad(what: str, i: int) -> None:
        problems.setdefault(what, []).append(i)

    messages_of: list[Optional[list]] = []
    teacher_rows: list[int] = []  # rows whose last user turn the teacher builder can rewrite
    source_problems: dict[Any, Optional[str]] = {}
    unreadable_tools: list[int] = []
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
            elif teacher is not None:
                problem = _teacher_question_problem(users[-1].get("content"))
                if problem:
                    bad(f"`{prompt_key}`'s last user turn {problem}", i)
                else:
                    teacher_rows.append(i)
        messages_of.append(messages)
        if require_reward_fields:
            data_source = row.get("data_source")
            if _missing(data_source) or str(data_source).strip() == "":
                bad("missing `data_source`", i)
            elif check_data_sources:
                if data_source not in source_problems:
                    from srpo_verl.tasks import unknown_data_source

                    source_problems[data_source] = unknown_data_source(data_source)
                if source_problems[data_source]:
                    bad(source_problems[data_source] + " (the reward would raise at its first call)", i)
            reward_model = row.get("reward_model")
            if not isinstance(reward_model, dict) or _missing(reward_model.get("ground_truth")):
                bad("missing `reward_model.ground_truth`", i)
            else:  # the paper's tasks: a gold answer their reward cannot match would score 0 silently
                from srpo_verl.tasks import gold_problem

                problem = gold_problem(data_source, reward_model["ground_truth"], row.get("extra_info"))
                if problem:
                    bad(problem, i)
                elif _is_tool_row(data_source):
                    from srpo_verl.tasks.toolalpaca import unreadable_actions

                    if unreadable_actions(reward_model["ground_truth"], row.get("extra_info")):
                        unreadable_tools.append(i)
    if unreadable_tools:
        logger.warning(
            "%s: %d row(s) (rows %s) have a gold tool name that is not one word (e.g. `[Optional]name`): the "
            "reference rule reads `Action: <word>`, so they score 0 whatever the response (the lenient rule, "
            "reward_kwargs.lenient=true, can match them); see docs/reproduction.md",
            source,
            len(unreadable_tools),
            format_rows(unreadable_tools),
        )
    if problems:
        detail = "; ".join(f"{what} at rows {format_rows(idx)}" for what, idx in problems.items())
        raise ValueError(f"{source}: {detail}")
    gold_chats = None
    if teacher_prompted_validation is not None:
        gold_chats = [
            gold_teacher_messages(m, row.get("reward_model"), reprompt_template=teacher_prompted_validation)
            for m, row in zip(messages_of, rows)
        ]
        if any(c is None for c in gold_chats):
            raise ValueError(
                f"{source}: algorithm.srpo.guard.teacher_prompted_validation shows the teacher each validation "
                "row's reward_model.ground_truth, missing at rows "
                f"{format_rows([i for i, c in enumerate(gold_chats) if c is None])}; turn it off for this data"
            )

    if tokenizer is None:
        return DataReport(rows=len(rows), overlong_rows=[], max_prompt_tokens=None)
    verl_kept = None
    if verl_dataset is not None:  # verl's settings as its dataset read them from data.* (its defaults, not ours)
        dataset = verl_dataset()
        max_prompt_length = dataset.max_prompt_length
        if dataset.filter_overlong_prompts:
            overlong = "filter"
        else:
            overlong = "error" if dataset.truncation == "error" else "truncate"
        apply_chat_template_kwargs, tools = dataset.apply_chat_template_kwargs, dataset.tool_schemas
        verl_kept = kept_rows(rows, dataset, prompt_key)
    kwargs = dict(apply_chat_template_kwargs or {})
    lengths: Optional[list[int]] = None
    over: list[int] = []
    if max_prompt_length is not None:
        lengths = prompt_lengths(messages_of, tokenizer, processor, kwargs, tools, source)
        over = [i for i, n in enumerate(lengths) if n > max_prompt_length]
        if overlong == "filter" and verl_kept is not None:
            # verl's dataset decides what it drops; a different count here means our measure drifted from it.
            kept = set(verl_kept)
            dropped = [i for i in range(len(rows)) if i not in kept]
            if dropped != over:
                logger.warning(
                    "%s: verl's dataset drops rows %s; measured here, rows %s are over data.max_prompt_length=%d. "
                    "The report follows verl's dataset",
                    source,
                    format_rows(dropped),
                    format_rows(over),
                    max_prompt_length,
                )
            over = dropped
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
    if gold_chats is not None and max_prompt_length is not None:
        dropped = set(over) if overlong == "filter" else set()
        kept = [i for i in range(len(rows)) if i not in dropped]
        gold_lengths = prompt_lengths([gold_chats[i] for i in kept], tokenizer, processor, kwargs, tools, source)
        too_long = [i for i, n in zip(kept, gold_lengths) if n > max_prompt_length]
        if too_long:
            raise ValueError(
                f"{source}: algorithm.srpo.guard.teacher_prompted_validation: the teacher-prompted chats of rows "
                f"{format_rows(too_long)} (longest {max(gold_lengths)} tokens) exceed data.max_prompt_length="
                f"{max_prompt_length}; verl's rollout would cut the gold answer out of them. Raise "
                "data.max_prompt_length or turn the option off"
            )
    overhead = None
    if teacher is not None and teacher.limit is not None:
        dropped = set(over) if overlong == "filter" else set()
        overhead = _check_teacher_budget(
            [(i, messages_of[i]) for i in teacher_rows if i not in dropped],
            lengths,
            teacher,
            tokenizer=tokenizer,
            kwargs=kwargs,
            source=source,
            max_prompt_length=max_prompt_length,
        )
    return DataReport(
        rows=len(rows),
        overlong_rows=over,
        max_prompt_tokens=(max(lengths) if lengths else 0) if lengths is not None else None,
        teacher_overhead=overhead,
        verl_rows=None if verl_kept is None else len(verl_kept),
    )


PROGRESS_FROM = 2_000  # rows from which a file's length passes show a progress bar (seconds per pass)


def _progress(items, total: int, desc: str):
    """`items`, with a progress bar on stderr for a big file (verl's own filter shows one too)."""
    if total < PROGRESS_FROM:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="row", file=sys.stderr, mininterval=2)


def prompt_lengths(messages_of, tokenizer, processor, kwargs: dict, tools, source: str) -> list[int]:
    """Each row's prompt in tokens, counted as verl's dataset counts it for data.filter_overlong_prompts
    (the chat template with the generation prompt and verl's tool schemas; a multimodal model's
    processor renders the text). A row whose template raises is an error naming it: verl would drop
    it silently (filtering) or fail in the rollout."""
    from verl.utils.tokenizer import normalize_token_ids

    kwargs = {k: v for k, v in kwargs.items() if k not in ("tokenize", "return_dict", "return_tensors")}
    if tools is not None:
        kwargs["tools"] = tools
    lengths: list[int] = []
    failed: dict[str, list[int]] = {}
    for i, messages in _progress(enumerate(messages_of), len(messages_of), f"{source}: prompt lengths"):
        try:
            if processor is not None:
                text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
                ids = processor.tokenizer(text=text, add_special_tokens=False, return_attention_mask=False)
                lengths.append(len(ids["input_ids"]))
            else:
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
                lengths.append(len(normalize_token_ids(ids)))
        except Exception as exc:  # noqa: BLE001 - reported with the rows it fails on
            failed.setdefault(f"{type(exc).__name__}: {exc}"[:200], []).append(i)
            lengths.append(0)
    if failed:
        detail = "; ".join(f"{what} at rows {format_rows(idx)}" for what, idx in failed.items())
        raise ValueError(
            f"{source}: the chat template fails on these prompts ({detail}); verl's dataset would drop them "
            "silently with data.filter_overlong_prompts=True, or the rollout would fail on them"
        )
    return lengths


def _teacher_question_problem(content) -> Optional[str]:
    """Why the teacher builder would refuse this last user turn's content, or None."""
    from srpo_verl.integration.teacher_prompt import holds_placeholder

    if not isinstance(content, str):
        kind = "NaN" if isinstance(content, float) and math.isnan(content) else type(content).__name__
        return (
            f"is not text (its content is a {kind}): the teacher prompt rewrites the last user turn as text "
            "(OpenAI-style lists of parts, None, NaN and numbers are refused at the first teacher step)"
        )
    if not content.strip():
        return "is blank: the teacher prompt rewrites the last user turn around its question"
    if holds_placeholder(content):
        return "holds the teacher builder's private placeholder (U+E000 'srpo-slot' U+E001), which it refuses"
    return None


def _check_teacher_budget(
    rows: list[tuple[int, list]],
    lengths: Optional[list[int]],
    teacher: TeacherSpec,
    *,
    tokenizer,
    kwargs: dict,
    source: str,
    max_prompt_length: Optional[int],
) -> Optional[int]:
    """ValueError when the teacher step would refuse a row for its budget ("the question alone is
    too long"), or when the budget cannot hold a prompt at data.max_prompt_length plus the template's
    overhead (measured here, with the run's tokenizer, on every row) plus one demonstration token.
    Returns that overhead (None when prompt lengths were not measured)."""
    from srpo_verl.integration.teacher_prompt import teacher_template_length

    limit = teacher.limit
    too_long: list[int] = []
    longest, overhead, key_of_overhead = 0, None, teacher.templates[0][0]
    for i, messages in _progress(rows, len(rows), f"{source}: teacher prompt budget"):
        for key, template, slot in teacher.templates:
            n = teacher_template_length(
                tokenizer, messages, template=template, slot=slot, apply_chat_template_kwargs=kwargs
            )
            if n + 1 > limit:
                if not too_long or too_long[-1] != i:
                    too_long.append(i)
                longest = max(longest, n)
            if lengths is not None and (overhead is None or n - lengths[i] > overhead):
                overhead, key_of_overhead = n - lengths[i], key
    if overhead is not None and max_prompt_length is not None and max_prompt_length + overhead + 1 > limit:
        raise ValueError(
            f"{source}: {teacher.limit_name}={limit} cannot hold a prompt at "
            f"data.max_prompt_length={max_prompt_length}: "
            f"the teacher template ({key_of_overhead}) adds up to {overhead} tokens with this tokenizer, so such a "
            f"prompt needs {max_prompt_length + overhead + 1} tokens with one demonstration token"
            + (f" (rows {format_rows(too_long)} already do not fit)" if too_long else "")
            + f"; the teacher step would refuse it ('the question alone is too long'). Raise the teacher limit to at "
            f"least {max_prompt_length + overhead + 1}"
        )
    if too_long:
        raise ValueError(
            f"{source}: teacher prompts that cannot hold one demonstration token within {teacher.limit_name}={limit} "
            f"at rows {format_rows(too_long)} (template and question alone take up to {longest} tokens); the teacher "
            "step would refuse them ('the question alone is too long'). Raise the teacher limit or shorten the prompts"
        )
    return overhead


def _is_tool_row(data_source) -> bool:
    from srpo_verl.tasks import reward_fn_for, toolalpaca

    return reward_fn_for(data_source) is toolalpaca.compute_score


def read_rows(path: str) -> list[dict]:
    import pandas as pd

    if path.endswith(".parquet"):
        frame = pd.read_parquet(path)
    elif path.endswith(".json") or path.endswith(".jsonl"):
        try:
            frame = pd.read_json(path, lines=path.endswith(".jsonl"))
        except (ValueError, TypeError) as err:  # TypeError: a line that is an array, not an object
            raise _json_error(path, err) from None
    else:
        raise ValueError(f"data file {path}: unsupported format (verl reads .parquet, .json, .jsonl)")
    return frame.to_dict(orient="records")


def _json_error(path: str, err: Exception) -> ValueError:
    """pandas names neither the file nor the line of bad JSON: find the first bad line here."""
    import json

    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    if path.endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                return ValueError(f"data file {path}, line {number}: not valid JSON ({exc})")
            if not isinstance(value, dict):
                return ValueError(
                    f"data file {path}, line {number}: a {type(value).__name__}, not a JSON object (one row)"
                )
    else:
        try:
            json.loads(text)
        except ValueError as exc:
            return ValueError(f"data file {path}: not valid JSON ({exc})")
    return ValueError(f"data file {path}: pandas cannot read it as rows ({err})")


def _load_tokenizer(config) -> tuple[Any, Any]:
    """(tokenizer, processor) as verl's trainer loads them (HFModelConfig: verl's hf_tokenizer and
    hf_processor, the custom chat template on the processor when there is one), or (None, None) with a
    WARNING when they cannot be loaded in the driver."""
    model = config.actor_rollout_ref.model
    path = os.path.expanduser(str(model.get("tokenizer_path", None) or model.path))
    trust = bool(model.get("trust_remote_code", False))
    try:
        from verl.utils import hf_processor, hf_tokenizer

        tokenizer = hf_tokenizer(path, trust_remote_code=trust)
        processor = hf_processor(path, trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001 - the length check is skipped, loudly; verl loads it later
        logger.warning("prompt length check skipped: tokenizer of %s not loadable in the driver (%s)", path, exc)
        return None, None
    if processor is not None and not getattr(processor, "chat_template", None):
        processor.chat_template = getattr(tokenizer, "chat_template", None)
    if model.get("custom_chat_template", None):
        setattr(processor if processor is not None else tokenizer, "chat_template", model.custom_chat_template)
    return tokenizer, processor


def verl_dataset(config, key: str, path: str, tokenizer, processor):
    """verl's own dataset of one data file, built as verl's trainer builds it: `create_rl_dataset` with
    the run's `data` config, tokenizer and processor, so filtering follows whatever verl does. Every row
    is kept for the check (max_samples=-1): data.*_max_samples picks some of these rows. A file verl
    cannot load is an error naming it (the trainer would fail on it after Ray starts)."""
    import time

    from verl.trainer.ppo.utils import create_rl_dataset

    start = time.monotonic()
    try:
        dataset = create_rl_dataset([path], config.data, tokenizer, processor, is_train=key == "train_files")
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"data.{key} {path}: verl's dataset cannot load it ({type(exc).__name__}: {exc})") from exc
    logger.info("data.%s %s: verl's dataset built in %.1f s", key, path, time.monotonic() - start)
    return dataset


def _comparable(value):
    """A prompt as plain data: numpy arrays as lists, None-valued keys dropped (verl's datasets loader
    fills the keys one row lacks with None; pandas does not)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if not _missing(v)}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def kept_rows(rows: Sequence[dict], dataset, prompt_key: str) -> Optional[list[int]]:
    """Indices of `rows` (a file's rows, in order) that verl's dataset kept: its rows are the file's,
    in order, minus those it filtered, matched by prompt. None when they cannot be matched (a dataset
    class that rewrites its rows): the caller then relies on its own count."""
    frame = getattr(dataset, "dataframe", None)
    if frame is None or prompt_key not in getattr(frame, "column_names", ()):
        return None
    kept: list[int] = []
    i = 0
    for prompt in frame[prompt_key]:
        target = _comparable(prompt)
        while i < len(rows) and _comparable(rows[i].get(prompt_key)) != target:
            i += 1
        if i == len(rows):
            return None
        kept.append(i)
        i += 1
    return kept


def check_data_files(config, *, tokenizer: Any = "auto") -> dict[str, DataReport]:
    """`check_data_rows` on every local file of data.train_files and data.val_files.

    Remote paths (hdfs://, s3://, ...) are left to verl, as are custom dataset classes. tokenizer="auto"
    loads the model's tokenizer and processor as verl does; None skips the length check and verl's
    dataset. With a tokenizer, verl's own dataset of each file is built (`verl_dataset`) and what it
    filters is what the check reports.
    """
    data = config.data
    if (data.get("custom_cls", {}) or {}).get("path"):
        logger.info("data checks skipped: custom dataset class %s", data.custom_cls.path)
        return {}
    reward = config.get("reward", {}) or {}
    require_reward_fields = (reward.get("reward_manager", {}) or {}).get("source", "register") == "register" and not (
        (reward.get("reward_model", {}) or {}).get("enable", False)
    )
    teacher = teacher_spec_of(config)
    from srpo_verl.algo_config import srpo_config_of

    srpo = srpo_config_of(config)
    gold_template = srpo.reprompt_template if srpo is not None and srpo.guard.teacher_prompted_validation else None
    fn_config = reward.get("custom_reward_function", {}) or {}
    from srpo_verl.tasks import is_task_reward

    # verl's default scorer and srpo_verl's reward both raise on a data_source they do not know;
    # another custom function decides for itself.
    check_sources = not fn_config.get("path", None) or is_task_reward(
        fn_config.get("path"), fn_config.get("name", None)
    )
    processor = None
    if isinstance(tokenizer, str) and tokenizer == "auto":
        tokenizer, processor = _load_tokenizer(config)
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
            rows = read_rows(local)
            if not rows:
                raise ValueError(f"data.{key} {path}: the file has no rows")
            reports[path] = check_data_rows(
                rows,
                source=f"data.{key} {path}",
                prompt_key=data.get("prompt_key", "prompt"),
                require_reward_fields=require_reward_fields,
                tokenizer=tokenizer,
                processor=processor,
                teacher=teacher,
                check_data_sources=check_sources,
                teacher_prompted_validation=gold_template if key == "val_files" else None,
                verl_dataset=None
                if tokenizer is None
                else functools.partial(verl_dataset, config, key, local, tokenizer, processor),
            )
    return reports

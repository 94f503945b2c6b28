"""`python -m srpo_verl check OVERRIDES...`: pre-flight of a run, before any GPU is held.

A run that fails on a missing rollout backend, a wrong GPU count, a broken reward function, a bad
data row or a config verl rejects does so only after Ray has started and the model is loaded, often
minutes into a cluster allocation. This composes the run's config from the same Hydra overrides the
launch would get and checks, in order:

  config   the overrides compose and srpo_verl's trainer-config checks accept them (Hydra's whole
           message on failure: valid options, and the nearest valid keys of a mistyped one)
  model    actor_rollout_ref.model.path holds a config and a tokenizer with a chat template; a local
           folder is checked for its files first and a hub id is read from the local cache when
           cached or offline, so a wrong path fails here at once instead of after network retries
  rollout  the selected rollout backend imports (vllm, sglang, or the CPU backend's hf)
  gpus     visible accelerators against trainer.n_gpus_per_node x trainer.nnodes
  reward   the reward function imports and scores the first training row (and, with
           algorithm.srpo.use_feedback, returns algorithm.srpo.feedback_key)
  data     the train/val files pass srpo_verl's data checks (check_data_files: rows, gold answers,
           data_source, and for SRPO each row's teacher prompt within its budget, measured with
           the tokenizer the model item loaded)
  threshold  with an algorithm.srpo block: a response stating the gold answer reaches
           algorithm.srpo.success_threshold and an empty one does not, on the first training rows
           (otherwise no sample, or every sample, counts as a success)
  verl     verl's own validate_config accepts the config (what verl's main_ppo runs first)

The overrides come as arguments, from a file (`--overrides-file`, one per line) or from a recipe
(`--recipe cell.sh`, run with DRY_RUN=1, which prints one override per line): a shell's word
splitting of `$(DRY_RUN=1 bash cell.sh)` would cut any override holding a space.

Each item prints one line; the command exits non-zero naming every failed item. Nothing here
allocates an accelerator: GPUs are counted (NVML through torch), never initialised; nor does it
activate the CPU backend (platform=cpu is checked, not switched on, in this process).
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass
from typing import Callable

ROLLOUT_MODULES = {"vllm": "vllm", "sglang": "sglang", "hf": "srpo_verl.cpu.hf_rollout"}


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    skipped: bool = False  # not checked because an item it needs failed (that one is the failure)


class Skipped(Exception):
    """Raised by an item that cannot run because an earlier item failed."""


def compose(overrides: list[str]):
    """The trainer config `python -m srpo_verl.main_ppo OVERRIDES` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("srpo_verl.config", version_base=None):
        return hydra_compose("srpo_trainer", overrides=list(overrides))


def _nearest_keys(overrides: list[str], exc: BaseException) -> str:
    """ "did you mean" for a config group option that does not exist (the nearest of those Hydra lists)
    or a key that is not in the config (the nearest keys of its parent node, composed without the
    failing override: Hydra names the key, never the keys it could have been)."""
    import difflib
    import re

    option = re.search(r"Could not find '([\w/]+)/([^'/]+)'", str(exc))
    if option:  # a config group option: Hydra lists the options, one per tab-indented line
        options = re.findall(r"^\t(\w+)$", str(exc).split("Config search path:")[0], flags=re.M)
        close = difflib.get_close_matches(option.group(2), options, n=3, cutoff=0.6)
        return f"\ndid you mean: {', '.join(f'{option.group(1)}={o}' for o in close)}?" if close else ""
    cause = exc.__cause__ or exc.__context__
    match = re.search(r"full_key: (\S+)", str(cause or ""))
    if not match:
        return ""
    full_key = match.group(1)
    parent, _, leaf = full_key.rpartition(".")
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != full_key]
    try:
        from omegaconf import OmegaConf

        node = OmegaConf.select(compose(rest), parent) if parent else compose(rest)
        keys = list(node.keys()) if node is not None and hasattr(node, "keys") else []
    except Exception:  # noqa: BLE001 - the suggestion is a courtesy; the error itself is reported
        return ""
    close = difflib.get_close_matches(leaf, [str(k) for k in keys], n=3, cutoff=0.6)
    return f"\ndid you mean: {', '.join(f'{parent}.{k}' if parent else k for k in close)}?" if close else ""


def read_overrides_file(path: str) -> list[str]:
    """One override per line, as a recipe's DRY_RUN prints them; blank lines and `#` lines skipped."""
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def recipe_overrides(recipe: str, extra: list[str] = (), timeout_s: float = 60) -> list[str]:
    """The overrides a recipe script launches with: it runs with DRY_RUN=1 (every recipe prints its
    final override list one per line and exits) and each printed line is one override."""
    import os
    import subprocess

    if not os.path.isfile(recipe):
        raise FileNotFoundError(f"--recipe {recipe}: no such file")
    env = {**os.environ, "DRY_RUN": "1"}
    proc = subprocess.run(["bash", recipe, *extra], env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(
            f"--recipe {recipe}: DRY_RUN=1 bash {recipe} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _is_cpu(config) -> bool:
    return config.get("srpo_verl", {}).get("platform", None) == "cpu"


def check_config(config) -> str:
    from srpo_verl.integration.config_checks import check_trainer_config

    srpo = check_trainer_config(config)
    algorithm = "srpo block valid" if srpo is not None else "no algorithm.srpo block"
    return f"{config.algorithm.adv_estimator} / trainer_mode={config.trainer.v1.trainer_mode}; {algorithm}"


# Files of a Hugging Face model folder: its config, and any one of a tokenizer's own files.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _looks_local(path: str) -> bool:
    """A hub id is `name` or `org/name`; anything with a path's marks is meant as a local folder."""
    import os

    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def model_source(path_value, key: str = "actor_rollout_ref.model.path") -> tuple[str, bool, str]:
    """(path to load, local_files_only, how to name it) of a model given as a folder or a hub id,
    checking the files exist before transformers looks for them: a missing folder or file is named
    at once, and a hub id that is cached (or must be, offline) is read with local_files_only, never
    after a round of network retries. Raises naming `key`."""
    import os

    from huggingface_hub import constants

    path = os.path.expanduser(str(path_value))
    if os.path.isdir(path):
        missing = [] if os.path.isfile(os.path.join(path, "config.json")) else ["config.json"]
        if not any(os.path.isfile(os.path.join(path, name)) for name in _TOKENIZER_FILES):
            missing.append(f"a tokenizer file (one of {', '.join(_TOKENIZER_FILES)})")
        if missing:
            raise FileNotFoundError(f"{key}={path_value}: the folder has no {' and no '.join(missing)}")
        return path, True, f"folder {path_value}"
    if os.path.exists(path):
        raise NotADirectoryError(f"{key}={path_value}: a file, not a model folder")
    if _looks_local(str(path_value)):
        raise FileNotFoundError(f"{key}={path_value}: no such folder")
    if _hub_cached(path):
        return path, True, f"hub id {path_value} (local cache)"
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"{key}={path_value}: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            "download it first or give the folder"
        )
    return path, False, f"hub id {path_value} (downloaded config and tokenizer)"


def load_model_files(model) -> tuple[object, object, str]:
    """(HF config, tokenizer, where) of `actor_rollout_ref.model`, its files checked first."""
    from transformers import AutoConfig, AutoTokenizer

    path, local_only, where = model_source(model.path)
    trust = bool(model.get("trust_remote_code", False))
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, local_files_only=local_only)
    if model.get("custom_chat_template", None):  # verl applies it to the tokenizer it loads
        tokenizer.chat_template = model.custom_chat_template
    return hf_config, tokenizer, where


def check_model(config, state: dict) -> str:
    hf_config, tokenizer, where = load_model_files(config.actor_rollout_ref.model)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"actor_rollout_ref.model.path={config.actor_rollout_ref.model.path}: the tokenizer has no chat template "
            "(verl's dataset applies one to every prompt): set actor_rollout_ref.model.custom_chat_template"
        )
    state["tokenizer"] = tokenizer
    return f"{where}: {hf_config.model_type}, tokenizer with {len(tokenizer)} tokens and a chat template"


def check_rollout(config) -> str:
    name = config.actor_rollout_ref.rollout.name
    module = ROLLOUT_MODULES.get(name)
    if module is None:
        raise ValueError(f"actor_rollout_ref.rollout.name={name!r}: expected one of {sorted(ROLLOUT_MODULES)}")
    if name == "hf" and not _is_cpu(config):
        raise ValueError("actor_rollout_ref.rollout.name=hf is the CPU backend's rollout: add platform=cpu")
    imported = importlib.import_module(module)
    return f"{name} imports ({module} {getattr(imported, '__version__', '')})".replace(" )", ")")


def visible_gpus() -> int:
    """Accelerators this process can see, counted without creating a context on any of them."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(config, count: Callable[[], int] | None = None) -> str:
    per_node, nnodes = config.trainer.n_gpus_per_node, config.trainer.nnodes
    need = f"trainer.n_gpus_per_node={per_node} x trainer.nnodes={nnodes} = {per_node * nnodes}"
    if _is_cpu(config):
        return f"platform=cpu: {need} fake Ray GPUs, no device needed"
    seen = (count or visible_gpus)()
    # Every node runs n_gpus_per_node ranks; this node is one of them (the others are checked
    # when their `ray start` registers them with the cluster).
    if seen < per_node:
        raise RuntimeError(f"{seen} GPUs visible on this node, the run needs {per_node} per node ({need})")
    return f"{seen} GPUs visible on this node; {need}"


def _first_row_of(config) -> dict:
    return _train_rows(config)[0]


def _train_rows(config) -> list[dict]:
    from srpo_verl.integration.data_checks import read_rows

    files = config.data.train_files
    path = str(files if isinstance(files, str) else files[0])
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def _reward_fn(config):
    """(the run's reward function, how to name it)."""
    fn_config = config.reward.get("custom_reward_function") or {}
    if fn_config.get("path"):
        from verl.trainer.ppo.reward import get_custom_reward_fn

        return get_custom_reward_fn(config), f"{fn_config.get('path')}:{fn_config.get('name')}"
    from verl.utils.reward_score import default_compute_score

    return default_compute_score, "verl default_compute_score"


def _score(result) -> float:
    return float(result.get("score") if isinstance(result, dict) else result)


def check_reward(config) -> str:
    """Import the reward function and score the first training row with its own ground truth."""
    row = _first_row_of(config)
    ground_truth = (row.get("reward_model") or {}).get("ground_truth")
    fn, where = _reward_fn(config)
    # Any response will do: the point is that the function runs on a real row and returns a number.
    result = fn(
        data_source=row.get("data_source"),
        solution_str=str(ground_truth),
        ground_truth=ground_truth,
        extra_info=row.get("extra_info"),
    )
    score = result.get("score") if isinstance(result, dict) else result
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise TypeError(
            f"{where} returned {result!r} for the first training row: expected a number or a dict with 'score'"
        )
    feedback = _check_feedback_field(config, fn, row, where)
    return f"{where} scores the first training row ({row.get('data_source')}): {float(score):g}{feedback}"


def _check_feedback_field(config, fn, row: dict, where: str) -> str:
    """With algorithm.srpo.use_feedback, the reward must return `feedback_key` as a string for a wrong
    answer: a typo would leave every row without feedback, silently. Scored on an empty response."""
    srpo = (config.algorithm.get("srpo", None) or {}) if "algorithm" in config else {}
    if not srpo or not srpo.get("use_feedback", False):
        return ""
    key = srpo.get("feedback_key", "feedback")
    result = fn(
        data_source=row.get("data_source"),
        solution_str="",
        ground_truth=(row.get("reward_model") or {}).get("ground_truth"),
        extra_info=row.get("extra_info"),
    )
    if not isinstance(result, dict) or not isinstance(result.get(key), str):
        fields = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ValueError(
            f"algorithm.srpo.feedback_key={key!r}: {where} returns no string {key!r} for an empty response "
            f"(its fields: {fields}); with use_feedback the teacher would silently never see feedback"
        )
    return f"; feedback field {key!r} present"


THRESHOLD_ROWS = 8


def check_threshold(config, reward_ok: bool = True) -> str:
    """On the first training rows: does a response stating the gold answer reach success_threshold,
    and does an empty one stay below it? A threshold above what the reward gives a right answer means
    no sample is ever a success (no demonstrations, SRPO never distils); one an empty response reaches
    means every sample is (nothing is ever routed to distillation)."""
    srpo = config.algorithm.get("srpo", None)
    if not srpo:
        return "no algorithm.srpo block: nothing to check"
    if not reward_ok:
        raise Skipped("not checked (the reward item failed)")
    from srpo_verl.tasks import gold_response

    threshold = float(srpo.get("success_threshold", 0.5))
    fn, where = _reward_fn(config)
    key = f"algorithm.srpo.success_threshold={threshold:g}"
    gold, empty = [], []
    for row in _train_rows(config)[:THRESHOLD_ROWS]:
        truth = (row.get("reward_model") or {}).get("ground_truth")
        source, info = row.get("data_source"), row.get("extra_info")
        gold.append(
            _score(
                fn(
                    data_source=source,
                    solution_str=gold_response(source, truth, info),
                    ground_truth=truth,
                    extra_info=info,
                )
            )
        )
        empty.append(_score(fn(data_source=source, solution_str="", ground_truth=truth, extra_info=info)))
    if all(s < threshold for s in gold):
        raise ValueError(
            f"{key}: {where} gives the gold answers of the first {len(gold)} training rows {max(gold):g} at most, "
            "below the threshold: no sample would count as a success, so SRPO would never have a demonstration "
            "(non-binary rewards need a threshold a right answer reaches)"
        )
    if all(s >= threshold for s in empty):
        raise ValueError(
            f"{key}: {where} gives an empty response {min(empty):g} or more on the first {len(empty)} training rows: "
            "every sample would count as a success and nothing would be distilled"
        )
    return f"{key}: gold answers score up to {max(gold):g}, an empty response at most {max(empty):g}"


def check_data(config, tokenizer=None) -> str:
    from srpo_verl.integration.data_checks import check_data_files

    reports = check_data_files(config, tokenizer=tokenizer)
    parts = [
        f"{path}: {r.rows} rows, longest prompt {r.max_prompt_tokens} tokens, {len(r.overlong_rows)} over the limit"
        for path, r in reports.items()
    ]
    if tokenizer is None and parts:
        parts.append("prompt lengths not measured (the model item failed)")
    return "; ".join(parts) or "no local data files (remote or custom dataset: left to verl)"


def check_verl(config) -> str:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return "validate_config accepts the config"


# (name, check(config, state)): state carries the model item's tokenizer to the data item.
CHECKS = (
    ("model", check_model),
    ("rollout", lambda config, state: check_rollout(config)),
    ("gpus", lambda config, state: check_gpus(config)),
    ("reward", lambda config, state: check_reward(config)),
    ("threshold", lambda config, state: check_threshold(config, reward_ok=state["ok"]["reward"])),
    ("data", lambda config, state: check_data(config, state.get("tokenizer"))),
    ("verl", lambda config, state: check_verl(config)),
)
MAX_ERROR_LINES = 40


def _error(exc: BaseException) -> str:
    """The whole message, its cause's too (Hydra puts "Key 'x' is not in struct" there), so valid
    options and the full key are kept; capped so a huge message cannot bury the other items."""
    text = str(exc).strip()
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += "\n" + str(cause).strip()
    lines = text.splitlines()
    if len(lines) > MAX_ERROR_LINES:
        lines = lines[:MAX_ERROR_LINES] + [
            f"... ({len(lines) - MAX_ERROR_LINES} more lines; --verbose for the traceback)"
        ]
    return f"{type(exc).__name__}: " + "\n".join(lines)


def preflight(overrides: list[str], *, verbose: bool = False) -> list[Item]:
    """Run every item once the config composes; one Item each. The data item uses the model item's
    tokenizer and the threshold item the reward item's function, so neither repeats their failure."""
    try:
        config = compose(overrides)
        items = [Item("config", True, check_config(config))]
    except Exception as exc:  # noqa: BLE001 - reported as the failing item
        if verbose:
            traceback.print_exc()
        return [Item("config", False, _error(exc) + _nearest_keys(overrides, exc))]
    state: dict = {"ok": {}}
    for name, check in CHECKS:
        try:
            items.append(Item(name, True, check(config, state)))
            state["ok"][name] = True
        except Skipped as skip:
            items.append(Item(name, True, str(skip), skipped=True))
        except Exception as exc:  # noqa: BLE001 - reported as the failing item
            if verbose:
                traceback.print_exc()
            items.append(Item(name, False, _error(exc)))
            state["ok"][name] = False
    return items


def report(items: list[Item]) -> int:
    for item in items:
        # Continuation lines of a long message are indented under their item.
        detail = item.detail.replace("\n", "\n       ")
        mark = "SKIP" if item.skipped else " OK " if item.ok else "FAIL"
        print(f"[{mark}] {item.name}: {detail}")
    failed = [item.name for item in items if not item.ok]
    print(f"pre-flight FAILED: {', '.join(failed)}" if failed else "pre-flight OK")
    return 1 if failed else 0

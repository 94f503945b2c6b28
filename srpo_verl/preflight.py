"""`python -m srpo_verl check OVERRIDES...`: pre-flight of a run, before any GPU is held.

A run that fails on a missing rollout backend, a wrong GPU count, a broken reward function, a bad
data row or a config verl rejects does so only after Ray has started and the model is loaded, often
minutes into a cluster allocation. This composes the run's config from the same Hydra overrides the
launch would get and checks, in order:

  config   the overrides compose and srpo_verl's trainer-config checks accept them
  rollout  the selected rollout backend imports (vllm, sglang, or the CPU backend's hf)
  gpus     visible accelerators against trainer.n_gpus_per_node x trainer.nnodes
  reward   the reward function imports and scores the first training row (and, with
           algorithm.srpo.use_feedback, returns algorithm.srpo.feedback_key)
  data     the train/val files pass srpo_verl's data checks (check_data_files: rows, gold answers,
           data_source, and for SRPO each row's teacher prompt within its budget, measured with
           the model's tokenizer)
  verl     verl's own validate_config accepts the config (what verl's main_ppo runs first)

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


def compose(overrides: list[str]):
    """The trainer config `python -m srpo_verl.main_ppo OVERRIDES` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("srpo_verl.config", version_base=None):
        return hydra_compose("srpo_trainer", overrides=list(overrides))


def _is_cpu(config) -> bool:
    return config.get("srpo_verl", {}).get("platform", None) == "cpu"


def check_config(config) -> str:
    from srpo_verl.integration.config_checks import check_trainer_config

    srpo = check_trainer_config(config)
    algorithm = "srpo block valid" if srpo is not None else "no algorithm.srpo block"
    return f"{config.algorithm.adv_estimator} / trainer_mode={config.trainer.v1.trainer_mode}; {algorithm}"


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


def _first_row(path: str) -> dict:
    from srpo_verl.integration.data_checks import read_rows

    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows[0]


def check_reward(config) -> str:
    """Import the reward function and score the first training row with its own ground truth."""
    fn_config = config.reward.get("custom_reward_function") or {}
    files = config.data.train_files
    row = _first_row(str(files if isinstance(files, str) else files[0]))
    ground_truth = (row.get("reward_model") or {}).get("ground_truth")
    if fn_config.get("path"):
        from verl.trainer.ppo.reward import get_custom_reward_fn

        fn = get_custom_reward_fn(config)
        where = f"{fn_config.get('path')}:{fn_config.get('name')}"
    else:
        from verl.utils.reward_score import default_compute_score

        fn, where = default_compute_score, "verl default_compute_score"
    # Any response will do: the point is that the function runs on a real row and returns a number.
    result = fn(
        data_source=row.get("data_source"),
        solution_str=str(ground_truth),
        ground_truth=ground_truth,
        extra_info=row.get("extra_info"),
    )
    score = result.get("score") if isinstance(result, dict) else result
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise TypeError(f"{where} returned {result!r} for the first training row: expected a number or a dict with 'score'")
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


def check_data(config) -> str:
    from srpo_verl.integration.data_checks import check_data_files

    reports = check_data_files(config)
    parts = [
        f"{path}: {r.rows} rows, longest prompt {r.max_prompt_tokens} tokens, {len(r.overlong_rows)} over the limit"
        for path, r in reports.items()
    ]
    return "; ".join(parts) or "no local data files (remote or custom dataset: left to verl)"


def check_verl(config) -> str:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return "validate_config accepts the config"


CHECKS = (
    ("rollout", check_rollout),
    ("gpus", check_gpus),
    ("reward", check_reward),
    ("data", check_data),
    ("verl", check_verl),
)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" + (" ..." if len(text) > 1 else "")


def preflight(overrides: list[str], *, verbose: bool = False) -> list[Item]:
    """Run every item (they are independent once the config composes); one Item each."""
    try:
        config = compose(overrides)
        items = [Item("config", True, check_config(config))]
    except Exception as exc:  # noqa: BLE001 - reported as the failing item
        if verbose:
            traceback.print_exc()
        return [Item("config", False, _error(exc))]
    for name, check in CHECKS:
        try:
            items.append(Item(name, True, check(config)))
        except Exception as exc:  # noqa: BLE001 - reported as the failing item
            if verbose:
                traceback.print_exc()
            items.append(Item(name, False, _error(exc)))
    return items


def report(items: list[Item]) -> int:
    for item in items:
        print(f"[{' OK ' if item.ok else 'FAIL'}] {item.name}: {item.detail}")
    failed = [item.name for item in items if not item.ok]
    print(f"pre-flight FAILED: {', '.join(failed)}" if failed else "pre-flight OK")
    return 1 if failed else 0

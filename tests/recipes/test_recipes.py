"""Every paper recipe, run with DRY_RUN=1, composes with Hydra into SRPO Table 3's configuration.

The recipe prints its final override list; composing `srpo_trainer` from it proves every key
exists in verl 0.9.1's config (Hydra refuses unknown keys) and lets us check the values the run
would really get, interpolations resolved.
"""

import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from srpo_verl import SUPPORTED_VERL
from srpo_verl.algo_config import srpo_config_of

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
TASKS = ("chemistry", "physics", "biology", "materials", "toolalpaca")
CELLS = sorted(RECIPES.glob("table1/run_*.sh")) + sorted(RECIPES.glob("ablation/run_*.sh"))
DATA_DIR = "/data/srpo-test"

# SRPO Table 3 per method: (lr, mini-batch prompts, srpo.method, beta); None for GRPO (no SRPO block).
METHOD = {
    "grpo": (1e-6, 8, None, None),
    "sdpo": (1e-5, 32, "sdpo", 0.0),
    "srpo": (5e-6, 32, "srpo", 1.0),
    "srpo_no_dw": (5e-6, 32, "srpo", 0.0),
    "advantage_mix": (5e-6, 32, "advantage_mix", 1.0),
}
MODELS = {"qwen3_8b": "Qwen/Qwen3-8B", "qwen3_4b": "Qwen/Qwen3-4B"}


def parse_cell(path):
    """run_<model>_<algo>_<task>.sh -> (model, algo, task)."""
    stem = path.stem[len("run_") :]
    model = next(m for m in MODELS if stem.startswith(m + "_"))
    task = next(t for t in TASKS if stem.endswith("_" + t))
    return model, stem[len(model) + 1 : -len(task) - 1], task


def dry_run(script, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "DATA_DIR", "EXPERIMENT_NAME", "NNODES")}
    full_env.update({"DRY_RUN": "1", "DATA_DIR": DATA_DIR, "CKPT_ROOT": "/ckpt", **env})
    return subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def hydra_compose():
    with initialize_config_module("srpo_verl.config", version_base=None):
        yield lambda overrides: compose("srpo_trainer", overrides=overrides)


def test_there_is_one_recipe_per_paper_cell():
    table1 = {parse_cell(p) for p in RECIPES.glob("table1/run_*.sh")}
    ablation = {parse_cell(p) for p in RECIPES.glob("ablation/run_*.sh")}
    assert table1 == {(m, a, t) for m in MODELS for a in ("grpo", "sdpo", "srpo") for t in TASKS}
    assert ablation == {("qwen3_8b", a, t) for a in ("srpo_no_dw", "advantage_mix") for t in TASKS}


@pytest.mark.parametrize("script", CELLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_composes_to_the_paper_configuration(script, hydra_compose):
    model, algo, task = parse_cell(script)
    proc = dry_run(script)
    assert proc.returncode == 0, proc.stderr
    overrides = proc.stdout.splitlines()
    keys = [o.split("=", 1)[0].lstrip("+") for o in overrides]
    assert len(keys) == len(set(keys)), "an override is given twice"
    cfg = hydra_compose(overrides)

    lr, mini, method, beta = METHOD[algo]
    actor, rollout, data = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.data
    # Method hyperparameters (set by the algorithm= switch).
    assert actor.optim.lr == pytest.approx(lr)
    assert actor.ppo_mini_batch_size == mini
    assert data.train_batch_size == 32 and rollout.n == 8 and rollout.temperature == 1.0
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    assert cfg.algorithm.rollout_correction.rollout_is == "token"
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == 2.0
    assert cfg.algorithm.norm_adv_by_std_in_grpo is False
    assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False and actor.entropy_coeff == 0
    assert (actor.optim.lr_warmup_steps, actor.optim.weight_decay, actor.optim.clip_grad) == (10, 0.01, 1.0)
    if method is None:
        assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.get("srpo") is None
    else:
        srpo = srpo_config_of(cfg)  # the project's own validation passes
        assert (srpo.method, srpo.beta) == (method, beta)
        assert (srpo.topk, srpo.alpha, srpo.ema_rate, srpo.is_clip) == (100, 0.5, 0.05, 2.0)
    # Lengths, evaluation (avg@16 at T 0.6, top-p 0.95), thinking off.
    assert (data.max_prompt_length, data.max_response_length) == (2048, 8192)
    assert (rollout.prompt_length, rollout.response_length) == (2048, 8192)
    val = rollout.val_kwargs
    assert (val.n, val.temperature, val.top_p, val.do_sample) == (16, 0.6, 0.95, True)
    assert data.apply_chat_template_kwargs.enable_thinking is False
    assert cfg.trainer.val_before_train is True
    # Model, data and reward.
    assert cfg.actor_rollout_ref.model.path == MODELS[model]
    assert data.train_files == f"{DATA_DIR}/{task}/train.parquet"
    assert data.val_files == f"{DATA_DIR}/{task}/test.parquet"
    assert dict(cfg.reward.custom_reward_function) == {"path": "pkg://srpo_verl.tasks", "name": "compute_score"}
    # Hardware and logging defaults: one node of 8 GPUs, FSDP2, bf16, SGLang, file logger.
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (1, 8)
    assert actor.strategy == "fsdp2" and cfg.actor_rollout_ref.ref.strategy == "fsdp2"
    assert actor.fsdp_config.dtype == "bfloat16" and rollout.dtype == "bfloat16"
    assert rollout.name == "sglang"
    assert list(cfg.trainer.logger) == ["console", "file"]
    assert cfg.trainer.save_freq > 0 and cfg.trainer.test_freq > 0
    assert cfg.trainer.experiment_name == f"{model}_{algo}_{task}"
    assert cfg.trainer.default_local_dir == f"/ckpt/srpo_paper/{model}_{algo}_{task}"


def test_environment_knobs_and_extra_overrides_reach_the_config(hydra_compose):
    script = RECIPES / "table1" / "run_qwen3_4b_srpo_toolalpaca.sh"
    proc = dry_run(
        script,
        "trainer.test_freq=3",
        "algorithm.srpo.beta=0.5",
        INFER_BACKEND="vllm",
        NNODES="2",
        MODEL_PATH="/models/qwen3-4b",
        ROLLOUT_TP="2",
    )
    assert proc.returncode == 0, proc.stderr
    cfg = hydra_compose(proc.stdout.splitlines())
    assert cfg.actor_rollout_ref.rollout.name == "vllm" and cfg.trainer.nnodes == 2
    assert cfg.actor_rollout_ref.model.path == "/models/qwen3-4b"
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 2
    assert cfg.trainer.test_freq == 3 and cfg.algorithm.srpo.beta == 0.5  # appended last, so they win


@pytest.mark.parametrize(
    "env,message",
    [
        ({"INFER_BACKEND": "trtllm"}, "INFER_BACKEND must be sglang or vllm"),
        ({"NNODES": "3"}, "does not split over 24 GPUs"),
        ({"PPO_MAX_TOKEN_LEN_PER_GPU": "4096"}, "below one sequence"),
    ],
)
def test_bad_knobs_stop_with_a_message(env, message):
    proc = dry_run(RECIPES / "table1" / "run_qwen3_8b_grpo_chemistry.sh", **env)
    assert proc.returncode != 0 and message in proc.stderr


def test_launch_without_data_points_at_the_preparation(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
    env.update(DATA_DIR=str(tmp_path), CKPT_ROOT=str(tmp_path / "ckpt"), PYTHON="false")
    proc = subprocess.run(
        ["bash", str(RECIPES / "table1" / "run_qwen3_8b_srpo_physics.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "prepare_data.sh" in proc.stderr
    assert not (tmp_path / "ckpt").exists()


def test_cell_scripts_are_thin_and_strict():
    for script in [*CELLS, RECIPES / "common.sh", RECIPES / "prepare_data.sh"]:
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -xeuo pipefail" in text, script
        assert os.access(script, os.X_OK), f"{script} is not executable"
    for script in CELLS:
        assert len(script.read_text().splitlines()) <= 8 and "common.sh" in script.read_text()


def test_readme_lists_every_recipe_and_the_pinned_verl():
    readme = (RECIPES / "README.md").read_text()
    for script in CELLS:
        assert f"{script.parent.name}/{script.name}" in readme, script.name
    # The pin's one source is srpo_verl.SUPPORTED_VERL; the README can only state it.
    assert f"| verl | {SUPPORTED_VERL} (`srpo_verl.SUPPORTED_VERL`" in readme


def test_quickstart_launch_line_composes(hydra_compose):
    """The one-line launch of docs/quickstart.md uses keys verl 0.9.1 knows."""
    import re
    import shlex

    doc = (REPO / "docs" / "quickstart.md").read_text()
    block = next(
        b for b in re.findall(r"```bash\n(.*?)```", doc, flags=re.DOTALL) if "srpo_verl.main_ppo algorithm" in b
    )
    words = shlex.split(block.replace("\\\n", " "))
    overrides = [w.replace("$HOME", "/home/u") for w in words[words.index("srpo_verl.main_ppo") + 1 :]]
    cfg = hydra_compose(overrides)
    assert cfg.algorithm.srpo.method == "srpo" and cfg.reward.custom_reward_function.path == "pkg://srpo_verl.tasks"
    assert cfg.data.apply_chat_template_kwargs.enable_thinking is False and list(cfg.trainer.logger) == [
        "console",
        "file",
    ]

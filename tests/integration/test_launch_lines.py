"""Every `python -m srpo_verl.main_ppo` line in README.md and docs/*.md, and every recipe, passes
verl's own config validation and srpo_verl's driver checks.

Hydra composition alone accepts configs that verl's trainer refuses at start-up (no micro-batch
size) or that silently run on verl's defaults (FSDP1, no checkpoints, a `gsm8k` run name, no log
where the budget script looks). Each line is therefore composed as `srpo_verl.main_ppo` composes it
(primary config `srpo_trainer` of `srpo_verl.config`), then given to
`verl.utils.config.validate_config` (what verl's main_ppo runs first) and to
`check_trainer_config` (what `srpo_verl.main_ppo.prepare` runs).

How a doc line is read (docs/quickstart.md, step 3, states the convention for `...`):
- shell variables assigned earlier in the same file (`RUN=...`) are expanded; $HOME and $PWD get
  dummy values and `$(...)` a timestamp;
- a placeholder value (`data.train_files=...`, `.../test.parquet`) becomes a dummy path;
- a standalone `...` stands for the rest of a complete line: the quickstart's on a GPU line, a tiny
  CPU run's (`srpo_verl.demo.harness.tiny_cpu_overrides`, what the e2e tests launch) on a `platform=cpu`
  line; the line's own overrides replace the same keys.
"""

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from srpo_verl.integration.config_checks import check_trainer_config

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
QUICKSTART = REPO / "docs" / "quickstart.md"
RECIPES = REPO / "recipes"
CELLS = sorted(RECIPES.glob("table1/run_*.sh")) + sorted(RECIPES.glob("ablation/run_*.sh"))
CELLS += sorted(RECIPES.glob("lora/run_*.sh"))  # beyond the paper: a LoRA student
SHELL = {"HOME": "/home/user", "PWD": "/work/run"}
STAMP = "20260101-000000"
PLACEHOLDER = "/placeholder"


@dataclass
class Launch:
    where: str  # file:line
    overrides: list[str]
    env: dict[str, str] = field(default_factory=dict)
    elided: bool = False  # has a standalone `...`

    @property
    def cpu(self) -> bool:
        return "platform=cpu" in self.overrides


def _code_blocks(text: str):
    """(line number of the block's first line, body) of every fenced code block."""
    for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        yield text.count("\n", 0, m.start(1)) + 1, m.group(1)


def _logical_lines(body: str, first: int):
    """Shell lines with backslash continuations joined, with the number of their first line."""
    lines, start, pending = body.split("\n"), first, ""
    for i, line in enumerate(lines):
        if not pending:
            start = first + i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _expand(line: str, variables: dict[str, str]) -> str:
    line = re.sub(r"\$\([^()]*\)", STAMP, line)
    # $NAME and ${NAME} only: `${a.b}` is a Hydra interpolation, not a shell variable.
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: variables[m.group(1) or m.group(2)], line)


def _placeholders(word: str) -> str:
    return word.replace("...", PLACEHOLDER).replace("…", PLACEHOLDER)


def launches_in(text: str, where: str) -> list[Launch]:
    """Every `python -m srpo_verl.main_ppo` command in the code blocks of one markdown text."""
    variables, found = dict(SHELL), []
    for first, body in _code_blocks(text):
        for lineno, line in _logical_lines(body, first):
            assignment = re.fullmatch(r"\s*([A-Za-z_]\w*)=(\S+)\s*(#.*)?", line)
            if assignment:
                variables[assignment.group(1)] = _expand(assignment.group(2), variables)
                continue
            if "srpo_verl.main_ppo" not in line:
                continue
            words = shlex.split(_expand(line, variables), comments=True)
            if "srpo_verl.main_ppo" not in words:
                continue  # mentioned in a comment
            i = words.index("srpo_verl.main_ppo")
            assert words[i - 2 : i] in (["python", "-m"], ["python3", "-m"]), f"{where}:{lineno}: {words[: i + 1]}"
            env = dict(w.split("=", 1) for w in words[: i - 2])
            rest = words[i + 1 :]
            elided = any(w in ("...", "…") for w in rest)
            overrides = [_placeholders(w) for w in rest if w not in ("...", "…")]
            found.append(Launch(f"{where}:{lineno}", overrides, env, elided))
    return found


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merged(base: list[str], line: list[str]) -> list[str]:
    """`base` with `line` appended; a key given in both takes the line's value (Hydra refuses a key twice)."""
    keys = {_key(o) for o in line}
    return [o for o in base if _key(o) not in keys] + line


def quickstart_launch() -> Launch:
    complete = [la for la in launches_in(QUICKSTART.read_text(), "docs/quickstart.md") if not la.elided]
    assert len(complete) == 1, f"docs/quickstart.md must hold one complete launch line, found {len(complete)}"
    return complete[0]


def tiny_cpu_base(overrides: list[str]) -> list[str]:
    from srpo_verl.demo.harness import tiny_cpu_overrides

    algorithm = next((o.split("=", 1)[1] for o in overrides if o.startswith("algorithm=")), "srpo")
    data = {"train": f"{PLACEHOLDER}/train.parquet", "val": f"{PLACEHOLDER}/test.parquet"}
    return tiny_cpu_overrides(f"{PLACEHOLDER}/model", data, f"{PLACEHOLDER}/ckpt", algorithm=algorithm, total_steps=2)


def resolve(launch: Launch) -> Launch:
    """The complete command a doc line stands for (see the module docstring)."""
    if not launch.elided:
        return launch
    if launch.cpu:
        return Launch(launch.where, merged(tiny_cpu_base(launch.overrides), launch.overrides), launch.env)
    base = quickstart_launch()
    return Launch(launch.where, merged(base.overrides, launch.overrides), {**base.env, **launch.env})


def doc_launches() -> list[Launch]:
    return [la for path in DOCS for la in launches_in(path.read_text(), str(path.relative_to(REPO)))]


def verl_validate(cfg) -> None:
    """What verl's main_ppo runs before Ray starts (its auto_set_device only rewrites trainer.device,
    which validate_config does not read), then srpo_verl's own driver checks."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    check_trainer_config(cfg)


def recipe_backend() -> str:
    return re.search(r"^INFER_BACKEND=\$\{INFER_BACKEND:-(\w+)\}", (RECIPES / "common.sh").read_text(), re.M).group(1)


def gpu_run_problems(launch: Launch, cfg, defaults) -> list[str]:
    """What a GPU launch line leaves at verl's defaults that a paper run cannot."""
    arr, trainer = cfg.actor_rollout_ref, cfg.trainer
    problems = []
    for role in ("actor", "ref"):
        if arr[role].strategy != "fsdp2":
            problems.append(f"actor_rollout_ref.{role}.strategy={arr[role].strategy}, not fsdp2")
    for key in ("project_name", "experiment_name"):
        if trainer[key] == defaults.trainer[key]:
            problems.append(f"trainer.{key}={trainer[key]} is verl's example name")
    backend = None if OmegaConf.is_missing(arr.rollout, "name") else arr.rollout.name  # verl's default is ???
    if backend != recipe_backend():
        problems.append(f"actor_rollout_ref.rollout.name={backend}, the recipes use {recipe_backend()}")
    path = launch.env.get("VERL_FILE_LOGGER_PATH")
    if "file" not in trainer.logger:
        problems.append(f"trainer.logger={list(trainer.logger)}: no file log for scripts/best_within_budget.py")
    elif path is None or not path.endswith(".jsonl"):
        problems.append(f"VERL_FILE_LOGGER_PATH={path}: not a .jsonl file named by the line")
    if trainer.get("val_only", False):
        # verl loads the latest checkpoint of trainer.default_local_dir before it validates: the
        # model the line names would not be the one scored.
        if trainer.resume_mode != "disable":
            problems.append(f"trainer.val_only with trainer.resume_mode={trainer.resume_mode}")
        return problems
    if trainer.save_freq <= 0:
        problems.append(f"trainer.save_freq={trainer.save_freq}: no checkpoint is ever saved")
    logs = os.path.join(trainer.default_local_dir, "logs")
    # verl's file logger truncates its file on open: one file per launch in the run's logs folder,
    # which the budget script merges (as recipes/common.sh does).
    if path is not None and os.path.dirname(path) != logs:
        problems.append(f"VERL_FILE_LOGGER_PATH={path}: not in {logs}")
    return problems


@pytest.fixture(scope="module")
def hydra_compose():
    with initialize_config_module("srpo_verl.config", version_base=None):
        yield lambda overrides: compose("srpo_trainer", overrides=overrides)


@pytest.fixture(scope="module")
def verl_defaults(hydra_compose):
    return hydra_compose([])


def test_one_complete_gpu_launch_line_in_the_docs():
    """README.md and docs/ point at one complete GPU line instead of keeping diverging copies."""
    complete = [la.where for la in doc_launches() if not la.elided and not la.cpu]
    assert complete == [quickstart_launch().where]


@pytest.mark.parametrize("launch", doc_launches(), ids=lambda la: la.where)
def test_doc_launch_line_passes_verl_validation(launch, hydra_compose, verl_defaults):
    full = resolve(launch)
    cfg = hydra_compose(full.overrides)
    verl_validate(cfg)
    if not launch.cpu:
        assert gpu_run_problems(full, cfg, verl_defaults) == []


def test_quickstart_line_is_the_recipe_cell_written_out(hydra_compose):
    launch = quickstart_launch()
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "EXPERIMENT_NAME", "NNODES", "INFER_BACKEND")}
    env.update(DRY_RUN="1", DATA_DIR=f"{SHELL['HOME']}/data/srpo", CKPT_ROOT=f"{SHELL['PWD']}/checkpoints")
    script = RECIPES / "table1" / "run_qwen3_8b_srpo_chemistry.sh"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    recipe = OmegaConf.to_container(hydra_compose(proc.stdout.splitlines()), resolve=True)
    assert OmegaConf.to_container(hydra_compose(launch.overrides), resolve=True) == recipe
    # The logs folder exists before verl opens the file (its file logger does not create it), and
    # the budget-script command of step 4 reads that folder.
    text = QUICKSTART.read_text()
    logs = os.path.dirname(launch.env["VERL_FILE_LOGGER_PATH"])
    assert logs == os.path.join(recipe["trainer"]["default_local_dir"], "logs")
    made = [
        _expand(d, {**SHELL, "RUN": recipe["trainer"]["default_local_dir"]})
        for d in re.findall(r"mkdir -p (\S+)", text)
    ]
    assert logs in made
    budget = re.findall(r"python scripts/best_within_budget.py (\S+)", text)
    assert budget and all(os.path.join(SHELL["PWD"], folder) == logs for folder in budget)


def dry_run(script: Path, **knobs) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "EXPERIMENT_NAME", "NNODES", "INFER_BACKEND")}
    env.update(DRY_RUN="1", DATA_DIR="/data/srpo-test", CKPT_ROOT="/ckpt", **knobs)
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("script", CELLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_passes_verl_validation(script, hydra_compose):
    verl_validate(hydra_compose(dry_run(script)))


def test_recipe_on_two_nodes_with_vllm_passes_verl_validation(hydra_compose):
    cfg = hydra_compose(dry_run(RECIPES / "table1" / "run_qwen3_8b_sdpo_biology.sh", NNODES="2", INFER_BACKEND="vllm"))
    assert (cfg.trainer.nnodes, cfg.actor_rollout_ref.rollout.name) == (2, "vllm")
    verl_validate(cfg)


# The GPU block of README.md before this test existed: it composed, and verl refused it at start-up.
OLD_README_BLOCK = """\
```bash
pip install -e /path/to/srpo_verl          # into the environment that already runs verl 0.9.1
python -m srpo_verl.main_ppo algorithm=srpo \\
    data.train_files=... data.val_files=... actor_rollout_ref.model.path=Qwen/Qwen3-8B \\
    actor_rollout_ref.rollout.name=vllm trainer.n_gpus_per_node=8
```
"""


def test_the_old_readme_line_is_refused(hydra_compose, verl_defaults):
    (launch,) = launches_in(OLD_README_BLOCK, "old README")
    assert not launch.elided and "data.train_files=/placeholder" in launch.overrides
    cfg = hydra_compose(launch.overrides)  # Hydra alone accepts it
    with pytest.raises(Exception, match="ppo_micro_batch_size"):
        verl_validate(cfg)
    problems = gpu_run_problems(launch, cfg, verl_defaults)
    for expected in (
        "actor.strategy=fsdp,",
        "ref.strategy=fsdp,",
        "save_freq=-1",
        "project_name=",
        "experiment_name=gsm8k",
        "rollout.name=vllm",
        "trainer.logger=",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def test_an_elided_line_is_the_quickstart_line_with_its_own_overrides(hydra_compose):
    text = "```bash\npython -m srpo_verl.main_ppo algorithm=sdpo ... 'trainer.logger=[console,tensorboard]'\n```\n"
    (launch,) = launches_in(text, "snippet")
    full = resolve(launch)
    cfg = hydra_compose(full.overrides)
    assert cfg.algorithm.srpo.method == "sdpo" and list(cfg.trainer.logger) == ["console", "tensorboard"]
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-8B" and full.env == quickstart_launch().env
    assert sum(o.startswith("algorithm=") for o in full.overrides) == 1

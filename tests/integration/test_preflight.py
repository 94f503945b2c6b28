"""`python -m srpo_verl check OVERRIDES...`: the pre-flight of a run passes on a good CPU config
and names each failing item (config, rollout, gpus, reward, data, verl) with a non-zero exit.

Runs in this process without Ray or an accelerator; the CPU backend is never activated here (the
pre-flight only inspects platform=cpu)."""

import os

import pandas as pd
import pytest

from srpo_verl import __main__ as cli
from srpo_verl import cpu, preflight
from srpo_verl.demo.harness import tiny_cpu_overrides


@pytest.fixture(scope="module")
def overrides(tiny_model_path, addition_data, tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("preflight_ckpt"))
    return tiny_cpu_overrides(tiny_model_path, addition_data, ckpt, total_steps=2)


def items(args) -> dict:
    return {item.name: item for item in preflight.preflight(args)}


def failed(args) -> dict:
    return {name: item.detail for name, item in items(args).items() if not item.ok}


def test_a_good_cpu_run_passes_every_item(overrides, capsys):
    # preflight itself, not `main`: main's install self-check depends on whether this process imported
    # srpo_verl's modules before verl (other tests' imports), which is not what is tested here.
    assert preflight.report(preflight.preflight(overrides)) == 0
    out = capsys.readouterr().out
    for name in ("config", "rollout", "gpus", "reward", "data", "verl"):
        assert f"[ OK ] {name}: " in out, name
    assert "pre-flight OK" in out
    assert "data: " in out and "512 rows" in out  # the training file was read
    assert os.environ.get(cpu.ENV_VAR) is None  # inspected, not activated


def test_exit_code_names_the_failing_item(overrides, capsys):
    assert cli.main(["check", *overrides, "trainer.n_gpus_per_node=3"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] verl: AssertionError: real_train_batch_size (32) must be divisible by minimal possible batch size (3)" in out
    assert out.rstrip().endswith("pre-flight FAILED: verl")


def test_config_that_does_not_compose_or_validate_fails_config_only(overrides):
    got = items([*overrides, "algorithm.srpo.no_such_key=1"])
    assert list(got) == ["config"] and not got["config"].ok  # nothing else can be checked
    assert "no_such_key" in got["config"].detail
    assert "rollout.n" in failed([*overrides, "actor_rollout_ref.rollout.n=1"])["config"]


def test_rollout_backend_that_does_not_import_fails(overrides, monkeypatch):
    # Whatever this machine has installed, a backend whose module is missing must be reported.
    monkeypatch.setitem(preflight.ROLLOUT_MODULES, "vllm", "srpo_verl_no_such_vllm")
    got = failed([*overrides, "actor_rollout_ref.rollout.name=vllm"])
    assert set(got) == {"rollout"}
    assert "No module named 'srpo_verl_no_such_vllm'" in got["rollout"]


def test_hf_rollout_without_the_cpu_platform_fails(overrides):
    no_cpu = [o for o in overrides if o != "platform=cpu"] + ["actor_rollout_ref.rollout.name=hf"]
    assert "rollout.name=hf is the CPU backend's rollout: add platform=cpu" in failed(no_cpu)["rollout"]


@pytest.mark.parametrize("visible, ok", [(4, False), (8, True)])
def test_gpus_are_counted_against_n_gpus_per_node(overrides, monkeypatch, visible, ok):
    monkeypatch.setattr(preflight, "visible_gpus", lambda: visible)
    gpu_run = [o for o in overrides if o != "platform=cpu"]
    gpu_run += ["actor_rollout_ref.rollout.name=vllm", "trainer.n_gpus_per_node=8", "trainer.nnodes=2"]
    got = items(gpu_run)["gpus"]
    assert got.ok is ok
    if not ok:
        assert got.detail == (
            "RuntimeError: 4 GPUs visible on this node, the run needs 8 per node "
            "(trainer.n_gpus_per_node=8 x trainer.nnodes=2 = 16)"
        )


def test_reward_function_that_is_missing_fails(overrides):
    got = failed([*overrides, "reward.custom_reward_function.name=no_such_reward"])
    assert set(got) == {"reward"}
    assert "no_such_reward" in got["reward"]


def not_a_number(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": "high"}


def test_reward_function_that_returns_no_number_fails(overrides):
    got = failed([*overrides, f"reward.custom_reward_function.path={__file__}", "reward.custom_reward_function.name=not_a_number"])
    assert set(got) == {"reward"}
    assert "returned {'score': 'high'}" in got["reward"]


def test_data_file_that_fails_the_data_checks_fails(overrides, addition_data, tmp_path):
    rows = pd.read_parquet(addition_data["val"]).to_dict(orient="records")
    rows[3]["reward_model"] = {"style": "rule"}  # no ground_truth
    bad = str(tmp_path / "val.parquet")
    pd.DataFrame(rows).to_parquet(bad)
    got = failed([*overrides, f"data.val_files={bad}"])
    assert set(got) == {"data"}
    assert "ground_truth" in got["data"]


def test_missing_data_file_fails_data(overrides, tmp_path):
    got = failed([*overrides, f"data.val_files={tmp_path / 'absent.parquet'}"])
    assert set(got) == {"data"}
    assert "does not exist" in got["data"]


def test_teacher_budget_inside_the_template_overhead_fails_data(overrides, capsys):
    """Issue 23 (high): the old config rule (teacher limit >= data.max_prompt_length) passes, every item
    passed, and the first teacher step raised "the question alone is too long". Now `check` fails."""
    assert cli.main(["check", *overrides, "algorithm.srpo.max_teacher_prompt_length=32"]) == 1
    out = capsys.readouterr().out
    assert "[ OK ] config: " in out
    assert "[FAIL] data: ValueError: data.train_files " in out
    assert "algorithm.srpo.max_teacher_prompt_length=32 cannot hold a prompt at data.max_prompt_length=32" in out
    assert out.rstrip().endswith("pre-flight FAILED: data")


def test_non_text_last_user_turn_fails_data_naming_row_and_file(overrides, addition_data, tmp_path, capsys):
    """Issue 23 (high): an OpenAI-style list of parts as the last user turn, with text in an earlier one."""
    rows = pd.read_parquet(addition_data["val"]).to_dict(orient="records")
    rows = [{**r, "prompt": [dict(m) for m in r["prompt"]]} for r in rows]
    rows[5]["prompt"] = rows[5]["prompt"] + [
        {"role": "assistant", "content": "?"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    bad = tmp_path / "val.jsonl"
    bad.write_text(pd.DataFrame(rows).to_json(orient="records", lines=True))
    assert cli.main(["check", *overrides, f"data.val_files={bad}"]) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] data: ValueError: data.val_files {bad}: `prompt`'s last user turn is not text (its content is a list)" in out
    assert "at rows [5]" in out and out.rstrip().endswith("pre-flight FAILED: data")


def test_feedback_key_the_reward_does_not_return_fails_reward(overrides):
    """With use_feedback, `check` scores an empty response and looks for the feedback field."""
    got = failed([*overrides, "algorithm.srpo.use_feedback=true", "algorithm.srpo.feedback_key=feedbak"])
    assert set(got) == {"reward"}
    assert "algorithm.srpo.feedback_key='feedbak': " in got["reward"] and "returns no string 'feedbak'" in got["reward"]
    assert not failed([*overrides, "algorithm.srpo.use_feedback=true"])

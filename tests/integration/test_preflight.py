"""`python -m srpo_verl check OVERRIDES...`: the pre-flight of a run passes on a good CPU config
and names each failing item (config, model, rollout, gpus, reward, threshold, data, verl) with a
non-zero exit.

Runs in this process without Ray or an accelerator; the CPU backend is never activated here (the
pre-flight only inspects platform=cpu)."""

import os
import time

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
    for name in ("config", "model", "rollout", "gpus", "reward", "threshold", "data", "verl"):
        assert f"[ OK ] {name}: " in out, name
    assert "pre-flight OK" in out
    assert "data: " in out and "512 rows" in out  # the training file was read
    assert os.environ.get(cpu.ENV_VAR) is None  # inspected, not activated


def test_exit_code_names_the_failing_item(overrides, capsys):
    assert cli.main(["check", *overrides, "trainer.n_gpus_per_node=3"]) == 1
    out = capsys.readouterr().out
    assert (
        "[FAIL] verl: AssertionError: real_train_batch_size (32) must be divisible by minimal possible batch size (3)"
        in out
    )
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


def test_reward_function_that_is_missing_fails(overrides, capsys):
    got = failed([*overrides, "reward.custom_reward_function.name=no_such_reward"])
    assert set(got) == {"reward"}
    assert "no_such_reward" in got["reward"]
    # The threshold item needs the reward: skipped, not a second failure.
    assert preflight.report(items([*overrides, "reward.custom_reward_function.name=no_such_reward"]).values()) == 1
    assert "[SKIP] threshold: not checked (the reward item failed)" in capsys.readouterr().out


def not_a_number(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": "high"}


def test_reward_function_that_returns_no_number_fails(overrides):
    got = failed(
        [
            *overrides,
            f"reward.custom_reward_function.path={__file__}",
            "reward.custom_reward_function.name=not_a_number",
        ]
    )
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
    assert (
        f"[FAIL] data: ValueError: data.val_files {bad}: `prompt`'s last user turn is not text (its content is a list)"
        in out
    )
    assert "at rows [5]" in out and out.rstrip().endswith("pre-flight FAILED: data")


def test_feedback_key_the_reward_does_not_return_fails_reward(overrides):
    """With use_feedback, `check` scores an empty response and looks for the feedback field."""
    got = failed([*overrides, "algorithm.srpo.use_feedback=true", "algorithm.srpo.feedback_key=feedbak"])
    assert set(got) == {"reward"}
    assert "algorithm.srpo.feedback_key='feedbak': " in got["reward"] and "returns no string 'feedbak'" in got["reward"]
    assert not failed([*overrides, "algorithm.srpo.use_feedback=true"])


# --------------------------------------------------------------------------- model item


def test_wrong_model_path_fails_the_model_item_naming_the_key(overrides, tmp_path):
    """Before: a wrong path passed every item, with a stderr WARNING that the length check was skipped."""
    got = failed([*overrides, f"actor_rollout_ref.model.path={tmp_path / 'no_such_model'}"])
    assert set(got) == {"model"}
    assert f"actor_rollout_ref.model.path={tmp_path / 'no_such_model'}: no such folder" in got["model"]
    data = items([*overrides, f"actor_rollout_ref.model.path={tmp_path / 'no_such_model'}"])["data"]
    assert data.ok and "prompt lengths not measured (the model item failed)" in data.detail


def test_model_folder_without_its_files_is_named_before_loading(overrides, tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    got = failed([*overrides, f"actor_rollout_ref.model.path={tmp_path}"])
    assert set(got) == {"model"}
    assert "the folder has no config.json and no a tokenizer file (one of tokenizer.json" in got["model"]


def test_uncached_hub_id_offline_fails_at_once(overrides, monkeypatch):
    """Before: transformers retried the hub for about a minute, then the check was skipped with a WARNING."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    got = failed([*overrides, "actor_rollout_ref.model.path=srpo-verl-tests/no-such-model"])
    assert time.monotonic() - start < 30  # the whole pre-flight, with no network wait in it
    assert set(got) == {"model"}
    assert (
        "srpo-verl-tests/no-such-model: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE"
        in got["model"]
    )


# --------------------------------------------------------------------------- Hydra's message


def test_hydra_error_is_kept_whole_with_the_valid_options(overrides, capsys):
    """Before: only its first line ("Could not find 'algorithm/srpoo'") without the options."""
    detail = items([*overrides, "algorithm=srpoo"])["config"].detail
    assert "Could not find 'algorithm/srpoo'" in detail
    assert "Available options in 'algorithm':" in detail and "srpo_no_dw" in detail
    assert detail.endswith("did you mean: algorithm=srpo, algorithm=srpo_no_dw, algorithm=sdpo?")
    preflight.report(items([*overrides, "algorithm=srpoo"]).values())
    assert "\n       Available options in 'algorithm':" in capsys.readouterr().out  # indented under its item


def test_mistyped_key_gets_its_cause_and_the_nearest_keys(overrides):
    detail = items([*overrides, "algorithm.srpo.bta=0"])["config"].detail
    assert "Could not override 'algorithm.srpo.bta'" in detail
    assert "Key 'bta' is not in struct" in detail and "full_key: algorithm.srpo.bta" in detail
    assert "did you mean: algorithm.srpo.beta?" in detail


# --------------------------------------------------------------------------- recipes, override files


def test_recipe_overrides_keep_spaces(monkeypatch, tmp_path):
    """Before: `check $(DRY_RUN=1 bash cell.sh)` split `data.train_files=/my data/...` into two words."""
    data_dir = tmp_path / "my data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "table1", "run_qwen3_8b_srpo_chemistry.sh")
    got = preflight.recipe_overrides(recipe, ["trainer.experiment_name=a b"])
    assert f"data.train_files={data_dir}/chemistry/train.parquet" in got
    assert got[-1] == "trainer.experiment_name=a b"
    config = preflight.compose(got)
    assert config.data.train_files == f"{data_dir}/chemistry/train.parquet"
    assert config.trainer.experiment_name == "a b"


def test_overrides_file_keeps_spaces_and_skips_comments(overrides, tmp_path):
    path = tmp_path / "run.overrides"
    path.write_text("# the tiny run\n" + "\n".join(overrides) + "\n\ntrainer.experiment_name=tiny run\n")
    got = preflight.read_overrides_file(str(path))
    assert got == [*overrides, "trainer.experiment_name=tiny run"]
    assert preflight.compose(got).trainer.experiment_name == "tiny run"


def test_missing_recipe_or_overrides_file_is_named(tmp_path, capsys):
    assert cli.main(["check", "--recipe", str(tmp_path / "cell.sh")]) == 2
    assert f"--recipe {tmp_path / 'cell.sh'}: no such file" in capsys.readouterr().err
    assert cli.main(["check", "--overrides-file", str(tmp_path / "absent")]) == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err


# --------------------------------------------------------------------------- feedback, threshold


def float_reward(data_source, solution_str, ground_truth, extra_info=None):
    return float(solution_str.strip() == str(ground_truth))


def test_use_feedback_with_a_float_reward_fails_reward(overrides):
    """A reward returning a float has no feedback field: use_feedback would silently do nothing."""
    reward = [f"reward.custom_reward_function.path={__file__}", "reward.custom_reward_function.name=float_reward"]
    assert not failed([*overrides, *reward])  # the float reward itself is fine
    got = failed([*overrides, *reward, "algorithm.srpo.use_feedback=true"])
    assert set(got) == {"reward"}
    assert "algorithm.srpo.feedback_key='feedback': " in got["reward"] and "(its fields: float)" in got["reward"]


def test_threshold_no_gold_answer_reaches_fails_threshold(overrides):
    got = failed([*overrides, "algorithm.srpo.success_threshold=1.5"])
    assert set(got) == {"threshold"}
    assert "algorithm.srpo.success_threshold=1.5: " in got["threshold"]
    assert "gold answers of the first 8 training rows 1 at most" in got["threshold"]


def test_threshold_an_empty_response_reaches_fails_threshold(overrides):
    got = failed([*overrides, "algorithm.srpo.success_threshold=0"])
    assert set(got) == {"threshold"}
    assert "gives an empty response 0 or more" in got["threshold"]


def test_threshold_for_the_paper_tasks_scores_their_gold_responses():
    from srpo_verl import tasks

    assert tasks.compute_score("sciknoweval", tasks.gold_response("sciknoweval", "B"), "B")["score"] == 1.0
    gold = '[{"Action": "getWeather", "Action_Input": "{\\"city\\": \\"Paris\\"}"}]'
    assert tasks.compute_score("tooluse", tasks.gold_response("tooluse", gold), gold)["score"] == 1.0


# --------------------------------------------------------------------------- the command itself


def test_cpu_backend_lines_only_when_the_cpu_platform_is_requested(capsys, monkeypatch):
    monkeypatch.delenv(cpu.ENV_VAR, raising=False)
    cli.check()
    assert "cpu." not in capsys.readouterr().out
    cli.check(cpu_lines=True)
    assert "cpu.requested: False" in capsys.readouterr().out


def test_version(capsys):
    from srpo_verl import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"srpo_verl {__version__}"

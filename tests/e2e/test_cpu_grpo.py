"""verl's real trainer on CPU: `python -m srpo_verl.main_ppo algorithm=grpo platform=cpu`.

Two launches share one checkpoint directory (module fixture, ~3.5 min on 2 cores):

1. STEPS GRPO steps of the tiny Qwen3 from scratch on the addition prompts, rewarded with
   `compute_digit_score` (fraction of digit characters: ~0.08 for a random model, learnable in a
   few dozen steps), saving a checkpoint after the last step;
2. the same command with one more step: it must resume from that checkpoint.

Metrics come from verl's `file` logger (one JSON line per step, VERL_FILE_LOGGER_PATH).
"""

import os

import pytest

from srpo_verl.demo.harness import latest_checkpoint, launch

pytestmark = pytest.mark.slow

STEPS = 10
MORE_STEPS = 1
LAUNCH_TIMEOUT_S = 480


def overrides(model_path: str, data: dict, ckpt_dir: str, total_steps: int) -> list[str]:
    from srpo_verl.demo import addition

    return [
        "algorithm=grpo",
        "platform=cpu",
        f"actor_rollout_ref.model.path={model_path}",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        "data.train_batch_size=8",
        "data.max_prompt_length=32",
        "data.max_response_length=8",
        "data.seed=0",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
        # A fresh 1M-parameter model needs a large step to move in a dozen updates.
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        f"reward.custom_reward_function.path={addition.__file__}",
        "reward.custom_reward_function.name=compute_digit_score",
        f"trainer.total_training_steps={total_steps}",
        f"trainer.save_freq={STEPS}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={ckpt_dir}",
        "trainer.project_name=srpo_verl_e2e",
        "trainer.experiment_name=cpu_grpo",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path, addition_data):
    workdir = str(tmp_path_factory.mktemp("cpu_grpo"))
    ckpt = os.path.join(workdir, "checkpoints")
    first = launch(workdir, "first", overrides(tiny_model_path, addition_data, ckpt, STEPS), timeout_s=LAUNCH_TIMEOUT_S)
    assert first.returncode == 0, first.log[-6000:]
    latest = latest_checkpoint(ckpt)
    second = launch(
        workdir,
        "resumed",
        overrides(tiny_model_path, addition_data, ckpt, STEPS + MORE_STEPS),
        timeout_s=LAUNCH_TIMEOUT_S,
    )
    assert second.returncode == 0, second.log[-6000:]
    return {"first": first, "second": second, "ckpt": ckpt, "latest": latest}


def test_every_step_logs_metrics(runs):
    steps = runs["first"].steps
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, metrics in steps.items():
        for key in ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "timing_s/step", "timing_s/gen"):
            assert key in metrics, (step, key)


def test_checkpoint_saved_after_last_step(runs):
    ckpt = runs["ckpt"]
    assert runs["latest"] == STEPS
    actor = os.path.join(ckpt, f"global_step_{STEPS}", "actor")
    assert any(name.startswith("model_world_size_1") for name in os.listdir(actor))
    assert os.path.exists(os.path.join(ckpt, f"global_step_{STEPS}", "data.pt"))


def test_second_launch_resumes_global_step(runs):
    second = runs["second"]
    assert f"Resuming from {runs['ckpt']}/global_step_{STEPS}" in second.log
    assert sorted(second.steps) == list(range(STEPS + 1, STEPS + MORE_STEPS + 1))


def test_rollout_log_probs_match_trainer_every_step(runs):
    # verl's own check: max |p_rollout - p_trainer| per token, in probability space.
    for run in ("first", "second"):
        for step, metrics in runs[run].steps.items():
            assert metrics["training/rollout_probs_diff_max"] < 1e-6, (run, step)
            assert abs(metrics["rollout_corr/rollout_is_mean"] - 1.0) < 1e-5, (run, step)


def test_grpo_raises_reward_on_easy_task(runs):
    scores = [runs["first"].steps[s]["critic/score/mean"] for s in range(1, STEPS + 1)]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    # 192 responses per 3 steps: the step-mean's noise is ~0.02; a random model scores ~0.08.
    assert last > first + 0.1, scores

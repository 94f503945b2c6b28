"""The collapse guard (srpo_verl/guard.py) on synthetic metric streams and on the demo's recorded runs.

The thresholds are the shipped ones, read from srpo.yaml (which test_config_composition.py holds to
GuardConfig) so this file needs no verl.
"""

import ast
import inspect
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from srpo_verl import guard as G

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((ROOT / "srpo_verl" / "config" / "algorithm" / "srpo.yaml").read_text())
DEFAULTS = {k: v for k, v in SHIPPED["algorithm"]["srpo"]["guard"].items() if k != "_target_"}
RUNS = ROOT / "tests" / "demo" / "fixtures" / "recorded" / "runs"


def cfg(**overrides):
    return SimpleNamespace(**{**DEFAULTS, **overrides})


def normal_step(i: int) -> dict:
    """One step of a healthy SRPO run at the demo's typical values (docs/demo.md), with a small
    deterministic wobble."""
    w = ((i * 7) % 5 - 2) / 2  # -1 .. 1
    return {
        G.CORRECT_SHARE: 0.30 + 0.05 * w,
        G.ROUTED_SHARE: 0.45 + 0.08 * w,
        G.TEACHER_ENTROPY: 0.60 + 0.06 * w,
        G.RESPONSE_LENGTH: 3.5 + 0.2 * w,
        G.FORMAT_ERROR: 0.02 + 0.01 * w,
        G.REWARD_RANGE: 1.0,
        G.SDPO_TOKEN_SHARE: 0.4 + 0.05 * w,
    }


def run(steps, **overrides):
    """Feed `steps` (metric dicts, step numbers from 1) to a guard; returns it and the per-step
    {signal: 1} sets of what held."""
    guard, held = G.Guard(cfg(**overrides)), []
    for i, metrics in enumerate(steps, start=1):
        guard.observe(i, metrics)
        held.append({k[len(G.METRIC_PREFIX) :] for k, v in guard.metrics().items() if v})
    return guard, held


def first(guard):
    return [(b.signal, b.step) for b in guard.breaches]


def test_shipped_defaults_are_the_documented_ones():
    assert DEFAULTS == {
        "action": "warn",
        "window": 20,
        "smooth": 3,
        "min_history": 5,
        "format_error_rise": 0.2,
        "length_collapse": 0.5,
        "length_explosion": 2.0,
        "routed_share_rise": 0.3,
        "teacher_entropy_ratio": 2.0,
        "correct_share_drop": 0.25,
        "degenerate_steps": 10,
        "teacher_prompted_validation": False,
        "teacher_prompted_drop": 0.25,
    }


def test_module_imports_no_verl():
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(G))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "logging", "math", "statistics", "dataclasses", "typing"}, imported


def test_a_normal_stream_never_fires():
    guard, held = run([normal_step(i) for i in range(200)])
    assert guard.breaches == [] and not any(held)
    assert set(guard.metrics()) == {G.METRIC_PREFIX + s for s in G.SIGNALS}


@pytest.mark.parametrize("run_dir", sorted(p.name for p in RUNS.iterdir()))
def test_the_demos_recorded_runs_never_fire(run_dir):
    """The 8 recorded demo runs (4 methods x 2 seeds, 30 steps). They log verl's reward mean (the
    correct share: the demo's rewards are 0/1) and response length under verl's names."""
    guard = G.Guard(cfg(), routes=not run_dir.startswith("grpo"))
    for line in (RUNS / run_dir / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        data = row["data"]
        metrics = {k: v for k, v in data.items() if k.startswith("srpo/")}
        metrics[G.CORRECT_SHARE] = data["critic/score/mean"]
        metrics[G.RESPONSE_LENGTH] = data["response_length/mean"]
        assert guard.observe(row["step"], metrics) == []
    assert guard.breaches == []


# ------------------------------------------------------------------ relative signals
# A stream of 30 normal steps, then the metric jumps and stays. With smooth=3 the mean of the last 3
# steps crosses the threshold at the step the jump has filled enough of it; each case names that step.
@pytest.mark.parametrize(
    "signal,metric,value,fires_at",
    [
        # median about 0.02; (0.02 + 0.02 + x)/3 - 0.02 > 0.2 needs x > 0.62: one step at 0.9 suffices
        ("format_error", G.FORMAT_ERROR, 0.9, 31),
        # median 3.5; at 0.5 the mean of 3 is (3.5 + 3.5 + 0.5)/3 = 2.5 > 1.75, then 1.5 < 1.75
        ("response_length", G.RESPONSE_LENGTH, 0.5, 32),
        # explosion: (3.5 + 3.5 + 30)/3 = 12.3 > 7
        ("response_length", G.RESPONSE_LENGTH, 30.0, 31),
        # median 0.45; (0.45 + 0.45 + 1.0)/3 = 0.63 (rise 0.18), then 0.82 (0.37 > 0.3)
        ("routed_share", G.ROUTED_SHARE, 1.0, 32),
        # median 0.6; (0.6 + 0.6 + 3.0)/3 = 1.4 > 1.2
        ("teacher_entropy", G.TEACHER_ENTROPY, 3.0, 31),
        # window best 3-step mean about 0.33: 3-step means 0.2 (drop 0.13), 0.1 (0.23 < 0.25), then 0 (0.33)
        ("correct_share", G.CORRECT_SHARE, 0.0, 33),
    ],
)
def test_a_relative_signal_fires_at_the_right_step(signal, metric, value, fires_at, caplog):
    steps = [normal_step(i) for i in range(30)] + [{**normal_step(i), metric: value} for i in range(30, 40)]
    if signal == "correct_share":  # keep the degenerate no-correct signal out of this case
        steps = steps[:36]
    with caplog.at_level(logging.WARNING, logger=G.__name__):
        guard, held = run(steps)
    assert first(guard) == [(signal, fires_at)]
    # the metric is 1 from the breach on, for as long as it holds, and 0 before
    assert [signal in h for h in held] == [i + 1 >= fires_at for i in range(len(steps))]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per episode, not once per step
    assert metric in warnings[0] and f"step {fires_at}" in warnings[0] and "threshold" in warnings[0]
    assert f"{value:.4g}" in warnings[0]  # the recent values are shown


def test_correct_share_drop_on_the_shape_of_a_reported_collapse():
    """78.8 -> 59.7 -> 7.1 (docs/tracking.md, "Collapse guard"), as shares of correct rollouts."""
    steps = [{G.CORRECT_SHARE: 0.788}] * 20 + [{G.CORRECT_SHARE: 0.597}] * 3 + [{G.CORRECT_SHARE: 0.071}] * 3
    guard, _ = run(steps)
    # 0.788 -> 0.597 is a drop of 0.19 < 0.25: no breach on the plateau; the fall to 0.071 breaches
    # once the 3-step mean is below 0.538: (0.597 + 0.597 + 0.071)/3 = 0.42 at step 24
    assert first(guard) == [("correct_share", 24)]


def test_relative_signals_wait_for_history():
    # From step 1 the response length halves every step; with min_history=5 and smooth=3 the first
    # step that can be judged is step 8.
    steps = [{G.RESPONSE_LENGTH: 1000.0 * 0.5**i} for i in range(12)]
    guard, _ = run(steps)
    assert first(guard) == [("response_length", 8)]


def test_a_step_without_the_metric_is_skipped():
    # Teacher entropy exists only on steps that route rows: gaps neither fire nor reset the window.
    steps = [normal_step(i) for i in range(30)]
    for i in range(0, 30, 2):
        del steps[i][G.TEACHER_ENTROPY]
    steps += [{**normal_step(30), G.TEACHER_ENTROPY: 5.0}]
    guard, held = run(steps)
    assert first(guard) == [("teacher_entropy", 31)]


def test_a_recovered_signal_warns_again_on_the_next_episode(caplog):
    jump = {G.TEACHER_ENTROPY: 6.0}
    steps = [normal_step(i) for i in range(30)] + [{**normal_step(30), **jump}]
    steps += [normal_step(i) for i in range(31, 60)] + [{**normal_step(60), **jump}]
    guard, held = run(steps)
    assert first(guard) == [("teacher_entropy", 31), ("teacher_entropy", 61)]


def test_a_null_threshold_turns_its_signal_off():
    steps = [normal_step(i) for i in range(30)] + [{**normal_step(30), G.TEACHER_ENTROPY: 50.0}]
    guard, _ = run(steps, teacher_entropy_ratio=None)
    assert guard.breaches == [] and G.METRIC_PREFIX + "teacher_entropy" not in guard.metrics()


# ------------------------------------------------------------------ degenerate signals
@pytest.mark.parametrize(
    "signal,change",
    [
        ("no_correct", {G.CORRECT_SHARE: 0.0}),
        ("nothing_routed", {G.ROUTED_SHARE: 0.0, G.SDPO_TOKEN_SHARE: 0.0}),
        ("distillation_inactive", {G.SDPO_TOKEN_SHARE: 0.0}),
        ("flat_rewards", {G.REWARD_RANGE: 0.0}),
    ],
)
def test_a_degenerate_signal_fires_after_n_steps_in_a_row(signal, change):
    # Off the relative signals, so each case isolates its degenerate condition.
    off = dict(routed_share_rise=None, correct_share_drop=None)
    # 9 bad steps, one good, then bad from step 11: the streak restarts and reaches 10 at step 20.
    steps = [{**normal_step(i), **change} for i in range(9)] + [normal_step(9)]
    steps += [{**normal_step(i), **change} for i in range(10, 25)]
    guard, held = run(steps, **off)
    assert first(guard) == [(signal, 20)]
    assert [signal in h for h in held] == [i + 1 >= 20 for i in range(25)]
    assert "10 consecutive steps" in guard.breaches[0].threshold


def test_flat_rewards_at_one_fire_too():
    # Every rollout correct: flat at 1, not only at 0 (nothing to learn from either way).
    steps = [{**normal_step(i), G.REWARD_RANGE: 0.0, G.CORRECT_SHARE: 1.0} for i in range(12)]
    guard, _ = run(steps, correct_share_drop=None)
    assert first(guard) == [("flat_rewards", 10)]


def test_advantage_mix_routes_nothing_and_is_not_warned_for_it():
    steps = [{**normal_step(i), G.ROUTED_SHARE: 0.0, G.SDPO_TOKEN_SHARE: 0.0} for i in range(30)]
    guard = G.Guard(cfg(), routes=False)
    for i, m in enumerate(steps, start=1):
        guard.observe(i, m)
    assert guard.breaches == []
    assert G.METRIC_PREFIX + "nothing_routed" not in guard.metrics()


# ------------------------------------------------------------------ stop and checkpoints
def test_stop_is_requested_only_with_action_stop():
    steps = [normal_step(i) for i in range(30)] + [{**normal_step(30), G.TEACHER_ENTROPY: 9.0}]
    warn, _ = run(steps)
    stop, _ = run(steps, action="stop")
    assert warn.breaches and not warn.stop_requested
    assert stop.stop_requested


def test_stop_report_names_the_last_checkpoint_before_the_breach_and_the_best():
    guard = G.Guard(cfg(action="stop"))
    for step in range(1, 31):
        guard.observe(step, normal_step(step))
        if step % 5 == 0:
            guard.note_checkpoint(step)
            guard.note_validation(step, {"val-core/addition/acc/mean@4": {10: 0.6, 20: 0.5}.get(step, 0.3)})
    assert not guard.stop_requested
    guard.observe(31, {**normal_step(31), G.TEACHER_ENTROPY: 9.0})
    assert guard.stop_requested
    assert guard.best_checkpoint() == (10, 0.6)
    report = guard.stop_report()
    assert "teacher_entropy at step 31" in report
    assert "last checkpoint saved before the breach: global_step_30" in report
    assert "best checkpoint by validation: global_step_10" in report


def test_validation_score_prefers_acc_and_averages_sources():
    assert G.validation_score(
        {
            "val-core/a/acc/mean@16": 0.5,
            "val-core/b/acc/mean@16": 0.7,
            "val-core/a/reward/mean@16": 0.1,
            "val-aux/a/acc/mean@16": 0.0,
        }
    ) == pytest.approx(0.6)
    assert G.validation_score({"val-core/a/reward/mean@16": 0.25}) == 0.25
    assert G.validation_score({"critic/score/mean": 0.3}) is None


def test_of_equal_validation_scores_the_earliest_checkpoint_is_best():
    guard = G.Guard(cfg(action="stop"))
    for step in (1, 2, 3):
        guard.note_checkpoint(step)
        guard.note_validation(step, {"val-core/a/acc/mean@4": 0.0})
    assert guard.best_checkpoint() == (1, 0.0)


def test_best_checkpoint_unknown_without_a_validated_checkpoint():
    guard = G.Guard(cfg(action="stop"))
    guard.note_validation(3, {"val-core/a/acc/mean@4": 0.9})  # validated, never saved
    guard.note_checkpoint(5)
    assert guard.best_checkpoint() is None
    assert "unknown" in guard.stop_report()


# ------------------------------------------------------------------ teacher-prompted validation
def test_teacher_prompted_score_fires_when_it_falls_below_its_best_earlier_validation(caplog):
    guard = G.Guard(cfg(teacher_prompted_drop=0.25))
    scores = {5: 0.6, 10: 0.7, 15: 0.5, 20: 0.4, 25: 0.3, 30: 0.65, 35: 0.2}
    held = {}
    with caplog.at_level(logging.WARNING, logger="srpo_verl.guard"):
        for step, value in scores.items():
            held[step] = guard.note_validation(step, {G.TEACHER_PROMPTED: value}) is not None
    # 0.5 is 0.2 below the best (0.7): fine; 0.4 and 0.3 are over 0.25 below; 0.65 recovers.
    assert held == {5: False, 10: False, 15: False, 20: True, 25: True, 30: False, 35: True}
    assert first(guard) == [("teacher_prompted", 20), ("teacher_prompted", 35)]  # one WARNING per episode
    warnings = [r.getMessage() for r in caplog.records if "teacher_prompted at step" in r.getMessage()]
    assert len(warnings) == 2 and "0.4 < best earlier validation 0.7 - 0.25" in warnings[0]
    assert "srpo/val_teacher_prompted/score recent values [0.6, 0.7, 0.5, 0.4]" in warnings[0]


def test_teacher_prompted_signal_is_off_without_its_score_or_threshold():
    guard = G.Guard(cfg(teacher_prompted_drop=None))
    for step, value in enumerate([0.9, 0.1], start=1):
        assert guard.note_validation(step, {G.TEACHER_PROMPTED: value}) is None
    guard = G.Guard(cfg())
    assert guard.note_validation(1, {"val-core/x/acc/mean@2": 0.9}) is None and guard.validation == {1: 0.9}
    assert guard.breaches == []


def test_a_teacher_prompted_breach_requests_the_stop():
    guard = G.Guard(cfg(action="stop"))
    guard.note_validation(1, {G.TEACHER_PROMPTED: 0.8})
    assert not guard.stop_requested
    guard.note_validation(2, {G.TEACHER_PROMPTED: 0.1})
    assert guard.stop_requested and "teacher_prompted at step 2" in guard.stop_report()


def test_teacher_prompted_batch_shows_each_rows_gold_answer():
    import numpy as np

    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.trainer import teacher_prompted_batch

    chat = lambda q: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]  # noqa: E731
    prompts = np.empty(2, dtype=object)
    prompts[0], prompts[1] = chat("1+2?"), chat("3+4?")
    batch = {"raw_prompt": prompts, "reward_model": np.array([{"ground_truth": "3"}, {"ground_truth": 7}]), "x": [1]}
    srpo = SRPOConfig()
    out = teacher_prompted_batch(batch, srpo)
    for i, (q, gold) in enumerate([("1+2?", "3"), ("3+4?", "7")]):
        expected = srpo.reprompt_template.format(question=q, solution=gold)
        assert out["raw_prompt"][i] == [chat(q)[0], {"role": "user", "content": expected}]
    assert out["x"] is batch["x"] and batch["raw_prompt"][0] == chat("1+2?")  # the input is left as it was
    batch["reward_model"] = np.array([{"ground_truth": "3"}, {"style": "rule"}])
    with pytest.raises(ValueError, match="row 1 has no reward_model.ground_truth"):
        teacher_prompted_batch(batch, srpo)


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "override,key",
    [
        ({"action": "halt"}, "guard.action"),
        ({"window": 0}, "guard.window"),
        ({"min_history": 30}, "guard.min_history"),
        ({"length_collapse": 1.5}, "guard.length_collapse"),
        ({"teacher_entropy_ratio": 0.5}, "guard.teacher_entropy_ratio"),
        ({"correct_share_drop": float("nan")}, "guard.correct_share_drop"),
        ({"degenerate_steps": True}, "guard.degenerate_steps"),
        ({"teacher_prompted_validation": "yes"}, "guard.teacher_prompted_validation"),
        ({"teacher_prompted_drop": 0}, "guard.teacher_prompted_drop"),
        ({"actoin": "stop"}, "guard"),
    ],
    ids=[
        "action",
        "window_0",
        "min_history_over_window",
        "length_collapse_over_1",
        "entropy_ratio_under_1",
        "drop_nan",
        "steps_bool",
        "teacher_prompted_not_bool",
        "teacher_prompted_drop_0",
        "unknown_key",
    ],
)
def test_bad_guard_settings_are_refused_naming_the_key(override, key):
    # The only verl import of this file (GuardConfig is a verl BaseConfig), kept local to this test.
    from srpo_verl.algo_config import SRPOConfig

    with pytest.raises(ValueError, match=f"algorithm.srpo.{key}"):
        SRPOConfig.from_node({"guard": override})
    assert SRPOConfig.from_node({"guard": {"action": "stop", "teacher_entropy_ratio": None}}).guard.action == "stop"


def test_the_trainer_computes_the_guards_inputs_from_the_batch():
    """The inputs verl logs only after the save, computed by the trainer from verl's jagged fields
    (padding rows excluded), and the format-error share from the reward's extra output."""
    import torch

    from srpo_verl.integration import trainer as trainer_mod

    rows = lambda xs: [torch.tensor(r) for r in xs]  # noqa: E731
    mask = rows([[1, 1, 1], [1, 1, 1, 1, 1], [1], [1, 1]])
    scores = rows([[0.0, 0.0, 1.0], [0.0] * 5, [0.5], [0.0, 9.0]])
    extra = [{"reward_extra_info": {"format_error": f}} for f in (False, True, True, True)]
    real = [True, True, True, False]
    out = trainer_mod.guard_inputs(mask, scores, extra, real)
    assert out == {G.RESPONSE_LENGTH: 3.0, G.REWARD_RANGE: 1.0, G.FORMAT_ERROR: pytest.approx(2 / 3)}
    # A reward that does not report format errors: no share, rather than a share of 0.
    assert G.FORMAT_ERROR not in trainer_mod.guard_inputs(mask, scores, [{"reward_extra_info": {"acc": 1.0}}] * 4, real)

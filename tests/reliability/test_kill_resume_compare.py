"""The kill/resume harness (scripts/kill_resume_trials.py) can fail: its comparisons catch one
differing metric or weight. The trials themselves launch verl (tests/e2e/test_kill_resume.py and the
script). Also here: the rollout server's outputs do not depend on how requests were batched, the
launch-to-launch difference the trials once showed."""

import importlib.util
import math
import random
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "kill_resume_trials", Path(__file__).resolve().parents[2] / "scripts" / "kill_resume_trials.py"
)
krt = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = krt  # its dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(krt)


def test_metric_comparison_catches_any_difference():
    ref = {
        1: {"actor/pg_loss": 0.25, "srpo/routed_share": 0.5, "timing_s/step": 2.0},
        2: {"actor/pg_loss": float("nan")},
    }
    same = {
        1: {"actor/pg_loss": 0.25, "srpo/routed_share": 0.5, "timing_s/step": 9.0},
        2: {"actor/pg_loss": float("nan")},
    }
    assert krt.compare_metrics(ref, same) == (0.0, [])  # timings ignored, NaN == NaN
    off = {1: {**same[1], "actor/pg_loss": 0.25 + 1e-12}, 2: same[2]}
    diff, mismatches = krt.compare_metrics(ref, off)
    assert 0 < diff < 1e-11 and mismatches == [f"step 1 actor/pg_loss: 0.25 vs {0.25 + 1e-12!r}"]
    diff, mismatches = krt.compare_metrics(ref, {1: same[1]})
    assert diff == math.inf and mismatches == ["step 2 only in reference"]
    diff, _ = krt.compare_metrics(ref, {1: {"actor/pg_loss": 0.25}, 2: same[2]})
    assert diff == math.inf  # a metric missing from a step


def test_weight_comparison_catches_any_difference():
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    assert krt.compare_weights(a, {k: v.clone() for k, v in a.items()}) == 0.0
    b = {"w": torch.tensor([0.0, 1e-7, 0.0]), "b": torch.ones(2)}
    assert krt.compare_weights(a, b) == torch.tensor(1e-7).double().item()
    assert krt.compare_weights(a, {"w": torch.zeros(3)}) == math.inf  # a tensor missing
    assert krt.compare_weights({}, {}) == math.inf  # no teacher saved is not "identical"


def _checkpoint(root, step, student, teacher):
    actor = root / f"global_step_{step}" / "actor"
    (actor / "srpo_ema_teacher").mkdir(parents=True)
    torch.save(student, actor / "model_world_size_1_rank_0.pt")
    torch.save(teacher, actor / "srpo_ema_teacher" / "rank_0.pt")


def test_trial_evaluation_tolerates_only_a_lost_metrics_line(tmp_path):
    # verl saves step 3's checkpoint, then logs step 3: a kill in between loses that line (the
    # resume starts at 4). Same weights and same logged metrics: identical, with step 3 reported lost.
    from srpo_verl.demo.harness import Launch

    ref_steps = {s: {"actor/pg_loss": 0.1 * s} for s in range(1, 6)}
    w = {"w": torch.arange(3.0)}
    _checkpoint(tmp_path / "ref", 5, w, {"w": w["w"] / 2})
    _checkpoint(tmp_path / "trial", 5, w, {"w": w["w"] / 2})
    reference = (Launch(returncode=0, log="", steps=ref_steps), str(tmp_path / "ref"))
    first = {s: ref_steps[s] for s in (1, 2)}
    second = {s: ref_steps[s] for s in (4, 5)}

    def evaluate(first, second):
        r = krt.TrialResult(trial=0, kill_after_checkpoint=1, delay_s=0.0, killed=True, resumed_from=3)
        return krt.evaluate(r, reference, first, second, str(tmp_path / "trial"), 5)

    r = evaluate(first, second)
    assert r.identical and r.lost_metric_steps == [3] and r.metrics_max_abs_diff == 0.0
    # A step lost after the checkpoint (never replayed) is a real gap, not tolerated.
    r = evaluate(first, {5: ref_steps[5]})
    assert not r.identical and "step 4 only in reference" in r.metrics_mismatches
    assert r.first_difference == "step 4 only in reference"
    # A replayed step (logged before the kill, after the checkpoint) must equal the reference too.
    r = evaluate({**first, 4: {"actor/pg_loss": 0.5}}, second)
    assert not r.identical and r.metrics_mismatches == ["replayed step 4 actor/pg_loss: 0.4 vs 0.5"]
    # The printed first difference is the lowest step's, wherever it sits in the list.
    r = evaluate({**first, 4: {"actor/pg_loss": 0.5}}, {4: ref_steps[4], 5: {"actor/pg_loss": 9.0}})
    assert r.first_difference == "replayed step 4 actor/pg_loss: 0.4 vs 0.5"
    assert r.metrics_mismatches[0] == "step 5 actor/pg_loss: 0.5 vs 9.0"
    # One differing teacher element is caught.
    _checkpoint(tmp_path / "trial2", 5, w, {"w": w["w"] / 2 + torch.tensor([0.0, 0.0, 1e-6])})
    r = krt.evaluate(
        krt.TrialResult(trial=0, kill_after_checkpoint=1, delay_s=0.0, killed=True, resumed_from=3),
        reference,
        first,
        second,
        str(tmp_path / "trial2"),
        5,
    )
    assert not r.identical and r.student_max_abs_diff == 0.0 and 0 < r.teacher_max_abs_diff < 2e-6


def test_rollout_outputs_do_not_depend_on_how_requests_were_batched(tiny_model_path):
    # Which requests share a batch depends on arrival timing; a request's tokens and log-probs (the
    # trainer's IS weights) must be bit-identical alone, among few or many others, at any position,
    # in the first or a later chunk, whatever the other prompts' lengths (one longer than
    # prompt_length). Before fixed-shape chunks they differed by ~5e-7 with the batch's shape.
    import asyncio

    from omegaconf import OmegaConf

    from srpo_verl.cpu.hf_rollout import DECODE_ROWS, HFServer, SamplingKey, _Request, request_seed
    from verl.workers.config import RolloutConfig

    config = RolloutConfig(
        name="hf", dtype="float32", tensor_model_parallel_size=1, prompt_length=32, response_length=8
    )
    model = OmegaConf.create(
        {
            "_target_": "verl.workers.config.HFModelConfig",
            "path": tiny_model_path,
            "override_config": {"attn_implementation": "sdpa"},
        }
    )
    server = HFServer(config, model)
    asyncio.run(server.launch_server())
    server.eos_ids = set()  # every row decodes its full budget: more log-probs compared
    rng = random.Random(0)
    prompts = [[1] + [rng.randrange(4, 100) for _ in range(rng.randint(3, 30))] + [2] for _ in range(48)]
    prompts[5] = [1] + [rng.randrange(4, 100) for _ in range(40)] + [2]  # wider than prompt_length
    key = SamplingKey(temperature=1.0, top_k=-1, top_p=1.0)

    def decode(indices):
        rows = [
            _Request(f"r{i}", prompts[i], 8, key, request_seed(7, 1, prompts[i], key, 0), future=None) for i in indices
        ]
        server._decode(rows, key)
        return {i: (r.tokens, r.log_probs) for i, r in zip(indices, rows)}

    targets = [0, 5, 7]
    alone = {i: decode([i])[i] for i in targets}
    others = [i for i in range(len(prompts)) if i not in targets]
    for size in (1, 3, DECODE_ROWS - 1, DECODE_ROWS + 2, 2 * DECODE_ROWS + 5):
        indices = rng.sample(others, size)
        for i in targets:
            indices.insert(rng.randint(0, len(indices)), i)
        batched = decode(indices)
        for i in targets:
            assert batched[i] == alone[i], f"prompt {i} among {size} others"
    assert len({tuple(t) for t, _ in alone.values()}) == len(targets)  # real samples, not a constant

"""The SRPO loss inside verl's engine equals the pure functions, whatever the micro-batch and rank split.

`srpo_update_probe.py` is run three times (~1.5 min in all): one rank with micro-batches of 8 rows
(the whole mini-batch), one rank with micro-batches of 2, and two FSDP2 ranks on gloo with
micro-batches of 2. Each run takes one SGD step (lr 1, no clipping), so theta_0 - theta_1 is the
gradient; the first run also carries the float64 loss and gradient of `srpo_verl.core_algos`
applied to the whole batch at once.
"""

import os

import pytest
import torch

from srpo_verl.integration import wire
from srpo_verl.lab.ranks import run_ranks

pytestmark = pytest.mark.slow

PROBE = os.path.join(os.path.dirname(__file__), "srpo_update_probe.py")


def run_probe(
    model_path: str,
    out_dir: str,
    name: str,
    micro_batch: int,
    world: int,
    reference: bool = False,
    teacher="ema",
    inplace_ce: bool = False,
):
    env = {}
    if reference:
        env["SRPO_PROBE_REFERENCE"] = "1"
    if inplace_ce:
        env["SRPO_PROBE_INPLACE_CE"] = "1"
    out = os.path.join(out_dir, f"{name}.pt")
    run_ranks([PROBE, model_path, out, str(micro_batch), teacher], world, env, timeout=600)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def updates(tiny_model_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("srpo_update"))
    return {
        "mb8": run_probe(tiny_model_path, out, "mb8", micro_batch=8, world=1, reference=True),
        "mb2": run_probe(tiny_model_path, out, "mb2", micro_batch=2, world=1),
        "dp2": run_probe(tiny_model_path, out, "dp2", micro_batch=2, world=2),
        "trust_region": run_probe(tiny_model_path, out, "tr", micro_batch=4, world=1, teacher="trust_region"),
        # flash-attn's cross-entropy (verl's default on GPU) writes its gradient into the logits.
        "inplace_ce": run_probe(
            tiny_model_path, out, "inplace", micro_batch=4, world=1, reference=True, inplace_ce=True
        ),
    }


def max_rel(a: dict, b: dict) -> float:
    """max |a - b| over all parameters, relative to max |b|."""
    assert a.keys() == b.keys()
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a) / scale


def test_teacher_pass_returns_student_topk_and_teacher_log_probs(updates):
    engine, ref = updates["mb8"]["teacher_fields"], updates["mb8"]["reference"]
    for got, expected in zip(engine[wire.TOPK_IDS.name], ref["topk_ids"]):
        assert torch.equal(got.long().sort(-1).values, expected.sort(-1).values)
    for got, expected, ids, ref_ids in zip(
        engine[wire.TEACHER_TOPK.name], ref["teacher_topk"], engine[wire.TOPK_IDS.name], ref["topk_ids"]
    ):
        # Same set of ids; compare values id by id.
        order_got, order_ref = ids.long().argsort(-1), ref_ids.argsort(-1)
        torch.testing.assert_close(
            got.gather(-1, order_got).double(), expected.gather(-1, order_ref).double(), rtol=0, atol=2e-5
        )


def test_engine_loss_equals_the_pure_functions(updates):
    run = updates["mb8"]
    assert run["loss"] == pytest.approx(run["reference"]["loss"], rel=1e-5, abs=1e-7)
    assert abs(run["reference"]["loss"]) > 1e-4  # a loss that is not trivially zero


def test_engine_gradient_equals_the_pure_functions(updates):
    run = updates["mb8"]
    grad, ref = run["grad"], run["reference"]["grad"]
    # Tied embeddings appear once in the engine (lm_head shares model.embed_tokens).
    common = {k: grad[k] for k in ref}
    assert max_rel(common, ref) < 1e-4
    assert max(float(v.abs().max()) for v in ref.values()) > 1e-4


def test_gradient_is_right_when_the_cross_entropy_backward_overwrites_the_logits(updates):
    # GPU semantics: verl computes token log-probs with inplace_backward=True; with flash-attn that
    # backward runs before ours and leaves its gradient in the logits' storage. The distillation
    # backward must not read the logits again (it works on a private copy of the routed rows).
    run = updates["inplace_ce"]
    grad, ref = run["grad"], run["reference"]["grad"]
    assert run["loss"] == pytest.approx(run["reference"]["loss"], rel=1e-5, abs=1e-7)
    assert max_rel({k: grad[k] for k in ref}, ref) < 1e-4


def test_micro_batch_size_leaves_loss_and_gradient_unchanged(updates):
    assert updates["mb2"]["loss"] == pytest.approx(updates["mb8"]["loss"], rel=1e-6, abs=1e-8)
    assert max_rel(updates["mb2"]["grad"], updates["mb8"]["grad"]) < 1e-5


def test_two_data_parallel_ranks_equal_one(updates):
    assert updates["dp2"]["loss"] == pytest.approx(updates["mb8"]["loss"], rel=1e-6, abs=1e-8)
    assert max_rel(updates["dp2"]["grad"], updates["mb8"]["grad"]) < 1e-5


def test_trust_region_teacher_mixes_frozen_start_and_current_student(updates):
    run = updates["trust_region"]
    engine, ref = run["teacher_after_step"], run["reference_trust_region"]
    for got, expected in zip(engine[wire.TEACHER_ENTROPY.name], ref["entropy"]):
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    for ids, got, ref_ids, expected in zip(
        engine[wire.TOPK_IDS.name], engine[wire.TEACHER_TOPK.name], ref["topk_ids"], ref["teacher_topk"]
    ):
        assert torch.equal(ids.long().sort(-1).values, ref_ids.sort(-1).values)
        torch.testing.assert_close(
            got.gather(-1, ids.long().argsort(-1)).double(), expected.gather(-1, ref_ids.argsort(-1)), rtol=0, atol=1e-4
        )
    # The step moved the student, so the mixture differs from the teacher before the step.
    before = run["teacher_fields"][wire.TEACHER_ENTROPY.name]
    assert max(float((a - b).abs().max()) for a, b in zip(engine[wire.TEACHER_ENTROPY.name], before)) > 1e-3

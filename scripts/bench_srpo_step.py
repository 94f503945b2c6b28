"""Benchmark: SRPO's step against SDPO's and GRPO's on identical batches, in verl's engine on CPU.

    python scripts/bench_srpo_step.py [--rows 64 --response-len 96 --hidden 256 --repeats 3]

One process, one verl actor worker (`SRPOActorRolloutRefWorker`, FSDP2 engine, the CPU backend),
one fixed batch of `rows` responses in groups of `group` with random correctness. Per repeat,
round-robin so that drift hits every method alike, it times:
  - the teacher pass on SRPO's rows (failed with a correct sibling) and on SDPO's rows (every row
    with a teacher: a correct sibling other than itself);
  - a whole step = old log-probs + teacher pass + actor update, for GRPO (verl's own loss, no
    teacher), SDPO, SRPO, and SRPO on a batch where no row is routed.
It prints medians and the ratios the issue asks for:
  teacher-pass time SRPO/SDPO next to the routed share (SRPO rows / SDPO rows; target: ratio <=
  share + 0.05), step SRPO/SDPO and SRPO/GRPO, and zero-routed SRPO/GRPO (target <= 1.03).
"""

from __future__ import annotations

import argparse
import statistics
import time

from srpo_verl.cpu.local import as_batch, compose, local_env, response_log_probs, update_info

local_env()

import torch  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--response-len", type=int, default=96)
    p.add_argument("--teacher-extra-len", type=int, default=96, help="template + demonstration tokens")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--p-correct", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    import verl  # noqa: F401  (plugin: CPU backend)
    import verl.utils.tensordict_utils as tu
    from omegaconf import OmegaConf
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from srpo_verl import core_algos
    from srpo_verl.demo.tiny_model import build_tiny_model
    from srpo_verl.integration.worker import TEACHER_FIELDS, SRPOActorRolloutRefWorker

    model = build_tiny_model(hidden_size=args.hidden, num_layers=args.layers)
    config = compose(
        [
            "algorithm=srpo",
            "platform=cpu",
            f"actor_rollout_ref.model.path={model}",
            "actor_rollout_ref.model.use_remove_padding=True",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={args.rows}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.micro_batch}",
            "actor_rollout_ref.rollout.n=1",
        ]
    )
    worker = SRPOActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    grpo_loss = worker.actor.loss_fn  # verl's own PPO loss, as a GRPO run installs it
    vocab = worker.actor.engine.module.config.vocab_size
    k = min(config.algorithm.srpo.topk, vocab)
    worker.srpo_setup(OmegaConf.to_container(config.algorithm.srpo, resolve=True), k)
    srpo_loss = worker.actor.loss_fn

    gen = torch.Generator().manual_seed(args.seed)
    rows, T = args.rows, args.response_len
    prompts = [torch.randint(4, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(rows // args.group)]
    sequences = [(prompts[i // args.group], torch.randint(4, vocab, (T,), generator=gen).tolist()) for i in range(rows)]
    teacher_ids = [
        torch.tensor(p + torch.randint(4, vocab, (args.teacher_extra_len,), generator=gen).tolist() + r)
        for p, r in sequences
    ]
    rewards = (torch.rand(rows, generator=gen) < args.p_correct).float()
    uid = [str(i // args.group) for i in range(rows)]
    routing = core_algos.routing_mask(rewards, uid)
    srpo_rows = routing.sdpo.nonzero().flatten().tolist()
    sdpo_rows = routing.teacher_available.nonzero().flatten().tolist()
    advantages = core_algos.grpo_advantage(rewards, uid)

    def teacher_pass(idx):
        if not idx:
            return {}
        data = as_batch([sequences[i] for i in idx], srpo_teacher_input_ids=[teacher_ids[i] for i in idx])
        tu.assign_non_tensor(data, temperature=1.0)
        out = worker.compute_srpo_teacher(data)
        return {key: dict(zip(idx, out[key].unbind())) for key in TEACHER_FIELDS}

    def step(method: str) -> dict[str, float]:
        times = {}
        t0 = time.perf_counter()
        old = response_log_probs(worker, sequences)
        times["old_log_prob"] = time.perf_counter() - t0
        idx = {"srpo": srpo_rows, "sdpo": sdpo_rows}.get(method, [])
        t0 = time.perf_counter()
        taught = teacher_pass(idx)
        times["teacher"] = time.perf_counter() - t0
        adv = [torch.full((T,), float(a)) for a in advantages]
        extra = dict(old_log_probs=old, advantages=adv)
        if method != "grpo":
            if method == "sdpo":
                extra["advantages"] = [torch.zeros(T) for _ in range(rows)]
            zeros = {"srpo_topk_ids": torch.zeros(T, k, dtype=torch.int32), "srpo_teacher_topk": torch.zeros(T, k)}
            for key in TEACHER_FIELDS:
                default = zeros.get(key, torch.zeros(T))
                extra[key] = [taught.get(key, {}).get(i, default) for i in range(rows)]
            extra["srpo_sampled_adv"] = [torch.zeros(T) for _ in range(rows)]
        data = as_batch(sequences, **extra)
        if method != "grpo":
            data["srpo_route"] = torch.tensor([int(i in idx) for i in range(rows)])
        update_info(data, rows)
        t0 = time.perf_counter()
        if method == "grpo":
            worker.actor.loss_fn = grpo_loss
            ActorRolloutRefWorker.update_actor(worker, data)
        else:
            worker.actor.loss_fn = srpo_loss
            worker.update_actor(data)
        times["update"] = time.perf_counter() - t0
        times["step"] = sum(times.values())
        return times

    methods = ["grpo", "sdpo", "srpo", "srpo_zero"]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for method in methods:  # warm-up
        step(method)
    for r in range(args.repeats):
        for method in methods:
            results[method].append(step(method))
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)

    med = {m: {key: statistics.median(t[key] for t in results[m]) for key in results[m][0]} for m in methods}
    share = len(srpo_rows) / max(len(sdpo_rows), 1)
    print(f"\nrows {rows} (groups of {args.group}), response {T} tokens, model hidden {args.hidden} x {args.layers}")
    print(f"teacher rows: SRPO {len(srpo_rows)}, SDPO {len(sdpo_rows)}; routed share SRPO/SDPO = {share:.3f}\n")
    print(f"{'method':<10}{'old_lp s':>10}{'teacher s':>11}{'update s':>10}{'step s':>9}")
    for m in methods:
        t = med[m]
        print(f"{m:<10}{t['old_log_prob']:>10.3f}{t['teacher']:>11.3f}{t['update']:>10.3f}{t['step']:>9.3f}")
    ratio = med["srpo"]["teacher"] / med["sdpo"]["teacher"]
    print(f"\nteacher pass SRPO/SDPO = {ratio:.3f}  vs routed share {share:.3f}  (target ratio <= share + 0.05: "
          f"{'met' if ratio <= share + 0.05 else 'NOT met'})")
    print(f"step SRPO/SDPO = {med['srpo']['step'] / med['sdpo']['step']:.3f}")
    print(f"step SRPO/GRPO = {med['srpo']['step'] / med['grpo']['step']:.3f}")
    zero = med["srpo_zero"]["step"] / med["grpo"]["step"]
    print(f"step SRPO(zero routed)/GRPO = {zero:.3f}  (target <= 1.03: {'met' if zero <= 1.03 else 'NOT met'})")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

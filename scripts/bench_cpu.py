"""CPU benchmarks of SRPO, one mode per measurement, cases side by side in one run with their ratios.

Run them on a quiet machine: CPU timings move by about +-10% with other load.

    python scripts/bench_cpu.py update [--rows 64 --response-len 96 --hidden 256 --repeats 3]
    python scripts/bench_cpu.py update --memory --vocab 151936 --rows 8 --micro-batch 4 \\
        --prompt-len 64 --response-len 512 --teacher-extra-len 512 --hidden 64 --layers 2 --repeats 1
    python scripts/bench_cpu.py loss [--tokens 2048 --skip-naive]   # default: 4 x 2048 tokens, ~15 GB fp32
    python scripts/bench_cpu.py launch [--before b0402b1 --repeat 2]  # start-up, this tree against a commit
    python scripts/bench_cpu.py launch --algorithm grpo --steps 6 --plain   # a verl step against plain PyTorch

Modes (`python scripts/bench_cpu.py MODE --help` for what each measures and its flags):
  update  SRPO's step against SDPO's and GRPO's on identical batches in verl's engine (--memory: the update's peak)
  loss    time and peak memory of the distillation's per-token losses over the GRPO update's
  launch  trainer launches: start-up milestones, per-step phases, (--plain) against plain PyTorch
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this tree's srpo_verl, installed or not


# ----------------------------------------------------------------------------- update


def update_args(p: argparse.ArgumentParser) -> None:
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


def update_model_dir(args) -> str:
    """The tiny Qwen3; with --vocab, the same with its vocabulary padded to that size (as Qwen3's
    151,936 pads its tokenizer's ~151.7k), written once into the cache."""
    import torch

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


def update(args) -> int:
    """SRPO's step against SDPO's and GRPO's on identical batches, in verl's engine on CPU.

    One process, one verl actor worker (`SRPOActorRolloutRefWorker`, FSDP2 engine, the CPU backend),
    one fixed batch of `rows` responses in groups of `group` with random correctness. A step is what
    the trainer runs on the workers: verl's old-log-prob forward (for SRPO/SDPO it also takes the
    student's top-K ids of the teacher rows), the teacher pass on the teacher rows, verl's actor
    update, and for SRPO/SDPO the EMA step and the trainer's driver work (checks, routing, the
    teacher-pass plan, the step metrics; TransferQueue I/O aside). Methods, timed round-robin per
    repeat so drift hits all alike:
      grpo        verl's own loss, no teacher;
      sdpo        every row with a teacher (a correct sibling other than itself);
      srpo        the failed rows with a correct sibling;
      srpo_zero   SRPO on a batch where no row is routed;
      srpo_25/50  SRPO with every 4th / every 2nd row routed (fixed shares, the same in each micro-batch).
    Printed: medians per phase; teacher-pass SRPO/SDPO next to the routed share (target <= share + 0.05);
    step SRPO/SDPO and SRPO/GRPO; zero-routed SRPO/GRPO (target <= 1.03); at routed shares 0.25 and
    0.5, SRPO step - GRPO step against the teacher's forward on the routed rows + 5% of the GRPO step
    (the cost SRPO cannot avoid); the EMA step as a share of the SRPO step. With --memory, the peak
    memory of the actor update over the update's starting point, per method, and SRPO's extra over
    GRPO's as a multiple of one micro-batch's logits (target <= 0.5x).
    """
    from srpo_verl.cpu.local import as_batch, compose, local_env, update_info

    local_env()  # the CPU backend and a one-rank process group, before verl is imported

    import dataclasses
    import functools

    import numpy as np
    import torch
    import verl  # noqa: F401  (plugin: CPU backend)
    import verl.utils.tensordict_utils as tu
    from omegaconf import OmegaConf
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from srpo_verl import core_algos
    from srpo_verl.integration import wire
    from srpo_verl.integration.trainer import guard_inputs, route_rows, step_metrics, teacher_pass_plan
    from srpo_verl.integration.worker import SRPOActorRolloutRefWorker
    from srpo_verl.lab.peak_memory import GB, PeakMemory
    from srpo_verl.lab.step_costs import bound_lines, phase_table, round_robin

    model = update_model_dir(args)
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
    # The step's fields as the trainer reads them from TransferQueue (the reward on the last token).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    response_mask = [torch.ones(T) for _ in range(rows)]
    step_fields = {
        "uid": np.array(uid, dtype=object),
        "rm_scores": nested([torch.nn.functional.pad(r.view(1), (T - 1, 0)) for r in rewards]),
        "response_mask": nested(response_mask),
        "responses": nested([torch.tensor(r) for _, r in sequences]),
        "prompts": nested([torch.tensor(p) for p, _ in sequences]),
        "extra_fields": [{}] * rows,
    }

    def driver(idx, teacher) -> None:
        """The SRPO trainer's own work on the driver (TransferQueue I/O aside): checks and routing,
        the guard's inputs, the teacher-pass plan, the step metrics. The method's rows replace the
        routing's, as the teacher rows of the other phases do; teacher: every row's teacher fields
        (None when no row was taught)."""
        metrics, real = {}, [True] * rows
        step = route_rows(
            step_fields, real, worker.srpo, tokenizer, group_size=args.group, max_response_length=T, metrics=metrics
        )
        guard_inputs(response_mask, list(step_fields["rm_scores"].unbind()), step_fields["extra_fields"], real)
        marked = torch.tensor([i in idx for i in range(rows)])
        step = dataclasses.replace(step, route=marked, taught=marked)
        teacher_pass_plan(step, list(step_fields["responses"].unbind()), dp_size=1, k=k)
        metrics.update(step_metrics(step, response_mask, teacher, truncated=0))

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
                wire.TEACHER_INPUT_IDS.name: nested([teacher_ids[i] for i in idx]),
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
        # Every row's teacher fields, empty outside the teacher rows (as the trainer stores them).
        empty = {wire.TEACHER_TOPK.name: torch.zeros(0, k)}
        teacher = {
            key: [taught.get(key, {}).get(i, empty.get(key, torch.zeros(0))) for i in range(rows)]
            for key in wire.TEACHER_OUTPUT_NAMES
        }
        if srpo:
            extra[wire.TOPK_IDS.name] = topk  # (sdpo's zero PPO advantage is the loss's own: SRPOConfig.advantage)
            for key in (wire.TEACHER_TOPK.name, wire.TEACHER_ENTROPY.name):  # what the update reads
                extra[key] = teacher[key]
        data = as_batch(sequences, **extra)
        if srpo:
            data[wire.ROUTE.name] = torch.tensor([int(i in idx) for i in range(rows)])
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
        read = {key: nested(values) for key, values in teacher.items()} if idx else None  # TransferQueue's read
        t0 = time.perf_counter()
        if srpo:
            driver(idx, read)
        times["driver"] = time.perf_counter() - t0
        times["step"] = sum(times[key] for key in ("old_log_prob", "teacher", "update", "ema", "driver"))
        return times

    methods = args.methods.split(",")
    med = round_robin(step, methods, args.repeats, log=lambda msg: print(msg, flush=True))
    print(
        f"\nrows {rows} (groups of {args.group}), prompt {args.prompt_len}, teacher extra {args.teacher_extra_len}, "
        f"response {T} tokens; model hidden {args.hidden} x {args.layers}, V {vocab}; micro-batch {args.micro_batch}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("teacher rows: " + ", ".join(f"{m} {len(taught_rows[m])}" for m in methods) + "\n")
    columns = (("driver s", "driver"),) + ((("update peak GiB", "update_peak_gb"),) if args.memory else ())
    print("\n".join(phase_table(med, columns)) + "\n")
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
        print("\n".join(bound_lines(med)))
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
    return 0


# ----------------------------------------------------------------------------- loss


def loss_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary size (Qwen3: 151936)")
    p.add_argument("--tokens", type=int, default=4 * 2048, help="response tokens in the micro-batch")
    p.add_argument("--k", type=int, default=100, help="top-K distillation support (paper: 100)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="logits dtype")
    p.add_argument("--chunk-size", type=int, default=None, help="rows upcast at a time (default: core_algos')")
    p.add_argument("--iters", type=int, default=1, help="timed repetitions per case (the minimum is reported)")
    p.add_argument("--naive-tokens", type=int, default=None, help="tokens for (c); default: the most that fit")
    p.add_argument("--skip-naive", action="store_true", help="do not run the naive reference (c)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=1337)


def loss(args) -> int:
    """Time and peak extra memory of the SRPO per-token losses on CPU, side by side.

    Measures, in one run, on random logits of shape (tokens, vocab):
      (b) GRPO branch, forward + backward: the token log-prob (gather_log_softmax at the sampled token,
          K = 1) + ppo_clip_token_loss + backward;
      (a) the update with every token distilled, as the loss runs it in verl's engine: (b)'s token
          log-prob plus, on every token, full-vocab teacher_entropy (no grad) + student_topk +
          teacher_topk_log_probs + topk_tail_divergence_lent (entropy-weighted) with its dense gradient
          lent to the token log-prob;
      (a') the same with topk_tail_divergence (a private copy of the distilled rows and its own
          gradient), the path before the lent gradient;
      (c) a naive SDPO branch for comparison: torch.log_softmax on the full logits, then gather, and
          the entropy from a full softmax.
    "Extra" memory is the peak process RSS minus a baseline holding the student logits, the teacher
    logits and one logits-sized gradient buffer (the gradient w.r.t. the logits is the unavoidable
    output of the backward pass). The SDPO branch's cost is extra(a) - extra(b): what distilling adds
    to the GRPO update of the same tokens. Target: <= 0.5x the bytes of one logits tensor.

    The naive path needs several (tokens, vocab) fp32 buffers; when they do not fit in the available
    RAM it runs at fewer tokens (--naive-tokens, default: the most that fit) and is compared with (a)
    re-measured at that same size. `--tokens 512` is a quick look; `--dtype bf16 --chunk-size 128`
    another layout.
    """
    import gc

    import psutil
    import torch

    from srpo_verl import core_algos as ca
    from srpo_verl.lab.peak_memory import GB, PeakMemory, rss
    from srpo_verl.lent_gradient import lend_dense_gradient, topk_tail_divergence_lent

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    chunk = args.chunk_size or ca.DEFAULT_CHUNK_SIZE

    def make_inputs(tokens: int):
        g = torch.Generator().manual_seed(args.seed)
        # Logit scale ~ a trained LM's: peaked but not one-hot distributions.
        student = (torch.randn(tokens, args.vocab, generator=g) * 4).to(dtype).requires_grad_()
        teacher = (torch.randn(tokens, args.vocab, generator=g) * 4).to(dtype)
        sampled = torch.randint(0, args.vocab, (tokens, 1), generator=g)  # (N, 1)
        old_log_prob = -torch.rand(1, tokens, generator=g) * 5  # (1, N)
        advantages = torch.randn(1, generator=g)  # one response, (B,) = (1,)
        return student, teacher, sampled, old_log_prob, advantages

    def grpo_branch(student, teacher, sampled, old_log_prob, advantages):
        log_prob = ca.gather_log_softmax(student, sampled, chunk_size=chunk).T  # (1, N)
        loss, _ = ca.ppo_clip_token_loss(log_prob, old_log_prob, advantages)  # (1, N)
        return loss.mean()

    def distilled_update(student, teacher, sampled, old_log_prob, advantages, lent=True):
        n = student.shape[0]
        entropy = ca.teacher_entropy(teacher, chunk_size=chunk)  # (N,)
        index = ca.student_topk(student, k=args.k)  # (N, K)
        teacher_lp = ca.teacher_topk_log_probs(teacher, index, chunk_size=chunk)  # (N, K)
        rows = torch.arange(n)
        if lent:
            out = topk_tail_divergence_lent(student, teacher_lp, index, sampled[:, 0], rows=rows, chunk_size=chunk)
            log_prob = ca.gather_log_softmax(student, sampled, chunk_size=chunk)[:, 0]  # (N,), after, as in verl
            log_prob, div = lend_dense_gradient(
                log_prob, out.divergence, out.dense_weight, torch.ones(n, dtype=torch.bool), out.lend
            )
        else:
            div = ca.topk_tail_divergence(student, teacher_lp, index, chunk_size=chunk)  # (N,)
            log_prob = ca.gather_log_softmax(student, sampled, chunk_size=chunk)[:, 0]
        grpo, _ = ca.ppo_clip_token_loss(log_prob[None], old_log_prob, advantages)  # (1, N)
        weights = ca.entropy_weights(entropy[None], torch.ones(1, n, dtype=torch.bool))  # (1, N)
        return grpo.mean() + (weights[0] * div).mean()

    def copy_update(*inputs):
        return distilled_update(*inputs, lent=False)

    def naive_sdpo_branch(student, teacher, *_):
        with torch.no_grad():
            teacher_log_probs = torch.log_softmax(teacher.float(), dim=-1)  # (N, V)
            entropy = -(teacher_log_probs.exp() * teacher_log_probs).sum(-1)  # (N,)
            index = torch.topk(student, k=min(args.k, args.vocab), dim=-1).indices  # (N, K)
            teacher_lp = teacher_log_probs.gather(-1, index)  # (N, K)
            del teacher_log_probs
        student_lp = torch.log_softmax(student.float(), dim=-1).gather(-1, index)  # (N, K)
        div = ca.generalized_jsd(ca.add_tail_bucket(student_lp), ca.add_tail_bucket(teacher_lp))  # (N,)
        weights = ca.entropy_weights(entropy[None], torch.ones(1, len(entropy), dtype=torch.bool))  # (1, N)
        return (weights[0] * div).mean()

    def measure(step, inputs):
        """Min forward+backward time over --iters, and the peak RSS above logits + one gradient buffer.

        The gradient only exists from backward on, so forward and backward are measured separately and
        the forward peak is charged as if the gradient were already allocated (conservative: the
        baseline holds the gradient buffer throughout)."""
        student = inputs[0]
        grad_bytes = student.numel() * student.element_size()
        best_time, best_extra = float("inf"), 0
        for _ in range(args.iters):
            student.grad = None
            gc.collect()
            base = rss()
            with PeakMemory("cpu") as fwd_peak:
                t0 = time.perf_counter()
                loss = step(*inputs)
                t1 = time.perf_counter()
            with PeakMemory("cpu") as bwd_peak:
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
            del loss
            assert student.grad is not None and torch.isfinite(student.grad[:8].float()).all()
            extra = max(fwd_peak.peak - base, bwd_peak.peak - base - grad_bytes)
            best_time, best_extra = min(best_time, (t1 - t0) + (t3 - t2)), max(best_extra, extra)
        student.grad = None
        gc.collect()
        return best_time, best_extra

    def report(name, seconds, extra, logits_bytes):
        print(f"{name:<44s} {seconds:8.2f} s   extra peak {extra / GB:7.3f} GB = {extra / logits_bytes:5.2f}x logits")

    # warm up every path once on a tiny problem (thread pools, allocator, kernels)
    tiny = make_inputs(8)
    for path in (distilled_update, copy_update, grpo_branch, naive_sdpo_branch):
        path(*tiny).backward()
    del tiny

    itemsize = torch.finfo(dtype).bits // 8
    logits_bytes = args.tokens * args.vocab * itemsize
    print(
        f"tokens {args.tokens}  vocab {args.vocab}  K {args.k}  dtype {args.dtype}  chunk {chunk}  "
        f"threads {torch.get_num_threads()}  peak via {'VmHWM' if PeakMemory('cpu').exact else 'RSS sampling'}"
    )
    print(f"one logits tensor: {logits_bytes / GB:.3f} GB; baseline = student + teacher logits + their gradient")
    print("(the gradient w.r.t. the student logits is the unavoidable output of backward, so it is in the baseline)")

    inputs = make_inputs(args.tokens)
    t_b, m_b = measure(grpo_branch, inputs)
    report("(b) GRPO branch, gather_log_softmax K=1", t_b, m_b, logits_bytes)
    t_a, m_a = measure(distilled_update, inputs)
    report("(a) (b) + every token distilled, lent", t_a, m_a, logits_bytes)
    t_p, m_p = measure(copy_update, inputs)
    report("(a') (b) + every token distilled, private copy", t_p, m_p, logits_bytes)
    del inputs
    gc.collect()
    sdpo, sdpo_copy = m_a - m_b, m_p - m_b
    print(
        f"SDPO branch extra over GRPO: lent {sdpo / logits_bytes:.2f}x logits, private copy "
        f"{sdpo_copy / logits_bytes:.2f}x; time(a)/time(b) = {t_a / t_b:.2f}, time(a')/time(b) = {t_p / t_b:.2f}"
    )
    print(f"target SDPO extra <= 0.5x logits: {'OK' if sdpo <= 0.5 * logits_bytes else 'MISSED'}")
    if args.skip_naive:
        return 0
    naive_tokens = args.naive_tokens
    if naive_tokens is None:
        # Naive path: base (2 logits + grad) plus about 4 fp32 (N, V) buffers; leave 2 GB headroom.
        per_token = args.vocab * (3 * itemsize + 4 * 4)
        naive_tokens = min(args.tokens, int((psutil.virtual_memory().available - 2 * GB) / per_token))
    if naive_tokens < 1:
        print("(c) skipped: not enough free memory")
        return 0
    if naive_tokens != args.tokens:
        print(f"(c) needs more RAM than is free at {args.tokens} tokens: comparing at {naive_tokens} tokens")
        inputs = make_inputs(naive_tokens)
        t_a, m_a = measure(distilled_update, inputs)
        report(f"(a) lent update, {naive_tokens} tokens", t_a, m_a, naive_tokens * args.vocab * itemsize)
    else:
        inputs = make_inputs(naive_tokens)
    t_c, m_c = measure(naive_sdpo_branch, inputs)
    report(f"(c) naive SDPO branch, {naive_tokens} tokens", t_c, m_c, naive_tokens * args.vocab * itemsize)
    print(f"time(c)/time(a) = {t_c / t_a:.2f}   mem(c)/mem(a) = {m_c / max(m_a, 1):.2f}  (extra peaks)")
    return 0


# ----------------------------------------------------------------------------- launch

# (milestone, pattern of the log line that marks it): the first matching line counts.
MILESTONES = (
    ("ray_up", r"Started a local Ray instance"),
    ("task_runner_up", r"\(TaskRunner\w* pid=\d+\)"),
    ("workers_created", r"create worker group"),
    ("model_loaded", r"actor and ref model engine initialized"),
    ("rollout_up", r"checkpoint engine manager initialized"),
    ("fit_start", r"all initialize finished, ready to fit"),
    ("step1_start", r"Training Progress:\s+0%"),
    ("agent_loop_up", r"\(AgentLoopWorker\w* pid=\d+\)"),
    ("step1_done", r"step:1 - "),
)
STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
ANSI = r"\x1b\[[0-9;]*m"
# verl's per-step timings (its `timing_s/*` metrics) as phases; overhead is the step's remainder
# (advantage, weight sync, bookkeeping, and for SRPO/SDPO the teacher pass and the EMA).
PHASE_KEYS = (("rollout", "gen"), ("old log-prob", "old_log_prob"), ("update", "update_actor"))


class _LineClock:
    """Stands in for sys.stdout while the harness echoes the trainer's output: records each line
    with its arrival time (the harness writes one whole line per call)."""

    def __init__(self, passthrough=None):
        import re

        self.ansi = re.compile(ANSI)
        self.lines: list[tuple[float, str]] = []
        self.passthrough = passthrough

    def write(self, text: str) -> int:
        now = time.time()
        for line in text.splitlines():
            self.lines.append((now, self.ansi.sub("", line)))
        if self.passthrough is not None:
            self.passthrough.write(text)
        return len(text)

    def flush(self) -> None:
        if self.passthrough is not None:
            self.passthrough.flush()


def milestones(lines: list[tuple[float, str]], t0: float) -> dict[str, float]:
    """Seconds from t0 to the first line of each milestone. A line's time is the wall-clock time
    written in it when it carries one (verl's INFO lines, Ray's own), else its arrival (Ray forwards
    worker output with ~0.1-0.5 s delay)."""
    import datetime
    import re

    patterns = [(name, re.compile(pattern)) for name, pattern in MILESTONES]
    out: dict[str, float] = {}
    for arrival, line in lines:
        for name, pattern in patterns:
            if name in out or not pattern.search(line):
                continue
            when, m = arrival, re.search(STAMP, line)
            if m:
                stamped = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if abs(stamped - arrival) < 30:  # a date inside a message is not the line's own stamp
                    when = min(stamped, arrival)
            out[name] = when - t0
    return out


PROCESS_KEYS = ("srpo_verl.main_ppo", "gcs_server", "raylet", "dashboard.py", "log_monitor", "monitor.py")
PROCESS_KEYS += ("runtime_env",)


def _short_name(cmd: str) -> str:
    if cmd.startswith("ray::"):
        return cmd.split()[0]
    for key in PROCESS_KEYS:
        if key in cmd:
            return key
    if "ray-dashboard-" in cmd:
        return "dashboard module"
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?"


def _sample_processes(marker: str, stop, seen: dict) -> None:
    """Every 0.5 s, CPU seconds and names of every process in the launch's session (the driver,
    found by `marker` in its command line, started it with start_new_session; Ray's daemons and
    workers stay in it) into seen[pid] = (name, cpu s)."""
    import psutil

    sid = None
    while not stop.wait(0.5):
        if sid is None:
            for p in psutil.process_iter(["pid", "cmdline"]):
                if marker in " ".join(p.info["cmdline"] or []):
                    sid = os.getsid(p.info["pid"])
                    break
            continue
        for p in psutil.process_iter(["pid", "cmdline", "cpu_times", "name"]):
            try:
                if os.getsid(p.info["pid"]) != sid:
                    continue
                cmd = " ".join(p.info["cmdline"] or []) or p.info["name"]
                cpu = p.info["cpu_times"].user + p.info["cpu_times"].system
            except (ProcessLookupError, psutil.Error, TypeError, AttributeError):
                continue
            seen[p.info["pid"]] = (_short_name(cmd), cpu)


def extract_commit(ref: str, dest: str) -> str:
    """`srpo_verl/` of git commit `ref` under dest/; returns dest."""
    import io
    import subprocess
    import tarfile

    data = subprocess.run(["git", "-C", ROOT, "archive", ref, "srpo_verl"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_launch(args, name: str, src: str | None, assets: dict, workdir: str) -> dict:
    """One trainer launch of variant `name` (its srpo_verl/ from `src`, None: this tree)."""
    import threading

    from srpo_verl.demo.harness import launch, tiny_cpu_overrides

    ckpt = os.path.join(workdir, f"ckpt_{name}_{time.time_ns()}")
    overrides = tiny_cpu_overrides(
        assets["model"],
        assets["data"],
        ckpt,
        algorithm=args.algorithm,
        total_steps=args.steps,
        batch_size=args.prompts,
        n=args.n,
        micro_batch_size=args.prompts * args.n,
        max_response_length=args.response_length,
        lr=1e-4,
        experiment=f"bench_{name}",
    )
    # Packed sequences (the SRPO teacher pass needs them), whatever the variant's platform default.
    overrides.append("actor_rollout_ref.model.use_remove_padding=True")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)} if src else {}
    stop, seen = threading.Event(), {}
    sampler = threading.Thread(target=_sample_processes, args=(ckpt, stop, seen), daemon=True)
    clock = _LineClock(sys.__stdout__ if args.verbose else None)
    sampler.start()
    saved, sys.stdout = sys.stdout, clock
    t0 = time.time()
    try:
        result = launch(workdir, f"bench_{name}", overrides, timeout_s=args.timeout, env=env, echo=True)
    finally:
        sys.stdout = saved
        stop.set()
        sampler.join()
    marks = milestones(clock.lines, t0)
    marks["exit"] = result.wall_s
    procs: dict[str, list[float]] = {}
    for pname, cpu in seen.values():
        procs.setdefault(pname, []).append(cpu)
    if result.returncode != 0:
        print(f"[{name}] launch failed ({result.returncode}); log tail:\n{result.log[-3000:]}", file=sys.stderr)
    return {"returncode": result.returncode, "marks": marks, "steps": result.steps, "procs": procs}


def verl_phases(steps: dict[int, dict]) -> dict[str, float]:
    """Medians over the steps after the first (which pays for lazy actor start-up), or step 1 alone."""
    later = [steps[s] for s in sorted(steps) if s > 1] or [steps[s] for s in sorted(steps)]
    med = {
        key: statistics.median(s.get(f"timing_s/{key}", 0.0) for s in later)
        for key in ("step",) + tuple(k for _, k in PHASE_KEYS)
    }
    out = {phase: med[key] for phase, key in PHASE_KEYS}
    out["overhead"] = med["step"] - sum(out.values())
    out["step"] = med["step"]
    return out


def plain_phases(args, model_path: str, data: dict) -> dict[str, float]:
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
    runs = [one_step() for _ in range(args.plain_repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algorithm", default="srpo", choices=["srpo", "sdpo", "grpo"])
    p.add_argument("--steps", type=int, default=1, help="training steps per launch (phases: medians of steps 2..)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (data.train_batch_size)")
    p.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--response-length", type=int, default=8)
    p.add_argument("--plain", action="store_true", help="also the same step in plain PyTorch, verl/plain per phase")
    p.add_argument("--plain-repeats", type=int, default=5)
    p.add_argument("--before", default=None, help="git commit whose srpo_verl/ is the 'before' variant")
    p.add_argument("--variants", default=None, help="comma-separated order, from 'before' and 'after'")
    p.add_argument("--repeat", type=int, default=1, help="launches per variant (interleaved); medians printed")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--verbose", action="store_true", help="echo the trainers' output")
    p.add_argument("--workdir", default=None, help="keep the launches' logs and metrics here (default: removed)")


def launch(args) -> int:
    """Trainer launches on CPU: where start-up goes, what a step costs by phase, and against plain PyTorch.

    Launches `python -m srpo_verl.main_ppo algorithm=ALGORITHM platform=cpu` through the launch
    harness (srpo_verl.demo.harness) with the demo's tiny model and task (warm-started 1M-parameter
    Qwen3, `prompts` x `n` rollouts of <= `response-length` tokens, no checkpoint, no validation)
    and prints, from process start:
      ray_up            `ray.init` returned in the driver ("Started a local Ray instance")
      task_runner_up    the TaskRunner actor's first output (its process imported verl)
      workers_created   verl asked for the training worker group ("create worker group")
      model_loaded      actor (and teacher/ref) engines initialised in the training worker
      rollout_up        the rollout replicas and their HF servers are up ("checkpoint engine manager
                        initialized" follows the replicas' start)
      fit_start         "all initialize finished, ready to fit"
      step1_start       the training loop's progress bar appears (step 1 begins)
      agent_loop_up     the agent-loop worker's first output: verl creates it without waiting for it,
                        and step 1's rollout can only start once it has imported verl (on 2 cores this
                        comes after step1_start)
      step1_done        step 1's metrics line
    then the process count and CPU seconds of everything the launch started (Ray's daemons and actors,
    sampled every 0.5 s), and verl's step by phase from its `timing_s/*` metrics, the median over the
    steps after the first (which pays for lazy actor start-up):
      rollout       timing_s/gen (agent loop, HF server, reward, TransferQueue, replay-buffer wait)
      old log-prob  timing_s/old_log_prob
      update        timing_s/update_actor
      overhead      timing_s/step minus the three above (advantage, weight sync, teacher pass, EMA)
    --plain first runs the same work in one process with plain transformers/PyTorch (HF `generate` of
    `prompts x n` sequences, a no-grad forward for the old log-probs, forward/backward + AdamW on the
    same batch) and prints verl / plain for each phase and the whole step.

    Before/after in one run: `--before REF` extracts `srpo_verl/` of a git commit into a temporary
    directory and runs that variant with it first on PYTHONPATH (the package, its configs and its verl
    plugin entry point then come from that commit); `--variants` picks and orders the variants.
    """
    import shutil
    import tempfile

    from srpo_verl.demo import run as demo_run

    variants = (args.variants or ("before,after" if args.before else "after")).split(",")
    if "before" in variants and not args.before:
        sys.exit("--before COMMIT is needed for the 'before' variant")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    assets = demo_run.prepare_assets(log=lambda msg: None)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_launch_")
    os.makedirs(workdir, exist_ok=True)
    sources = {"after": None}
    if args.before:
        sources["before"] = extract_commit(args.before, os.path.join(workdir, "before_src"))
    # Plain first: right after a launch, Ray's exiting processes still load the cores.
    plain = plain_phases(args, assets["model"], assets["data"]) if args.plain else None
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for i in range(args.repeat):
            for v in variants:
                r = run_launch(args, v, sources[v], assets, workdir)
                runs[v].append(r)
                m = r["marks"]
                print(
                    f"[{v} #{i + 1}] rc={r['returncode']} step1_start={m.get('step1_start', float('nan')):.1f} s "
                    f"step1_done={m.get('step1_done', float('nan')):.1f} s exit={m['exit']:.1f} s",
                    flush=True,
                )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    def med(values):
        values = [x for x in values if x is not None]
        return statistics.median(values) if values else float("nan")

    print(
        f"\n{args.algorithm} on CPU, tiny Qwen3 (~1M params), {args.prompts} prompts x {args.n} rollouts, "
        f"<= {args.response_length} response tokens, {args.steps} step(s) per launch; medians of {args.repeat} "
        f"launch(es); load {os.getloadavg()[0]:.2f}"
    )
    print("\nStart-up, seconds from launch")
    print(f"{'milestone':<18}" + "".join(f"{v:>12}" for v in variants))
    for n in [n for n, _ in MILESTONES] + ["exit"]:
        print(f"{n:<18}" + "".join(f"{med([r['marks'].get(n) for r in runs[v]]):>12.1f}" for v in variants))
    print("\nProcesses the launch started (last run of each variant): count x name, CPU s")
    for v in variants:
        procs = runs[v][-1]["procs"]
        total = sum(sum(c) for c in procs.values())
        parts = sorted(procs.items(), key=lambda kv: -sum(kv[1]))
        print(f"  {v}: {sum(len(c) for c in procs.values())} processes, {total:.0f} CPU s")
        print("    " + ", ".join(f"{len(c)}x {n} {sum(c):.1f}" for n, c in parts))

    phases = {v: [verl_phases(r["steps"]) for r in runs[v] if r["steps"]] for v in variants}
    later = f"steps 2..{args.steps}" if args.steps > 1 else "step 1"
    print(f"\nStep by phase, seconds (median over {later})")
    cols = variants + (["plain", *(f"{v}/plain" for v in variants)] if plain else [])
    print(f"{'phase':<14}" + "".join(f"{c:>14}" for c in cols))
    for phase in [p for p, _ in PHASE_KEYS] + ["overhead", "step"]:
        cells = [med([p[phase] for p in phases[v]]) for v in variants]
        row = "".join(f"{c:>14.3f}" for c in cells)
        if plain:
            row += f"{plain[phase]:>14.3f}" + "".join(
                f"{(f'{c / plain[phase]:.1f}x' if plain[phase] > 0 else '-'):>14}" for c in cells
            )
        print(f"{phase:<14}{row}")
    if args.workdir:
        print(f"\nlogs and metrics: {workdir}")
    return 0 if all(r["returncode"] == 0 for rs in runs.values() for r in rs) else 1


# -----------------------------------------------------------------------------

MODES = {"update": (update_args, update), "loss": (loss_args, loss), "launch": (launch_args, launch)}


def main(argv: list[str] | None = None) -> int:
    from srpo_verl.lab.step_costs import run_modes

    return run_modes(__doc__, MODES, argv)


if __name__ == "__main__":
    sys.exit(main())

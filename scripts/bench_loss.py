"""Benchmark the SRPO per-token losses on CPU: time and peak extra memory, side by side.

Measures, in one run, on random logits of shape (tokens, vocab):
  (b) GRPO branch, forward + backward: the token log-prob (gather_log_softmax at the sampled token,
      K = 1) + ppo_clip_token_loss + backward;
  (a) the update with every token distilled, as the loss runs it in verl's engine: (b)'s token log-prob
      plus, on every token, full-vocab teacher_entropy (no grad) + student_topk + teacher_topk_log_probs
      + topk_tail_divergence_lent (entropy-weighted) with its dense gradient lent to the token log-prob;
  (a') the same with topk_tail_divergence (a private copy of the distilled rows and its own gradient),
      the path before the lent gradient;
  (c) a naive SDPO branch for comparison: torch.log_softmax on the full logits, then gather, and the
      entropy from a full softmax.
"Extra" memory is the peak process RSS minus a baseline holding the student logits, the teacher
logits and one logits-sized gradient buffer (the gradient w.r.t. the logits is the unavoidable output
of the backward pass). The SDPO branch's cost is extra(a) - extra(b): what distilling adds to the
GRPO update of the same tokens. Target: <= 0.5x the bytes of one logits tensor.

The naive path needs several (tokens, vocab) fp32 buffers; when they do not fit in the available RAM it
runs at fewer tokens (--naive-tokens, default: the most that fit) and is compared with (a) re-measured
at that same size.

    python scripts/bench_loss.py                      # paper size: 4 x 2048 tokens, Qwen3 vocab; ~15 GB fp32
    python scripts/bench_loss.py --tokens 512         # quick look
    python scripts/bench_loss.py --dtype bf16 --chunk-size 128
"""

import argparse
import gc
import os
import time

import psutil
import torch

from srpo_verl import core_algos as ca
from srpo_verl.lab.peak_memory import GB, PeakMemory
from srpo_verl.lent_gradient import lend_dense_gradient, topk_tail_divergence_lent

# -----------------------------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--vocab", type=int, default=151936, help="vocabulary size (Qwen3: 151936)")
parser.add_argument("--tokens", type=int, default=4 * 2048, help="response tokens in the micro-batch")
parser.add_argument("--k", type=int, default=100, help="top-K distillation support (paper: 100)")
parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="logits dtype")
parser.add_argument("--chunk-size", type=int, default=ca.DEFAULT_CHUNK_SIZE, help="rows upcast at a time")
parser.add_argument("--iters", type=int, default=1, help="timed repetitions per case (the minimum is reported)")
parser.add_argument("--naive-tokens", type=int, default=None, help="tokens for (c); default: the most that fit")
parser.add_argument("--skip-naive", action="store_true", help="do not run the naive reference (c)")
parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
parser.add_argument("--seed", type=int, default=1337)
args = parser.parse_args()
# -----------------------------------------------------------------------------

if args.threads:
    torch.set_num_threads(args.threads)
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
PROC = psutil.Process(os.getpid())


def rss() -> int:
    return PROC.memory_info().rss


class PeakRSS(PeakMemory):
    """Peak process RSS during a block (srpo_verl/lab/peak_memory.py); `.peak` in bytes."""

    def __init__(self):
        super().__init__("cpu")


def make_inputs(tokens: int):
    g = torch.Generator().manual_seed(args.seed)
    # Logit scale ~ a trained LM's: peaked but not one-hot distributions.
    student = (torch.randn(tokens, args.vocab, generator=g) * 4).to(DTYPE).requires_grad_()
    teacher = (torch.randn(tokens, args.vocab, generator=g) * 4).to(DTYPE)
    sampled = torch.randint(0, args.vocab, (tokens, 1), generator=g)  # (N, 1)
    old_log_prob = -torch.rand(1, tokens, generator=g) * 5  # (1, N)
    advantages = torch.randn(1, generator=g)  # one response, (B,) = (1,)
    return student, teacher, sampled, old_log_prob, advantages


def grpo_branch(student, teacher, sampled, old_log_prob, advantages):
    log_prob = ca.gather_log_softmax(student, sampled, chunk_size=args.chunk_size).T  # (1, N)
    loss, _ = ca.ppo_clip_token_loss(log_prob, old_log_prob, advantages)  # (1, N)
    return loss.mean()


def distilled_update(student, teacher, sampled, old_log_prob, advantages, lent=True):
    n = student.shape[0]
    entropy = ca.teacher_entropy(teacher, chunk_size=args.chunk_size)  # (N,)
    index = ca.student_topk(student, k=args.k)  # (N, K)
    teacher_lp = ca.teacher_topk_log_probs(teacher, index, chunk_size=args.chunk_size)  # (N, K)
    rows = torch.arange(n)
    if lent:
        out = topk_tail_divergence_lent(
            student, teacher_lp, index, sampled[:, 0], rows=rows, chunk_size=args.chunk_size
        )
        log_prob = ca.gather_log_softmax(student, sampled, chunk_size=args.chunk_size)[:, 0]  # (N,), after, as in verl
        log_prob, div = lend_dense_gradient(
            log_prob, out.divergence, out.dense_weight, torch.ones(n, dtype=torch.bool), out.lend
        )
    else:
        div = ca.topk_tail_divergence(student, teacher_lp, index, chunk_size=args.chunk_size)  # (N,)
        log_prob = ca.gather_log_softmax(student, sampled, chunk_size=args.chunk_size)[:, 0]
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
    the forward peak is charged as if the gradient were already allocated (conservative: the brief's
    baseline holds the gradient buffer throughout)."""
    student = inputs[0]
    grad_bytes = student.numel() * student.element_size()
    best_time, best_extra = float("inf"), 0
    for _ in range(args.iters):
        student.grad = None
        gc.collect()
        base = rss()
        with PeakRSS() as fwd_peak:
            t0 = time.perf_counter()
            loss = step(*inputs)
            t1 = time.perf_counter()
        with PeakRSS() as bwd_peak:
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
_tiny = make_inputs(8)
for _step in (distilled_update, copy_update, grpo_branch, naive_sdpo_branch):
    _step(*_tiny).backward()
del _tiny

itemsize = torch.finfo(DTYPE).bits // 8
logits_bytes = args.tokens * args.vocab * itemsize
print(
    f"tokens {args.tokens}  vocab {args.vocab}  K {args.k}  dtype {args.dtype}  chunk {args.chunk_size}  "
    f"threads {torch.get_num_threads()}  peak via {'VmHWM' if PeakRSS().exact else 'RSS sampling'}"
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

if not args.skip_naive:
    naive_tokens = args.naive_tokens
    if naive_tokens is None:
        # Naive path: base (2 logits + grad) plus about 4 fp32 (N, V) buffers; leave 2 GB headroom.
        per_token = args.vocab * (3 * itemsize + 4 * 4)
        naive_tokens = min(args.tokens, int((psutil.virtual_memory().available - 2 * GB) / per_token))
    if naive_tokens < 1:
        print("(c) skipped: not enough free memory")
    else:
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

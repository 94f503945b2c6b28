"""GPU check: SRPO's math and loss hook on a real accelerator against CPU float64, and its memory.

For a machine with one NVIDIA GPU, PyTorch with CUDA and transformers, and possibly no verl or Ray
(docs/gpu.md). Runs in well under 5 minutes on an H100:

  python scripts/gpu_check.py                      # cuda, V = 151,936, 4k and 16k tokens
  python scripts/gpu_check.py --device cpu --vocab 4096 --tokens 256   # the script's own smoke test

1. `core_algos` on the device in fp32 and bf16 against float64 on the CPU: the top-K+tail divergence
   of the routed rows (value and gradient), teacher entropy, top-K log-probs, entropy weights and the
   one-denominator loss.
2. The distillation gradient when the token log-prob's backward writes into the logits first
   (flash-attn's `cross_entropy_loss(inplace_backward=True)` when installed, else an emulation).
3. If verl imports: the SRPO loss hook (`srpo_loss_fn`, both roles) on a micro-batch moved to the
   device, against the float64 reference of tests/loss_case.py.
4. Peak device memory of one micro-batch's update (token log-prob by the in-place cross-entropy plus
   the distillation of the routed rows) over the same update without distillation, against the
   bytes of the bf16 logits, routed shares 0.5 and 1 (the lent distillation gradient the loss uses,
   and the private-copy one for comparison).

Prints one line per check (PASS/FAIL with the measured error and its bound); exits 1 on a FAIL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from srpo_verl import core_algos as ca  # noqa: E402  (no verl import)

sys.path.insert(0, os.path.join(ROOT, "tests"))
from engine_update import update_terms  # noqa: E402  (core_algos only)

FAILED: list[str] = []


def report(name: str, err: float, bound: float) -> None:
    ok = err <= bound
    if not ok:
        FAILED.append(name)
    print(f"{'PASS' if ok else 'FAIL'}  {name:<58s} err {err:.3e}  bound {bound:.1e}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def case(n: int, vocab: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn(n, vocab, generator=g, dtype=torch.float64)
    teacher = student + 0.5 * torch.randn(n, vocab, generator=g, dtype=torch.float64)
    rows = torch.randperm(n, generator=g)[: n // 2].sort().values  # half the tokens routed
    return student, teacher, rows, k


def check_math(device: str, vocab: int, n: int, k: int) -> None:
    student, teacher, rows, k = case(n, vocab, k)
    idx = ca.student_topk(student, k=k, rows=rows)
    log_q = ca.teacher_topk_log_probs(teacher, idx, rows=rows)
    # bf16 stores logits with 8 mantissa bits (|x| ~ 8: rounding ~3e-2): bounds follow the input rounding.
    for dtype, bound in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        tag = str(dtype).replace("torch.", "")
        x = student.to(device, dtype).requires_grad_()
        r = rows.to(device)
        div = ca.topk_tail_divergence(x, log_q.to(device), idx.to(device), rows=r)
        div.sum().backward()
        ref_x = student.to(dtype).double().requires_grad_()  # the same rounded inputs, float64
        ref = ca.topk_tail_divergence(ref_x, log_q, idx, rows=rows)
        ref.sum().backward()
        report(f"topk_tail_divergence value [{tag}] vs float64 of the same input", rel(div, ref), bound)
        report(f"topk_tail_divergence grad  [{tag}] vs float64 of the same input", rel(x.grad, ref_x.grad), 2 * bound)
        assert x.grad.device.type == torch.device(device).type and x.grad.dtype == dtype
        t = teacher.to(device, dtype)
        report(f"teacher_entropy            [{tag}]", rel(ca.teacher_entropy(t, rows=r), ca.teacher_entropy(teacher.to(dtype).double(), rows=rows)), bound)
        report(f"teacher_topk_log_probs     [{tag}]", rel(ca.teacher_topk_log_probs(t, idx.to(device), rows=r), ca.teacher_topk_log_probs(teacher.to(dtype).double(), idx, rows=rows)), bound)
    # Weights and the one-denominator loss on (B, T) tensors.
    g = torch.Generator().manual_seed(1)
    ent, mask = 5 * torch.rand(6, 9, generator=g, dtype=torch.float64), torch.rand(6, 9, generator=g) > 0.3
    lg, ls = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.rand(6, 9, generator=g, dtype=torch.float64)
    route = torch.tensor([True, False, True, False, True, False])
    w64 = ca.entropy_weights(ent, mask & route[:, None])
    l64 = ca.srpo_loss(lg, ls, route, w64, mask, num_tokens=int(mask.sum()))
    w = ca.entropy_weights(ent.float().to(device), (mask & route[:, None]).to(device))
    loss = ca.srpo_loss(lg.float().to(device), ls.float().to(device), route.to(device), w, mask.to(device), num_tokens=int(mask.sum()))
    report("entropy_weights [fp32]", rel(w, w64), 1e-5)
    report("srpo_loss       [fp32]", rel(loss, l64), 1e-5)


def inplace_logprobs():
    """Token log-probs whose backward writes into the logits: flash-attn's, else an emulation."""
    try:
        from flash_attn.ops.triton.cross_entropy import cross_entropy_loss

        def flash(logits, labels):
            return -cross_entropy_loss(logits, labels, inplace_backward=True)[0]

        return "flash-attn triton cross_entropy_loss(inplace_backward=True)", flash
    except Exception:  # noqa: BLE001 - not installed: emulate the contract
        sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
        from virtual_cuda import inplace_logprobs_from_logits

        return "emulated in-place cross-entropy (flash-attn not installed)", inplace_logprobs_from_logits


def check_inplace(device: str, vocab: int, n: int, k: int) -> None:
    student, teacher, rows, k = case(n, vocab, k, seed=2)
    labels = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(3))
    idx = ca.student_topk(student, k=k, rows=rows)
    log_q = ca.teacher_topk_log_probs(teacher, idx, rows=rows)
    name, logprobs = inplace_logprobs()
    x = student.float().to(device).requires_grad_()
    logits = x * 1.0  # a non-leaf, as the engine's logits
    div = ca.topk_tail_divergence(logits, log_q.to(device), idx.to(device), rows=rows.to(device))
    token = logprobs(logits, labels.to(device))  # created after the divergence: its backward runs first
    (div.sum() + token.sum()).backward()
    ref = student.clone().requires_grad_()
    ref_token = torch.log_softmax(ref, -1).gather(-1, labels[:, None]).squeeze(-1)
    (ca.topk_tail_divergence(ref, log_q, idx, rows=rows).sum() + ref_token.sum()).backward()
    report(f"gradient with {name[:40]}", rel(x.grad, ref.grad), 1e-4)
    # The engine's path: the divergence's dense part lent to the cross-entropy, its entries rewritten.
    x.grad = None
    token, div = update_terms(x * 1.0, labels.to(device), rows.to(device), idx.to(device), log_q.to(device), logprobs=logprobs)
    (div.sum() + token.sum()).backward()
    report("lent gradient with the same cross-entropy", rel(x.grad, ref.grad), 1e-4)
    report("lent gradients left incomplete", float(ca.pending_gradient_merges()), 0.0)
    # bf16 logits: the lent path rewrites the entries where the cross-entropy's rounded value and the
    # divergence's part cancel, so its error stays that of the private-copy path (one bf16 rounding).
    x16 = student.to(device, torch.bfloat16)
    ref16 = x16.double().cpu().requires_grad_()
    ref_token = torch.log_softmax(ref16, -1).gather(-1, labels[:, None]).squeeze(-1)
    (ca.topk_tail_divergence(ref16, log_q.double(), idx, rows=rows).sum() + ref_token.sum()).backward()
    errs = []
    for lent in (False, True):
        leaf = x16.clone().requires_grad_()
        logits = leaf * 1.0
        if lent:
            token, div = update_terms(logits, labels.to(device), rows.to(device), idx.to(device), log_q.to(device), logprobs=logprobs)
        else:
            div = ca.topk_tail_divergence(logits, log_q.to(device), idx.to(device), rows=rows.to(device))
            token = logprobs(logits, labels.to(device))
        (div.sum() + token.sum()).backward()
        errs.append(rel(leaf.grad, ref16.grad))
    report(f"bf16 lent gradient error / private copy's ({errs[1]:.1e} / {errs[0]:.1e})", errs[1] / max(errs[0], 1e-12), 1.5)


def check_loss_hook(device: str) -> None:
    try:
        import verl  # noqa: F401
        from functools import partial

        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from loss_case import ACTOR, K, RESPONSE_LENS, engine_like_call, make_batch, reference_loss

        from srpo_verl.algo_config import SRPOConfig
        from srpo_verl.integration.loss import srpo_loss_fn
    except Exception as exc:  # noqa: BLE001
        print(f"SKIP  loss hook: verl not importable here ({type(exc).__name__}: {exc})", flush=True)
        return
    batch = make_batch()
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    _, log_mean = reference_loss(batch, batch["student_logits"], beta=1.0, alpha=0.5)
    _, logprobs = inplace_logprobs()
    x = batch["student_logits"].clone().to(device).requires_grad_()
    loss, _ = engine_like_call(
        fn, batch, range(5), x * 1.0, logprobs=lambda lg, lb, inplace_backward=True: logprobs(lg.float(), lb),
        move=lambda d: d.to(device), num_tokens=sum(RESPONSE_LENS), log_mean=log_mean,
    )
    loss.backward()
    ref_x = batch["student_logits"].clone().requires_grad_()
    ref, _ = reference_loss(batch, ref_x, beta=1.0, alpha=0.5)
    ref.backward()
    report("loss hook (both roles) value on the device", rel(loss, ref), 1e-5)
    report("loss hook (both roles) gradient on the device", rel(x.grad, ref_x.grad), 1e-4)


def check_memory(device: str, vocab: int, tokens: list[int], k: int) -> None:
    """Peak memory of one micro-batch's update as verl's engine runs it (token log-prob by the
    in-place cross-entropy, plus the distillation of the routed rows), against the same update
    without distillation (GRPO): SRPO's extra over GRPO as a multiple of the bf16 logits."""
    if not device.startswith("cuda"):
        print("SKIP  memory: not a CUDA device", flush=True)
        return
    _, logprobs = inplace_logprobs()

    def peak(n: int, share: float, distil: str | None) -> tuple[int, float]:
        torch.cuda.empty_cache()
        g = torch.Generator(device=device).manual_seed(0)
        leaf = torch.randn(n, vocab, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
        rows = torch.arange(0, n, int(round(1 / share)), device=device)
        idx = ca.student_topk(leaf.detach(), k=k, rows=rows)
        log_q = torch.log_softmax(torch.randn(rows.numel(), k, device=device, generator=g), -1)
        labels = torch.randint(0, vocab, (n,), device=device, generator=g)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        logits = leaf * 1.0  # the engine's logits: a non-leaf the token log-prob and the distillation share
        if distil == "lent":  # the loss's path
            token, div = update_terms(logits, labels, rows, idx, log_q, logprobs=logprobs)
            loss = token.sum() + div.sum()
        else:
            loss = logprobs(logits, labels).sum()
            if distil == "copy":  # the private copy of the routed rows, a separate gradient
                loss = loss + ca.topk_tail_divergence(logits, log_q, idx, rows=rows).sum()
        loss.backward()
        torch.cuda.synchronize()
        out = torch.cuda.max_memory_allocated() - base, time.perf_counter() - start
        del leaf, logits, loss, idx, log_q, labels
        return out

    for n in tokens:
        logits_bytes = n * vocab * 2
        grpo, grpo_s = peak(n, 1.0, distil=None)
        for share in (0.5, 1.0):
            lent, lent_s = peak(n, share, distil="lent")
            copy, copy_s = peak(n, share, distil="copy")
            print(
                f"MEM   update V={vocab} tokens={n:>6d} routed={share:.1f}: SRPO - GRPO peak = "
                f"{(lent - grpo) / logits_bytes:.3f}x the bf16 logits ({logits_bytes / 2**30:.2f} GiB; "
                f"{(lent - grpo) / 2**20:.0f} MiB) with the lent gradient, {(copy - grpo) / logits_bytes:.2f}x with a "
                f"private copy; "
                f"{lent_s * 1e3:.0f} ms (copy {copy_s * 1e3:.0f} ms) vs GRPO {grpo_s * 1e3:.0f} ms",
                flush=True,
            )
    assert ca.pending_gradient_merges() == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", default="4096,16384", help="token counts for the memory check")
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible", flush=True)
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}  device {name}  vocab {args.vocab}", flush=True)
    start = time.perf_counter()
    check_math(args.device, args.vocab, n=64, k=args.k)
    check_inplace(args.device, args.vocab, n=64, k=args.k)
    check_loss_hook(args.device)
    check_memory(args.device, args.vocab, [int(t) for t in args.tokens.split(",")], args.k)
    print(f"done in {time.perf_counter() - start:.0f} s; {len(FAILED)} failed" + (f": {FAILED}" if FAILED else ""))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())

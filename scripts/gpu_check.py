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
   device, against the float64 reference of srpo_verl/lab/loss_case.py.
4. Peak device memory of one micro-batch's update (token log-prob by the in-place cross-entropy plus
   the distillation of the routed rows) over the same update without distillation, against the
   bytes of the bf16 logits, routed shares 0.5 and 1 (the lent distillation gradient the loss uses,
   and the private-copy one for comparison).

`--engine` instead runs verl's FSDP2 engine in this process (one rank, bf16 mixed precision, a tiny
Qwen3 with V = 151,936): one SRPO update against float64 from the HF weights (value and gradient), the
old-log-prob forward with the top-K hook, the EMA step, the teacher pass with the EMA teacher, the
teacher's save/load, and the update's peak memory over GRPO's (CUDA). It needs verl, hydra and
tensordict: on a lent GPU from the kit of scripts/gpu_kit.py (docs/gpu.md); without Ray it uses a
minimal import shim (install_ray_shim).

  python scripts/gpu_check.py --engine             # cuda, about a minute after the kit's install
  python scripts/gpu_check.py --engine --device cpu

Prints one line per check (PASS/FAIL with the measured error and its bound); exits 1 on a FAIL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the GPU kit runs this from a checkout where srpo_verl is not installed
from srpo_verl import core_algos as ca  # noqa: E402  (no verl import)
from srpo_verl.lab.engine_update import update_terms  # noqa: E402  (core_algos only)
from srpo_verl.lent_gradient import LendBook  # noqa: E402  (no verl import)
from srpo_verl.integration import wire  # noqa: E402  (no verl import)

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
        report(
            f"teacher_entropy            [{tag}]",
            rel(ca.teacher_entropy(t, rows=r), ca.teacher_entropy(teacher.to(dtype).double(), rows=rows)),
            bound,
        )
        report(
            f"teacher_topk_log_probs     [{tag}]",
            rel(
                ca.teacher_topk_log_probs(t, idx.to(device), rows=r),
                ca.teacher_topk_log_probs(teacher.to(dtype).double(), idx, rows=rows),
            ),
            bound,
        )
    # Weights and the one-denominator loss on (B, T) tensors.
    g = torch.Generator().manual_seed(1)
    ent, mask = 5 * torch.rand(6, 9, generator=g, dtype=torch.float64), torch.rand(6, 9, generator=g) > 0.3
    lg, ls = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.rand(6, 9, generator=g, dtype=torch.float64)
    route = torch.tensor([True, False, True, False, True, False])
    w64 = ca.entropy_weights(ent, mask & route[:, None])
    l64 = ca.srpo_loss(lg, ls, route, w64, mask, num_tokens=int(mask.sum()))
    w = ca.entropy_weights(ent.float().to(device), (mask & route[:, None]).to(device))
    loss = ca.srpo_loss(
        lg.float().to(device), ls.float().to(device), route.to(device), w, mask.to(device), num_tokens=int(mask.sum())
    )
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
        from srpo_verl.lab.virtual_cuda import inplace_logprobs_from_logits

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
    book = LendBook()
    token, div = update_terms(
        x * 1.0, labels.to(device), rows.to(device), idx.to(device), log_q.to(device), logprobs=logprobs, book=book
    )
    (div.sum() + token.sum()).backward()
    report("lent gradient with the same cross-entropy", rel(x.grad, ref.grad), 1e-4)
    report("lent gradients left incomplete", float(book.incomplete()), 0.0)
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
            token, div = update_terms(
                logits, labels.to(device), rows.to(device), idx.to(device), log_q.to(device), logprobs=logprobs
            )
        else:
            div = ca.topk_tail_divergence(logits, log_q.to(device), idx.to(device), rows=rows.to(device))
            token = logprobs(logits, labels.to(device))
        (div.sum() + token.sum()).backward()
        errs.append(rel(leaf.grad, ref16.grad))
    report(
        f"bf16 lent gradient error / private copy's ({errs[1]:.1e} / {errs[0]:.1e})", errs[1] / max(errs[0], 1e-12), 1.5
    )


def check_loss_hook(device: str) -> None:
    try:
        import verl  # noqa: F401
        from functools import partial

        from srpo_verl.algo_config import SRPOConfig
        from srpo_verl.integration.loss import srpo_loss_fn
        from srpo_verl.lab.loss_case import ACTOR, K, RESPONSE_LENS, engine_like_call, make_batch, reference_loss
    except Exception as exc:  # noqa: BLE001
        print(f"SKIP  loss hook: verl not importable here ({type(exc).__name__}: {exc})", flush=True)
        return
    batch = make_batch()
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    _, log_mean = reference_loss(batch, batch["student_logits"], beta=1.0, alpha=0.5)
    _, logprobs = inplace_logprobs()
    x = batch["student_logits"].clone().to(device).requires_grad_()
    loss, _ = engine_like_call(
        fn,
        batch,
        range(5),
        x * 1.0,
        logprobs=lambda lg, lb, inplace_backward=True: logprobs(lg.float(), lb),
        move=lambda d: d.to(device),
        num_tokens=sum(RESPONSE_LENS),
        log_mean=log_mean,
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
    book = LendBook()  # every lent update measured below must complete

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
            token, div = update_terms(logits, labels, rows, idx, log_q, logprobs=logprobs, book=book)
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
    assert book.incomplete() == 0


# ---------------------------------------------------------------------------------------------------
# --engine: verl's FSDP2 engine in this process, one rank, bf16, a tiny Qwen3 with the real vocabulary.

EMBED_STD = 0.1
RAY_SHIM_NOTE = "Ray is not installed: scripts/gpu_check.py's import shim serves the in-process engine only"


def install_ray_shim() -> None:
    """The names verl 0.9.1 reads from Ray when its worker classes are imported and run in one process.

    verl decorates its worker classes with `ray.remote` and imports Ray's placement-group,
    scheduling and state types at module level; an in-process, single-rank engine never starts an
    actor. These modules provide exactly those names (a decorator that returns its target, types no
    object is an instance of, `is_initialized() == False`); anything that would reach Ray raises.
    Used only by `--engine` when `import ray` fails (the GPU kit carries no Ray: docs/gpu.md)."""

    def unavailable(name):
        def call(*args, **kwargs):
            raise RuntimeError(f"ray.{name}: {RAY_SHIM_NOTE}")

        return call

    def remote(*args, **kwargs):  # @ray.remote and @ray.remote(num_cpus=...)
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return lambda target: target

    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package: `import ray.util.placement_group` finds the children in sys.modules
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
        return mod

    kind = lambda name: type(name, (), {"__module__": "ray"})  # noqa: E731  (isinstance is always False)
    module(
        "ray",
        __version__="0+srpo-shim",
        remote=remote,
        ObjectRef=kind("ObjectRef"),
        is_initialized=lambda: False,
        init=unavailable("init"),
        get=unavailable("get"),
        put=unavailable("put"),
        kill=unavailable("kill"),
        get_actor=unavailable("get_actor"),
    )
    module("ray.actor", ActorHandle=kind("ActorHandle"), ActorClass=kind("ActorClass"))
    module("ray.util", get_node_ip_address=lambda: "127.0.0.1")
    module("ray.util.collective")
    module(
        "ray.util.placement_group",
        PlacementGroup=kind("PlacementGroup"),
        placement_group=unavailable("placement_group"),
    )
    module(
        "ray.util.scheduling_strategies",
        NodeAffinitySchedulingStrategy=kind("NodeAffinitySchedulingStrategy"),
        PlacementGroupSchedulingStrategy=kind("PlacementGroupSchedulingStrategy"),
    )
    module("ray.experimental")
    module("ray.experimental.state")
    module("ray.experimental.state.api", get_actor=unavailable("experimental.state.api.get_actor"))


def real_vocab_model(out_dir: str, vocab: int, hidden: int = 64, layers: int = 2, seed: int = 0) -> str:
    """A tiny Qwen3 (srpo_verl.demo.tiny_model's config) with `vocab` output classes, written once.

    The embedding (tied to the LM head) is drawn with std 0.3 rather than Qwen's 0.02, so that the
    logits spread over a few units, as a trained model's do, and the top-K and the tail matter."""
    import torch
    from transformers import AutoModelForCausalLM

    from srpo_verl.demo.tiny_model import build_config, build_tokenizer, write_dir_atomically

    marker = os.path.join(out_dir, "gpu_check_model.json")
    spec = {"vocab": vocab, "hidden": hidden, "layers": layers, "seed": seed, "embed_std": EMBED_STD}
    if os.path.exists(marker) and open(marker).read() == repr(spec):
        return out_dir
    tokenizer = build_tokenizer()  # the character tokenizer: the batch is token ids, never text
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = build_config(vocab, hidden_size=hidden, num_layers=layers, eos_id=eos_id, pad_id=pad_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, EMBED_STD)

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, "gpu_check_model.json"), "w") as f:
            f.write(repr(spec))

    return write_dir_atomically(out_dir, write)


def line(ok: bool, name: str, figure: str) -> None:
    if not ok:
        FAILED.append(name)
    print(f"{'PASS' if ok else 'FAIL'}  {name:<52s} {figure}", flush=True)


def norm_rel(got: dict, ref: dict) -> float:
    """||got - ref|| / ||ref|| over every parameter of `ref` (norm-wise: bf16 rounds each entry)."""
    diff = sum(float((got[k].double() - ref[k].double()).pow(2).sum()) for k in ref)
    return (diff / max(sum(float(ref[k].double().pow(2).sum()) for k in ref), 1e-300)) ** 0.5


def max_abs(got, ref) -> float:
    return max(float((g.double().cpu() - r.double().cpu()).abs().max()) for g, r in zip(got, ref))


def teacher_reference(model_path: str, state: dict, ids: list, rows: list, teacher_prompts, responses):
    """float64 teacher log-probs at `ids` and entropy, from the HF model with the teacher's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64, attn_implementation="eager").eval()
    missing, _ = model.load_state_dict({k: v.double() for k, v in state.items()}, strict=False)
    assert not [k for k in missing if "lm_head" not in k], missing  # the LM head is tied to the embedding
    topk, entropy = [], []
    with torch.no_grad():
        for j, i in enumerate(rows):
            prompt = teacher_prompts[i]
            logits = model(torch.tensor([prompt + responses[i]])).logits[0, len(prompt) - 1 : -1]
            log_q = torch.log_softmax(logits, -1)
            topk.append(log_q.gather(-1, ids[j].long()))
            entropy.append(-(log_q.exp() * log_q).sum(-1))
    return topk, entropy


def host_params(probe, worker) -> dict:
    """The student's full parameters in float64 on the host, where the float64 reference lives."""
    return {name: p.cpu() for name, p in probe.full_params(worker).items()}


def check_engine(device: str, vocab: int, k: int, workdir: str) -> None:
    """One SRPO step of verl's FSDP2 engine (srpo_verl/lab/srpo_update.py's batch and passes)
    against float64 from the HF weights, then the EMA step, the teacher pass with the EMA teacher,
    the teacher's save/load, and the update's peak memory over GRPO's."""
    import torch

    from srpo_verl.lab import srpo_update as probe

    cuda = device.startswith("cuda")
    precision = "{param_dtype:bf16,reduce_dtype:fp32,buffer_dtype:fp32}"
    overrides = [
        f"actor_rollout_ref.actor.fsdp_config.mixed_precision={precision}",
        f"actor_rollout_ref.ref.fsdp_config.mixed_precision={precision}",  # the EMA teacher's engine
    ]
    if cuda:  # verl's GPU defaults, less what the lent machine lacks (flash-attn) or would only slow
        overrides += [
            "actor_rollout_ref.actor.strategy=fsdp2",
            "actor_rollout_ref.ref.strategy=fsdp2",
            "actor_rollout_ref.model.override_config.attn_implementation=sdpa",
            "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
            "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        ]
    model_path = real_vocab_model(os.path.join(workdir, f"tiny_qwen3_v{vocab}"), vocab)
    config = probe.srpo_config(model_path, probe.ROWS, topk=k, platform=None if cuda else "cpu", overrides=overrides)
    rate = float(config.algorithm.srpo.ema_rate)
    worker = probe.new_worker(config)
    grpo_loss = worker.loss_fn
    probe.srpo_setup(worker, config)
    prompts, responses, teacher_prompts, advantages, old_offsets, is_weights = probe.fixed_batch(high=vocab)
    sequences = list(zip(prompts, responses))
    routed = probe.ROUTED

    def peak_of(step):
        if not cuda:
            return step(), 0
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = step()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base

    start = time.perf_counter()
    log_probs, topk = probe.old_log_prob_pass(worker, sequences)
    old = [lp + off for lp, off in zip(log_probs, old_offsets)]
    taught = probe.teacher_pass(worker, topk, teacher_prompts, responses)
    theta0 = host_params(probe, worker)
    srpo_data = lambda: probe.update_batch(sequences, old, advantages, is_weights, taught, range(probe.ROWS))  # noqa: E731
    output, _ = peak_of(lambda: worker.update_actor(srpo_data()))
    theta1 = host_params(probe, worker)
    engine_s = time.perf_counter() - start
    ref = probe.reference_update(model_path, {"old": old}, topk=k, high=vocab, topk_ids=[topk[i] for i in routed])

    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3): a log-prob near -12 is off by
    # ~2e-2 per rounded logit, and gradients norm-wise by a few 1e-3 of their norm.
    line(
        max_abs(log_probs, ref["log_probs"]) < 0.1,
        "old-log-prob forward: log-probs vs float64",
        f"max abs err {max_abs(log_probs, ref['log_probs']):.2e} (bound 1e-1)",
    )
    shapes = all(topk[i].shape == (len(responses[i]), k) for i in routed) and all(
        len(topk[i]) == 0 for i in range(probe.ROWS) if i not in routed
    )
    shortfall = max_abs(ref["topk_logits"], ref["true_topk_logits"])
    line(
        shapes and shortfall < 0.1,
        f"top-K hook: K={k} ids on the routed rows",
        f"float64 logits at its ids vs the true top-K: max abs {shortfall:.2e} (bound 1e-1)",
    )
    err_q = max_abs(taught[wire.TEACHER_TOPK.name], ref["teacher_topk"])
    line(err_q < 0.1, "teacher pass (teacher = student): top-K log-probs", f"max abs err {err_q:.2e} (bound 1e-1)")
    # bf16 errors are of the order of the distillation's own share: each figure comes with the
    # distance to GRPO's answer on the same batch (no row routed), which a missing or misplaced
    # distillation term would leave the engine at.
    grpo = probe.reference_update(model_path, {"old": old}, topk=k, high=vocab, distil=False)
    loss = float(probe.update_loss(output))
    loss_err, loss_gap = abs(loss - ref["loss"]) / abs(ref["loss"]), abs(grpo["loss"] - ref["loss"]) / abs(ref["loss"])
    line(
        loss_err < 5e-2 and loss_err < 0.2 * loss_gap,
        "SRPO update: loss vs float64",
        f"{loss:.6f} vs {ref['loss']:.6f}: rel err {loss_err:.2e} (bound 5e-2 and 0.2x GRPO's {loss_gap:.2e})",
    )
    grad = {name: theta0[name] - theta1[name] for name in theta0}  # SGD, lr 1: the step is the gradient
    grad_err, grad_gap = norm_rel(grad, ref["grad"]), norm_rel(grpo["grad"], ref["grad"])
    line(
        grad_err < 5e-2 and grad_err < 0.2 * grad_gap,
        "SRPO update: gradient vs float64",
        f"norm-wise rel err {grad_err:.2e} over {len(ref['grad'])} tensors (bound 5e-2 and 0.2x GRPO's {grad_gap:.2e})",
    )

    # The EMA step: theta' = (1 - rate) theta_0 + rate theta_1, and its gap metric.
    metrics = worker.srpo_ema_update()
    teacher = worker.srpo_teacher_state()
    expected = {name: theta0[name] + rate * (theta1[name] - theta0[name]) for name in theta0}
    ema_err = max(float((teacher[n].double() - expected[n]).abs().max()) for n in expected)
    gap = (1 - rate) * sum(float((theta1[n] - theta0[n]).pow(2).sum()) for n in theta0) ** 0.5
    gap_err = abs(metrics["srpo/teacher_student_l2"] - gap) / max(gap, 1e-30)
    line(
        ema_err < 1e-6 and gap_err < 1e-3,
        f"EMA step (rate {rate})",
        f"teacher vs lerp(theta_0, theta_1): max abs {ema_err:.1e}; gap metric rel err {gap_err:.1e}",
    )

    # The teacher pass now runs the EMA teacher, which differs from the student.
    _, topk1 = probe.old_log_prob_pass(worker, sequences)
    taught1 = probe.teacher_pass(worker, topk1, teacher_prompts, responses)
    ids1 = [topk1[i] for i in routed]
    ref_q, ref_h = teacher_reference(model_path, teacher, ids1, routed, teacher_prompts, responses)
    err_q, err_h = max_abs(taught1[wire.TEACHER_TOPK.name], ref_q), max_abs(taught1[wire.TEACHER_ENTROPY.name], ref_h)
    line(
        err_q < 0.1 and err_h < 0.1,
        "teacher pass with the EMA teacher vs float64",
        f"top-K log-probs max abs err {err_q:.2e}, entropy {err_h:.2e} (bound 1e-1)",
    )

    # Save, overwrite the teacher, load: the teacher comes back exactly.
    ckpt = os.path.join(workdir, "ckpt")
    worker.save_checkpoint(ckpt, global_step=1)
    with torch.no_grad():
        for _, t, _ in worker._param_pairs():
            t.zero_()
    worker.load_checkpoint(ckpt)
    loaded = worker.srpo_teacher_state()
    load_err = max(float((loaded[n] - teacher[n]).abs().max()) for n in teacher)
    line(load_err == 0.0, "teacher save/load", f"max abs diff after load {load_err:.1e} (bound 0)")

    # Peak memory of the update, SRPO over GRPO (verl's own loss, no distillation), same rows.
    if cuda:
        grpo_data = probe.as_batch(sequences, old_log_probs=old, advantages=advantages, rollout_is_weights=is_weights)
        probe.update_info(grpo_data, probe.ROWS)
        srpo, worker.srpo = worker.srpo, None
        srpo_fn = worker.loss_fn
        worker.set_loss_fn(grpo_loss)
        _, grpo_peak = peak_of(lambda: worker.update_actor(grpo_data))
        worker.srpo = srpo
        worker.set_loss_fn(srpo_fn)
        _, srpo_peak = peak_of(lambda: worker.update_actor(srpo_data()))
        tokens = sum(len(p) + len(r) for p, r in sequences)
        logits_bytes = tokens * vocab * 2
        extra = (srpo_peak - grpo_peak) / logits_bytes
        line(
            extra < 1.0,
            "update peak memory, SRPO over GRPO",
            f"{(srpo_peak - grpo_peak) / 2**20:.1f} MiB = {extra:.2f}x the bf16 logits of {tokens} tokens "
            f"(SRPO {srpo_peak / 2**20:.0f} MiB, GRPO {grpo_peak / 2**20:.0f} MiB; bound 1.0x)",
        )
    else:
        print("SKIP  update peak memory: CUDA only (no allocator statistics on the CPU)", flush=True)
    print(f"engine: {engine_s:.0f} s for the first passes and update; {probe.ROWS} rows, V={vocab}, K={k}", flush=True)
    torch.distributed.destroy_process_group()


def engine_main(args) -> int:
    """verl's engine check (`--engine`): process-wide setup first, then check_engine."""
    import tempfile

    from srpo_verl.cpu.local import local_env

    cuda = args.device.startswith("cuda")
    local_env(cpu=not cuda)
    try:
        import ray  # noqa: F401

        ray_note = "ray " + ray.__version__
    except ImportError:
        install_ray_shim()
        ray_note = "ray: import shim (not installed)"
    import verl

    import srpo_verl.plugin  # noqa: F401  (the entry point's work, where srpo_verl is not pip-installed)

    if cuda and not torch.cuda.is_available():
        print("no CUDA device visible", flush=True)
        return 2
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"torch {torch.__version__}  verl {verl.__version__}  {ray_note}  device {name}", flush=True)
    start = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="gpu_check_engine_")
    check_engine(args.device, args.vocab, args.k, workdir)
    print(f"done in {time.perf_counter() - start:.0f} s; {len(FAILED)} failed" + (f": {FAILED}" if FAILED else ""))
    return 1 if FAILED else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", default="4096,16384", help="token counts for the memory check")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--engine", action="store_true", help="verl's FSDP2 engine check instead (needs verl: docs/gpu.md)"
    )
    parser.add_argument(
        "--workdir", help="--engine: where the model and checkpoint go (default: a new temporary folder)"
    )
    args = parser.parse_args()
    if args.engine:
        return engine_main(args)
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

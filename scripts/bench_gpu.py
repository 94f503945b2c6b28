"""GPU benchmarks of SRPO at Qwen3's vocabulary, one mode per measurement, cases side by side in one run.

For a machine with a CUDA GPU, PyTorch and transformers, and no verl (the lent GPU machines have no
verl): each mode runs the functions SRPO's workers call on a randomly initialised Qwen3-architecture
model. `--device cpu` runs the same on the CPU (the suite's smoke tests).

    python scripts/bench_gpu.py step                              # hidden 2048 x 8 layers, 8 rows of 512 + 2048
    python scripts/bench_gpu.py step --qwen3-8b --micro-batch 1   # the paper's model shape (~100 GB on one GPU)
    python scripts/bench_gpu.py teacher-memory                    # 8 x (512 + 1024 + 2048) teacher tokens
    python scripts/bench_gpu.py teacher-memory --device cpu --rows 2
    python scripts/bench_gpu.py step --device cpu --hidden 64 --layers 1 --rows 4 --prompt-len 16 \\
        --response-len 32 --demo-len 16 --vocab 2048 --repeats 1     # the step mode's own smoke test

Modes (`python scripts/bench_gpu.py MODE --help` for what each measures and its flags):
  step            what SRPO adds to a GRPO step beyond the teacher's forward, at routed shares 0.25 and 0.5
  teacher-memory  peak memory of the teacher pass, full logits against response positions only
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the lent GPU machines run this from a checkout, srpo_verl not installed

from srpo_verl.integration import wire  # noqa: E402  (no verl import)


def step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 3 x hidden)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden / 128)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default heads / 2)")
    p.add_argument("--qwen3-8b", action="store_true", help="Qwen3-8B's shape: hidden 4096 x 36, MLP 12288, 32/8 heads")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=2048)
    p.add_argument("--demo-len", type=int, default=1024, help="template + demonstration tokens in the teacher prompt")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)


def step(args) -> int:
    """What SRPO adds to a GRPO step beyond the teacher's forward, on one GPU at Qwen3's vocabulary.

    The step's parts are run with the functions SRPO's workers call, on a randomly initialised
    Qwen3-architecture model with the real vocabulary (V = 151,936), bf16, identical batches for every
    method. A GRPO step here is the old-log-prob forward of every row plus the update (forward, token
    log-probs, PPO loss, backward, AdamW step) in micro-batches. SRPO adds, at a routed share of rows:
      topk      the student's top-K ids of the routed rows, taken from the old-log-prob forward's logits
                (`core_algos.student_topk`, what the logits-processor hook runs);
      teacher   the teacher's forward on the routed rows' teacher sequences (prompt + demonstration +
                response), logits at the response positions only (`teacher_forward.response_logits`);
      scoring   top-K log q, entropies and sampled log q from those logits (`score_response_tokens`);
      update    the update with the routed rows' divergence lent to the token log-prob
                (`topk_tail_divergence_lent` + `lend_dense_gradient`, as the loss does), minus GRPO's update;
      ema       the EMA step of the teacher's parameters (one difference per tensor, one number read back).
    Target: SRPO step - GRPO step <= the teacher forward + 5% of the GRPO step, at routed shares 0.25
    and 0.5. The default model is far smaller than the paper's Qwen3-8B, which makes the vocabulary-wide
    passes a larger share of the step than they are there (--qwen3-8b runs that shape, random weights).
    """
    import copy

    import torch

    from srpo_verl import core_algos as ca
    from srpo_verl.integration.teacher_forward import response_logits, score_response_tokens  # no verl import
    from srpo_verl.lab.engine_update import plain_logprobs, update_terms  # core_algos only
    from srpo_verl.lab.step_costs import bound_lines, phase_table, round_robin

    if args.qwen3_8b:
        args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads = 4096, 36, 12288, 32, 8
    dev, dtype, chunk = torch.device(args.device), torch.bfloat16, ca.DEFAULT_CHUNK_SIZE

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, *a, **kw):
        sync()
        start = time.perf_counter()
        out = fn(*a, **kw)
        sync()
        return out, time.perf_counter() - start

    from transformers import Qwen3Config, Qwen3ForCausalLM

    heads = args.heads or max(args.hidden // 128, 1)
    cfg = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or 3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=args.kv_heads or max(heads // 2, 1),
        head_dim=args.hidden // heads,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(dev):
        student = Qwen3ForCausalLM(cfg).to(dtype)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    n_params = sum(t.numel() for t in student.parameters())

    g = torch.Generator().manual_seed(1)
    B, P, R, D = args.rows, args.prompt_len, args.response_len, args.demo_len
    prompt = torch.randint(0, args.vocab, (B, P), generator=g)
    response = torch.randint(0, args.vocab, (B, R), generator=g)
    demo = torch.randint(0, args.vocab, (B, D), generator=g)
    ids = torch.cat([prompt, response], 1).to(dev)  # (B, P + R), every row the same length: no padding
    teacher_ids = torch.cat([prompt, demo, response], 1).to(dev)  # (B, P + D + R)
    labels = ids.roll(-1, 1)  # position t scores token t + 1
    old_log_prob = torch.zeros(B, P + R, device=dev)
    advantage = torch.randn(B, 1, generator=g).to(dev)
    response_pos = torch.arange(P - 1, P - 1 + R, device=dev)  # positions scoring the response tokens

    def micro_batches():
        for start in range(0, B, args.micro_batch):
            yield slice(start, min(start + args.micro_batch, B))

    def old_log_prob_pass(routed: list[int]):
        """Every row's token log-probs; with routed rows, their top-K ids from the same logits."""
        topk = {}
        with torch.no_grad():
            for mb in micro_batches():
                logits = student(input_ids=ids[mb], use_cache=False).logits  # (m, L, V)
                plain_logprobs(logits.flatten(0, 1), labels[mb].flatten())
                for i in range(mb.start, mb.stop):
                    if i in routed:
                        row = logits[i - mb.start]
                        topk[i] = ca.student_topk(row, k=args.k, rows=response_pos, chunk_size=chunk)
        return topk

    def teacher_pass(routed: list[int], topk: dict) -> tuple[dict, float]:
        """Teacher forward (timed apart) and scoring of the routed rows, `micro_batch` rows at a time."""
        out, forward_s = {}, 0.0
        for start in range(0, len(routed), args.micro_batch):
            rows = routed[start : start + args.micro_batch]
            logits, dt = timed(response_logits, teacher, {"input_ids": teacher_ids[rows]}, response_pos + D)
            forward_s += dt
            with torch.no_grad():
                flat = logits.reshape(-1, args.vocab)  # (m R, V)
                ids_k = torch.cat([topk[i] for i in rows])  # (m R, K)
                scores = score_response_tokens(
                    flat,
                    torch.ones(flat.shape[0], 1, device=dev),
                    ids_k,
                    response[rows].flatten().to(dev),
                    chunk_size=chunk,
                )
            for j, i in enumerate(rows):
                out[i] = scores[wire.TEACHER_TOPK.name][j * R : (j + 1) * R]
            del logits, flat
        return out, forward_s

    def update(routed: list[int], topk: dict, teacher_topk: dict):
        optimizer.zero_grad(set_to_none=True)
        for mb in micro_batches():
            logits = student(input_ids=ids[mb], use_cache=False).logits.flatten(0, 1)  # (m L, V)
            lab = labels[mb].flatten()
            here = [i for i in range(mb.start, mb.stop) if i in routed]
            if here:
                rows = torch.cat([(i - mb.start) * (P + R) + response_pos for i in here])  # packed rows
                token, div = update_terms(
                    logits,
                    lab,
                    rows,
                    torch.cat([topk[i] for i in here]),
                    torch.cat([teacher_topk[i] for i in here]),
                    chunk_size=chunk,
                )
            else:
                token, div = plain_logprobs(logits, lab), None
            ratio = torch.exp(token.view(-1, P + R) - old_log_prob[mb])
            loss = -(advantage[mb] * ratio)[:, P - 1 : P - 1 + R].mean()
            if div is not None:
                loss = loss + div.sum() / (B * R)
            loss.backward()
            del logits, token, div, loss
        optimizer.step()

    def ema():
        return float(ca.ema_teacher_update_(list(zip(teacher.parameters(), student.parameters())), 0.05))

    shares = {"grpo": 0.0, "srpo_25": 0.25, "srpo_50": 0.5}

    def one_step(method: str) -> dict[str, float]:
        share = shares[method]
        routed = list(range(0, B, round(1 / share))) if share else []
        t: dict[str, float] = {}
        topk, t["old_log_prob"] = timed(old_log_prob_pass, routed)
        t["teacher"], t["teacher_forward"] = 0.0, 0.0
        teacher_topk = {}
        if routed:
            (teacher_topk, t["teacher_forward"]), t["teacher"] = timed(teacher_pass, routed, topk)
        _, t["update"] = timed(update, routed, topk, teacher_topk)
        t["ema"] = timed(ema)[1] if routed else 0.0
        t["step"] = t["old_log_prob"] + t["teacher"] + t["update"] + t["ema"]
        return t

    med = round_robin(one_step, list(shares), args.repeats)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(
        f"{name}, torch {torch.__version__}; model {n_params / 1e9:.2f} B params (hidden {args.hidden} x "
        f"{args.layers}), V {args.vocab}, bf16; {B} rows of {P} + {R} tokens, teacher +{D}; micro-batch "
        f"{args.micro_batch}; K {args.k}; medians of {args.repeats}"
    )
    print("\n".join(phase_table(med) + bound_lines(med)))
    return 0


def teacher_memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--demonstration", type=int, default=1024)
    p.add_argument("--response", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=None, help="rows upcast at a time (default: core_algos')")
    p.add_argument("--temperature", type=float, default=0.7)


def teacher_memory(args) -> int:
    """Peak memory of the teacher pass on one micro-batch, with the teacher's logits at every position
    against at the response positions only, at Qwen3's vocabulary.

    A Qwen3 with the real vocabulary (151,936) and a tiny hidden size (transformers, random weights),
    one micro-batch of `rows` teacher sequences [prompt | demonstration | response] packed into one
    (1, nnz) input, top-K ids and sampled tokens at each response token. Two teacher passes, measured
    side by side in one run (peak minus what was held before, srpo_verl/lab/peak_memory.py):
      before  logits at every position of the teacher sequence (nnz, V), then the outputs read at the
              response rows (`rows=`), temperature divided in place;
      after   srpo_verl.integration.teacher_forward (what the worker runs): the LM head applied at the
              response positions only (`logits_to_keep`), temperature in place, the same outputs.
    Both must give the same outputs (checked). Target: after <= 1.2x the bytes of the teacher logits
    at the response positions (R x V in the model's dtype); the exit status is 1 when it is missed.

    Attention runs as one causal sequence over the packed rows (no attention mask is materialised,
    as with flash-attn's varlen kernel in verl); its memory is the same in both passes.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from srpo_verl import core_algos
    from srpo_verl.integration import teacher_forward  # no verl import
    from srpo_verl.lab.peak_memory import GB, PeakMemory

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.chunk_size = args.chunk_size or core_algos.DEFAULT_CHUNK_SIZE
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1 << 17,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = Qwen3ForCausalLM(config).to(device, dtype).eval()

    seq = args.prompt + args.demonstration + args.response
    nnz, R = args.rows * seq, args.rows * args.response
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, args.vocab, (1, nnz), generator=g).to(device)
    # The logit at position p scores token p + 1: each row's response is scored at its last R positions shifted by one.
    ends = torch.arange(1, args.rows + 1) * seq
    positions = torch.cat([torch.arange(e - args.response - 1, e - 1) for e in ends.tolist()]).to(device)  # (R,)
    sampled = input_ids[0, positions + 1]  # (R,)
    topk_ids = torch.randint(0, args.vocab, (R, args.k), generator=g).to(device)
    temperature = torch.full((R, 1), args.temperature, device=device)
    inputs = {"input_ids": input_ids}
    logits_bytes = R * args.vocab * torch.finfo(dtype).bits // 8

    def before():
        full = model(**inputs, use_cache=False).logits.squeeze(0)  # (nnz, V)
        full.div_(args.temperature)
        c = args.chunk_size
        log_q = core_algos.teacher_topk_log_probs(full, topk_ids, rows=positions, chunk_size=c)
        return {
            wire.TEACHER_TOPK.name: log_q.float(),
            wire.TEACHER_ENTROPY.name: core_algos.teacher_entropy(full, rows=positions, chunk_size=c).float(),
            wire.TEACHER_LOG_PROB.name: core_algos.teacher_topk_log_probs(
                full, sampled.unsqueeze(-1), rows=positions, chunk_size=c
            )
            .squeeze(-1)
            .float(),
        }

    def after():
        logits = teacher_forward.response_logits(model, inputs, positions)  # (R, V)
        return teacher_forward.score_response_tokens(logits, temperature, topk_ids, sampled, chunk_size=args.chunk_size)

    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), torch "
        f"{torch.__version__}, "
        f"{dtype}; V = {args.vocab}; {args.rows} rows x (prompt {args.prompt} + demonstration {args.demonstration} "
        f"+ response {args.response}) = {nnz} tokens, {R} response tokens; model hidden {args.hidden} x {args.layers}"
    )
    print(f"teacher logits at the response positions: {logits_bytes / GB:.2f} GiB ({R} x {args.vocab}, {dtype})")
    results = {}
    with torch.no_grad():
        for name, fn in (("after", after), ("before", before), ("after", after)):  # after twice: warm and cold
            with PeakMemory(device) as m:
                t0 = time.perf_counter()
                out = {k: v.cpu() for k, v in fn().items()}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
            results[name] = (m.extra, seconds, out)
            del out
    (b_mem, _, b_out), (a_mem, _, a_out) = results["before"], results["after"]
    for key in b_out:
        err = float((a_out[key] - b_out[key]).abs().max())
        scale = float(b_out[key].abs().max()) + 1e-30
        assert err <= 2e-2 * scale, f"{key}: after differs from before by {err} (scale {scale})"
    print(f"{'pass':<8}{'peak extra GiB':>16}{'x logits at response positions':>34}{'seconds':>10}")
    for name, (mem, s, _) in (("before", results["before"]), ("after", results["after"])):
        print(f"{name:<8}{mem / GB:>16.2f}{mem / logits_bytes:>34.2f}{s:>10.2f}")
    ratio = a_mem / logits_bytes
    print(f"after/before peak = {a_mem / b_mem:.3f}; outputs equal (max rel diff <= 2e-2 of scale)")
    print(f"target after <= 1.2x the response-position logits: {ratio:.2f}x {'met' if ratio <= 1.2 else 'NOT met'}")
    return 0 if ratio <= 1.2 else 1


MODES = {"step": (step_args, step), "teacher-memory": (teacher_memory_args, teacher_memory)}


def main(argv: list[str] | None = None) -> int:
    from srpo_verl.lab.step_costs import run_modes

    return run_modes(__doc__, MODES, argv)


if __name__ == "__main__":
    sys.exit(main())

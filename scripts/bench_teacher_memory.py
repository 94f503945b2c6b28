"""Benchmark: peak memory of the teacher pass on one micro-batch, before and after computing the
teacher's logits at the response positions only, at Qwen3's vocabulary.

    python scripts/bench_teacher_memory.py                      # GPU if present: 8 x (512 + 1024 + 2048)
    python scripts/bench_teacher_memory.py --device cpu --rows 2

A Qwen3 with the real vocabulary (151,936) and a tiny hidden size (transformers, random weights),
one micro-batch of `rows` teacher sequences [prompt | demonstration | response] packed into one
(1, nnz) input, top-K ids and sampled tokens at each response token. Two teacher passes, measured
side by side in one run (peak minus what was held before, srpo_verl/lab/peak_memory.py):
  before  the teacher pass as it was: logits at every position of the teacher sequence (nnz, V),
          then the outputs read at the response rows (`rows=`), temperature divided in place;
  after   srpo_verl.integration.teacher_forward (what the worker runs): the LM head applied at the
          response positions only (`logits_to_keep`), temperature in place, the same outputs.
Both must give the same outputs (checked). Target: after <= 1.2x the bytes of the teacher logits
at the response positions (R x V in the model's dtype).

Attention runs as one causal sequence over the packed rows (no attention mask is materialised,
as with flash-attn's varlen kernel in verl); its memory is the same in both passes.
Needs torch and transformers only (no verl).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from srpo_verl import core_algos  # noqa: E402
from srpo_verl.integration import teacher_forward  # noqa: E402  (no verl import)
from srpo_verl.lab.peak_memory import GB, PeakMemory  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--demonstration", type=int, default=1024)
    p.add_argument("--response", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=core_algos.DEFAULT_CHUNK_SIZE)
    p.add_argument("--temperature", type=float, default=0.7)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    device = torch.device(args.device)
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
            "srpo_teacher_topk": log_q.float(),
            "srpo_teacher_entropy": core_algos.teacher_entropy(full, rows=positions, chunk_size=c).float(),
            "srpo_teacher_log_prob": core_algos.teacher_topk_log_probs(
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


if __name__ == "__main__":
    sys.exit(main())

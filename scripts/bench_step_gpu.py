"""Benchmark on one GPU: what SRPO adds to a GRPO step beyond the teacher's forward, at Qwen3's vocabulary.

For a machine with a CUDA GPU, PyTorch and transformers, and no verl (the lent GPU machines have no
verl): the step's parts are run with the functions SRPO's workers call, on a randomly initialised
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
Target (#13 §2): SRPO step - GRPO step <= the teacher forward + 5% of the GRPO step, at routed shares
0.25 and 0.5. The model is far smaller than the paper's Qwen3-8B, which makes the vocabulary-wide
passes a larger share of the step than they are there (--qwen3-8b runs that shape, random weights).

    python scripts/bench_step_gpu.py                         # hidden 2048 x 8 layers, 8 rows of 512 + 2048
    python scripts/bench_step_gpu.py --qwen3-8b --micro-batch 1   # the paper's model shape (~100 GB on one GPU)
    python scripts/bench_step_gpu.py --device cpu --hidden 64 --layers 1 --rows 4 --prompt-len 16 \\
        --response-len 32 --demo-len 16 --vocab 2048 --repeats 1     # the script's own smoke test
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the lent GPU machines run this from a checkout, srpo_verl not installed
from srpo_verl import core_algos as ca  # noqa: E402
from srpo_verl.lab.engine_update import plain_logprobs, update_terms  # noqa: E402  (core_algos only)
from srpo_verl.integration.teacher_forward import response_logits, score_response_tokens  # noqa: E402

# -----------------------------------------------------------------------------
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
args = p.parse_args()
if args.qwen3_8b:
    args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads = 4096, 36, 12288, 32, 8
# -----------------------------------------------------------------------------

DEV = torch.device(args.device)
DTYPE = torch.bfloat16
CHUNK = ca.DEFAULT_CHUNK_SIZE


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, *a, **kw):
    sync()
    start = time.perf_counter()
    out = fn(*a, **kw)
    sync()
    return out, time.perf_counter() - start


def build_model():
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
    with torch.device(DEV):
        model = Qwen3ForCausalLM(cfg).to(DTYPE)
    return model


student = build_model()
teacher = copy.deepcopy(student).eval().requires_grad_(False)
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
n_params = sum(t.numel() for t in student.parameters())

g = torch.Generator().manual_seed(1)
B, P, R, D = args.rows, args.prompt_len, args.response_len, args.demo_len
prompt = torch.randint(0, args.vocab, (B, P), generator=g)
response = torch.randint(0, args.vocab, (B, R), generator=g)
demo = torch.randint(0, args.vocab, (B, D), generator=g)
ids = torch.cat([prompt, response], 1).to(DEV)  # (B, P + R), every row the same length: no padding
teacher_ids = torch.cat([prompt, demo, response], 1).to(DEV)  # (B, P + D + R)
labels = ids.roll(-1, 1)  # position t scores token t + 1
old_log_prob = torch.zeros(B, P + R, device=DEV)
advantage = torch.randn(B, 1, generator=g).to(DEV)
log_q_any = torch.log_softmax(torch.randn(B * R, args.k, generator=g), -1).to(DEV)
response_pos = torch.arange(P - 1, P - 1 + R, device=DEV)  # positions scoring the response tokens


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
                    topk[i] = ca.student_topk(row, k=args.k, rows=response_pos, chunk_size=CHUNK)
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
                torch.ones(flat.shape[0], 1, device=DEV),
                ids_k,
                response[rows].flatten().to(DEV),
                chunk_size=CHUNK,
            )
        for j, i in enumerate(rows):
            out[i] = scores["srpo_teacher_topk"][j * R : (j + 1) * R]
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
                chunk_size=CHUNK,
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


def step(share: float) -> dict[str, float]:
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


shares = {"grpo": 0.0, "srpo_25": 0.25, "srpo_50": 0.5}
for share in shares.values():  # warm-up
    step(share)
results = {m: [] for m in shares}
for r in range(args.repeats):
    for m, share in shares.items():  # round-robin: drift hits all alike
        results[m].append(step(share))
med = {m: {k: statistics.median(x[k] for x in results[m]) for k in results[m][0]} for m in shares}

name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
print(
    f"{name}, torch {torch.__version__}; model {n_params / 1e9:.2f} B params (hidden {args.hidden} x {args.layers}), "
    f"V {args.vocab}, bf16; {B} rows of {P} + {R} tokens, teacher +{D}; micro-batch {args.micro_batch}; "
    f"K {args.k}; medians of {args.repeats}"
)
cols = ["old_log_prob", "teacher", "teacher_forward", "update", "ema", "step"]
print(f"{'method':<9}" + "".join(f"{c + ' s':>18}" for c in cols))
for m in shares:
    print(f"{m:<9}" + "".join(f"{med[m][c]:>18.3f}" for c in cols))
grpo = med["grpo"]["step"]
for m in ("srpo_25", "srpo_50"):
    extra, bound = med[m]["step"] - grpo, med[m]["teacher_forward"] + 0.05 * grpo
    beyond = extra - med[m]["teacher_forward"]
    print(
        f"{m}: step - GRPO step = {extra:.3f} s vs teacher forward {med[m]['teacher_forward']:.3f} s + 5% GRPO step "
        f"{0.05 * grpo:.3f} s = {bound:.3f} s ({'met' if extra <= bound else 'NOT met'}); beyond the teacher forward: "
        f"{beyond:.3f} s = {beyond / grpo:.1%} of the GRPO step"
    )

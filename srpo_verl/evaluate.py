"""`python -m srpo_verl evaluate`: avg@n of saved models on each task's test split, as SRPO reports.

    python -m srpo_verl evaluate --out eval/ \\
        --model base=Qwen/Qwen3-8B --model srpo=checkpoints/srpo_paper/qwen3_8b_srpo_chemistry \\
        --task Chem=data/chemistry/test.parquet --task Phys=data/physics/test.parquet \\
        --chat-template-kwargs '{"enable_thinking": false}'

The paper's metric (SRPO Table 3, Tables 1-2) is avg@16: 16 samples per test prompt at T 0.6,
top-p 0.95, the accuracy averaged over all samples, in percent, per task. For each `--model` and
`--task` this generates `--n` samples per prompt of the test parquet (verl's RL format: `prompt`
messages, `data_source`, `reward_model.ground_truth`, `extra_info`), scores every sample with the
run's reward function (the `acc` field when it returns a dict, else `score`, as verl's validation
reports `val-core/<data_source>/acc/mean@16`) and writes

    OUT/results.md    a table shaped like Tables 1-2: one row per model, one column per task, Avg
    OUT/results.json  the same numbers with the settings, prompt counts and per-prompt accuracies

A model is a Hugging Face directory (or hub id) or a verl checkpoint (trainer.default_local_dir,
global_step_N or its actor/ folder), whose student is first merged by verl's own merger into
OUT/models/<label>/ (bfloat16, as `python -m verl.model_merger merge` writes it). The EMA teacher
is evaluated by exporting it first (`python -m srpo_verl export-teacher`).

Generation is HF `generate` (`generate` below, also the CPU demo's evaluator): a CPU or single-GPU
path for small models and smoke tests. For 4B/8B models on a cluster, verl's own validation is the
route (vLLM/SGLang, the same avg@16): docs/export.md gives the command.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

PAPER_N, PAPER_TEMPERATURE, PAPER_TOP_P = 16, 0.6, 0.95


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"{flag} {value!r}: expected LABEL=PATH")
        out.append((label, path))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"{flag}: labels must be distinct, got {labels}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH", help="HF dir/id or verl checkpoint")
    parser.add_argument("--task", action="append", required=True, metavar="NAME=PARQUET", help="a test split, one table column")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json and merged models")
    parser.add_argument("--n", type=int, default=PAPER_N, help="samples per prompt (avg@n); the paper: 16")
    parser.add_argument("--temperature", type=float, default=PAPER_TEMPERATURE)
    parser.add_argument("--top-p", type=float, default=PAPER_TOP_P)
    parser.add_argument("--max-new-tokens", type=int, default=8192, help="data.max_response_length of the run")
    parser.add_argument("--reward-path", default="pkg://srpo_verl.tasks", help="reward.custom_reward_function.path")
    parser.add_argument("--reward-name", default="compute_score", help="reward.custom_reward_function.name")
    parser.add_argument("--chat-template-kwargs", default="{}", help="JSON, as data.apply_chat_template_kwargs")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts of each split (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    parser.add_argument("--seed", type=int, default=1234, help="the same draws for every model")
    parser.add_argument("--dtype", default="auto", help="load the models in this dtype (auto: as saved; CPUs prefer float32)")


def resolve_model(path: str, merged_dir: str) -> str:
    """A HF directory for `path`: itself, or the student of a verl checkpoint merged by verl."""
    from srpo_verl.export import actor_dir

    try:
        actor = actor_dir(path)
    except FileNotFoundError:
        return path  # a HF directory or hub id
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=actor,
        target_dir=merged_dir,
        hf_model_config_path=os.path.join(actor, "huggingface"),
    )
    FSDPModelMerger(config).merge_and_save()
    return merged_dir


def load_split(path: str, limit: int | None = None) -> list[dict]:
    import pandas as pd

    rows = pd.read_parquet(path).to_dict(orient="records")
    return rows[:limit] if limit is not None else rows


def chat_prompt_ids(tokenizer, messages, chat_template_kwargs: dict) -> list[int]:
    """The row's chat with the generation prompt, as verl's RL dataset tokenizes it."""
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=True, **chat_template_kwargs
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def accuracy(result) -> float:
    """verl's validation reports `acc` when the reward function returns it, else the score."""
    if isinstance(result, dict):
        return float(result["acc"] if "acc" in result else result["score"])
    return float(result)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model,
    tokenizer,
    rows: list[list[int]],
    *,
    greedy: bool,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[str]:
    """Decoded responses (special tokens removed) for the prompt id lists `rows`; sampling at
    `temperature` with nucleus `top_p` (the training rollouts' T=1, top-p 1 by default)."""
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    out: list[str] = []
    torch.manual_seed(seed)  # the same draws for every policy evaluated with this seed
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start : start + batch_size], pad_id)
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p)
        seqs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            **sampling,
        )
        out.extend(tokenizer.batch_decode(seqs[:, ids.shape[1] :], skip_special_tokens=True))
    return out


def score_model(model_dir: str, rows: list[dict], reward_fn, args) -> list[float]:
    """Per-prompt mean accuracy over `args.n` samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval()
    kwargs = json.loads(args.chat_template_kwargs)
    prompts = [chat_prompt_ids(tokenizer, row["prompt"], kwargs) for row in rows]
    responses = generate(
        model,
        tokenizer,
        [p for p in prompts for _ in range(args.n)],
        greedy=False,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    per_prompt = []
    for i, row in enumerate(rows):
        truth = row["reward_model"]["ground_truth"]
        accs = [
            accuracy(reward_fn(row["data_source"], text, truth, row.get("extra_info")))
            for text in responses[i * args.n : (i + 1) * args.n]
        ]
        per_prompt.append(sum(accs) / len(accs))
    return per_prompt


def markdown_table(results: dict, tasks: list[str], n: int) -> str:
    """| model | task... | Avg | with avg@n in percent, one decimal (Tables 1-2)."""
    lines = [f"| model | {' | '.join(tasks)} | Avg |", "|---" * (len(tasks) + 2) + "|"]
    for label, per_task in results.items():
        cells = [f"{per_task[t]['avg']:.1f}" for t in tasks]
        lines.append(f"| {label} | {' | '.join(cells)} | {sum(per_task[t]['avg'] for t in tasks) / len(tasks):.1f} |")
    return f"avg@{n} (%), {n} samples per prompt\n\n" + "\n".join(lines) + "\n"


def evaluate_models(models: list[tuple[str, str]], tasks: list[tuple[str, str]], args) -> dict:
    from verl.utils.import_utils import load_extern_object

    reward_fn = load_extern_object(module_path=args.reward_path, object_name=args.reward_name)
    splits = {name: load_split(path, args.limit) for name, path in tasks}
    results = {}
    for label, path in models:
        model_dir = resolve_model(path, os.path.join(args.out, "models", label))
        results[label] = {}
        for name, rows in splits.items():
            torch.manual_seed(args.seed)
            per_prompt = score_model(model_dir, rows, reward_fn, args)
            avg = 100.0 * sum(per_prompt) / len(per_prompt)
            results[label][name] = {"avg": avg, "n_prompts": len(rows), "per_prompt": per_prompt}
            print(f"{label} {name}: avg@{args.n} = {avg:.1f} over {len(rows)} prompts")
    return results


def run_from_args(args) -> int:
    models, tasks = _pairs(args.model, "--model"), _pairs(args.task, "--task")
    os.makedirs(args.out, exist_ok=True)
    results = evaluate_models(models, tasks, args)
    table = markdown_table(results, [name for name, _ in tasks], args.n)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    settings = {k: v for k, v in vars(args).items() if k not in ("command",)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"metric": f"avg@{args.n}", "settings": settings, "results": results}, f, indent=1)
    print(table)
    return 0

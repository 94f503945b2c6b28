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

Every flag, task file and model path is checked before any model loads. Both files are rewritten
after each (model, task) result, so a failure later keeps what was measured (results.json says
`"complete": false` until the last one); an existing results.json is refused unless `--overwrite`.

A model is a Hugging Face directory (or hub id) or a verl checkpoint (trainer.default_local_dir,
global_step_N or its actor/ folder), whose student is first merged by verl's own merger into
OUT/models/<label>/ (bfloat16, as `python -m verl.model_merger merge` writes it). The EMA teacher
is evaluated by exporting it first (`python -m srpo_verl export-teacher`).

Generation is HF `generate` by default (`--backend hf`; `generate` below, also the CPU demo's
evaluator): a CPU or single-GPU path for small models and smoke tests. `--backend vllm` generates
with vLLM (`vllm.LLM`, `--tensor-parallel-size` GPUs) for 4B/8B models on a GPU node, from the same
token ids (the same chat templating) with the same sampling settings, scored and written the same
way: only the sampler differs (`sample_hf`, `sample_vllm`). vLLM is not a dependency: the flag is
refused before anything loads where it does not import. verl's own validation is the other
cluster route (docs/export.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

from srpo_verl import export

PAPER_N, PAPER_TEMPERATURE, PAPER_TOP_P = 16, 0.6, 0.95
# --dtype: export-teacher's names (torch's and the short ones verl's configs use), and "auto": as saved.
DTYPES = {"auto": "auto", **export.DTYPES}
SPLIT_COLUMNS = ("prompt", "data_source", "reward_model")


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"{flag} {value!r}: expected LABEL=PATH")
        if "/" in label or label in (".", ".."):
            raise SystemExit(f"{flag} {value!r}: the label names a folder under OUT/models, so it cannot hold '/'")
        out.append((label, path))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"{flag}: labels must be distinct, got {labels}")
    return out


def check_args(args) -> None:
    """Refuse a bad flag before anything is loaded (SystemExit naming the flag and the value)."""

    def bad(flag: str, value, why: str):
        raise SystemExit(f"{flag} {value!r}: {why}")

    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            bad(flag, value, "must be at least 1")
    if args.limit is not None and args.limit < 1:
        bad("--limit", args.limit, "must be at least 1 (leave it out for the whole split)")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        bad("--temperature", args.temperature, "must be a finite number > 0 (avg@n samples; 1e-4 is near-greedy)")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        bad("--top-p", args.top_p, "must be in (0, 1]")
    if args.dtype not in DTYPES:
        bad("--dtype", args.dtype, f"expected one of {', '.join(DTYPES)}")
    if args.backend not in SAMPLERS:
        bad("--backend", args.backend, f"expected one of {', '.join(SAMPLERS)}")
    if args.tensor_parallel_size < 1:
        bad("--tensor-parallel-size", args.tensor_parallel_size, "must be at least 1")
    if args.backend == "hf" and args.tensor_parallel_size != 1:
        bad("--tensor-parallel-size", args.tensor_parallel_size, "splits a model only with --backend vllm")
    if args.backend == "vllm":
        # Imported here, not found: a vLLM that is installed but cannot import (a torch or CUDA
        # mismatch) would otherwise fail only after the checkpoints are merged.
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise SystemExit(
                f"--backend vllm: vLLM does not import in this environment ({exc}). Install it where the models "
                "run (`pip install vllm`, the version your verl deployment uses), or use --backend hf"
            ) from None
    try:
        kwargs = json.loads(args.chat_template_kwargs)
    except ValueError as exc:
        bad("--chat-template-kwargs", args.chat_template_kwargs, f"not JSON ({exc})")
    if not isinstance(kwargs, dict):
        bad(
            "--chat-template-kwargs",
            args.chat_template_kwargs,
            "must be a JSON object, e.g. '{\"enable_thinking\": false}'",
        )


def check_model_path(label: str, path: str) -> None:
    """A verl checkpoint, a model folder with config and tokenizer, or a hub id that can be had."""
    from srpo_verl.export import NotACheckpoint, actor_dir
    from srpo_verl.preflight import model_source

    try:
        actor_dir(path)
        return
    except NotACheckpoint:
        pass
    except (OSError, ValueError) as exc:  # a checkpoint with a missing or broken part
        raise SystemExit(f"--model {label}={path}: {exc}") from None
    try:
        model_source(path, key=f"--model {label}")
    except OSError as exc:
        raise SystemExit(str(exc)) from None


def check_outputs(out: str, overwrite: bool) -> None:
    results = os.path.join(out, "results.json")
    if os.path.exists(results) and not overwrite:
        raise SystemExit(f"--out {out}: {results} exists; pass --overwrite to replace it, or choose another --out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", action="append", required=True, metavar="LABEL=PATH", help="HF dir/id or verl checkpoint"
    )
    parser.add_argument(
        "--task", action="append", required=True, metavar="NAME=PARQUET", help="a test split, one table column"
    )
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
    parser.add_argument(
        "--dtype",
        default="auto",
        help=f"load the models in this dtype: {', '.join(DTYPES)} (auto: as saved; CPUs prefer float32)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/results.json")
    parser.add_argument(
        "--backend",
        default="hf",
        help="generation: hf (transformers generate, CPU or one GPU) or vllm (GPU, `pip install vllm`)",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model, --backend vllm")


def resolve_model(path: str, merged_dir: str) -> str:
    """A HF directory for `path`: itself, or the student of a verl checkpoint merged by verl."""
    from srpo_verl.export import NotACheckpoint, actor_dir

    try:
        actor = actor_dir(path)
    except NotACheckpoint:
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


def load_split(path: str, limit: int | None = None, name: str | None = None) -> list[dict]:
    """The rows of a test parquet; with `name` (the --task label) a missing or unusable file raises
    SystemExit naming the flag and the file."""
    import pandas as pd

    flag = f"--task {name}={path}" if name is not None else path
    if name is not None and not os.path.isfile(path):
        raise SystemExit(f"{flag}: no such file")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds; the file is named
        if name is None:
            raise
        raise SystemExit(f"{flag}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if name is not None and (missing or frame.empty):
        raise SystemExit(f"{flag}: " + (f"no column(s) {missing} (verl's RL format)" if missing else "no rows"))
    rows = frame.to_dict(orient="records")
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
    progress: str | None = None,
) -> list[str]:
    """Decoded responses (special tokens removed) for the prompt id lists `rows`; sampling at
    `temperature` with nucleus `top_p` (the training rollouts' T=1, top-p 1 by default). With
    `progress`, a progress bar of that name on stderr counts the sequences."""
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    out: list[str] = []
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc=progress, unit="seq", file=sys.stderr)
    torch.manual_seed(seed)  # the same draws for every policy evaluated with this seed
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start : start + batch_size], pad_id)
        sampling = (
            dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p)
        )
        seqs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            **sampling,
        )
        out.extend(tokenizer.batch_decode(seqs[:, ids.shape[1] :], skip_special_tokens=True))
        if bar is not None:
            bar.update(ids.shape[0])
    if bar is not None:
        bar.close()
    return out


def load_model(model_dir: str, args):
    """(model, tokenizer) in --dtype, loaded once per model for all its tasks; the model is the
    --backend's: a transformers model, or a `vllm.LLM`. The tokenizer (the chat template) is the
    same for both."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    name = DTYPES[args.dtype]
    if args.backend == "vllm":
        import vllm

        return vllm.LLM(model=model_dir, dtype=name, tensor_parallel_size=args.tensor_parallel_size), tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=name if name == "auto" else getattr(torch, name))
    return model.eval(), tokenizer


# A sampler: (model, tokenizer, prompt id lists, args, progress name) -> args.n decoded responses per
# prompt, prompt by prompt (special tokens removed). Everything before and after it is shared.
def sample_hf(model, tokenizer, prompts: list[list[int]], args, progress: str | None = None) -> list[str]:
    return generate(
        model,
        tokenizer,
        [p for p in prompts for _ in range(args.n)],
        greedy=False,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        progress=progress,
    )


def sample_vllm(llm, tokenizer, prompts: list[list[int]], args, progress: str | None = None) -> list[str]:
    # Token ids, not text: vLLM must not re-apply a template or add a BOS the HF path does not.
    from vllm import SamplingParams

    params = SamplingParams(
        n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens, seed=args.seed
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=progress is not None)
    texts = []
    for out in outputs:  # vLLM returns the requests in the order given
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) != args.n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected --n {args.n}")
        texts.extend(c.text for c in completions)
    return texts


SAMPLERS = {"hf": sample_hf, "vllm": sample_vllm}


def score_model(model, tokenizer, rows: list[dict], reward_fn, args, progress: str | None = None) -> list[float]:
    """Per-prompt mean accuracy over `args.n` samples."""
    kwargs = json.loads(args.chat_template_kwargs)
    prompts = [chat_prompt_ids(tokenizer, row["prompt"], kwargs) for row in rows]
    responses = SAMPLERS[args.backend](model, tokenizer, prompts, args, progress)
    per_prompt = []
    for i, row in enumerate(rows):
        truth = row["reward_model"]["ground_truth"]
        accs = [
            accuracy(reward_fn(row["data_source"], text, truth, row.get("extra_info")))
            for text in responses[i * args.n : (i + 1) * args.n]
        ]
        per_prompt.append(sum(accs) / len(accs))
    return per_prompt


def _cell(text: str) -> str:
    """A table cell: a `|` would start a new column, a newline a new row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(results: dict, tasks: list[str], n: int) -> str:
    """| model | task... | Avg | with avg@n in percent, one decimal (Tables 1-2); a result not measured
    (yet) shows as -, and Avg then covers only the measured tasks, marked with *."""
    lines = [f"| model | {' | '.join(_cell(t) for t in tasks)} | Avg |", "|---" * (len(tasks) + 2) + "|"]
    for label, per_task in results.items():
        done = [per_task[t]["avg"] for t in tasks if t in per_task]
        cells = [f"{per_task[t]['avg']:.1f}" if t in per_task else "-" for t in tasks]
        avg = f"{sum(done) / len(done):.1f}" if done else "-"
        if done and len(done) < len(tasks):
            avg += "*"
        lines.append(f"| {_cell(label)} | {' | '.join(cells)} | {avg} |")
    return f"avg@{n} (%), {n} samples per prompt\n\n" + "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
    """A crash mid-write leaves the previous file, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(out: str, results: dict, tasks: list[str], args, *, complete: bool) -> str:
    table = markdown_table(results, tasks, args.n)
    _write_atomic(os.path.join(out, "results.md"), table)
    settings = {k: v for k, v in vars(args).items() if k not in ("command",)}
    payload = {"metric": f"avg@{args.n}", "complete": complete, "settings": settings, "results": results}
    _write_atomic(os.path.join(out, "results.json"), json.dumps(payload, indent=1))
    return table


def evaluate_models(models: list[tuple[str, str]], tasks: list[tuple[str, str]], args, on_result=None) -> dict:
    """{label: {task: result}}; `on_result(results)` runs after each (model, task) result."""
    from verl.utils.import_utils import load_extern_object

    reward_fn = load_extern_object(module_path=args.reward_path, object_name=args.reward_name)
    splits = {name: load_split(path, args.limit, name) for name, path in tasks}
    results = {}
    for label, path in models:
        model_dir = resolve_model(path, os.path.join(args.out, "models", label))
        model, tokenizer = load_model(model_dir, args)
        results[label] = {}
        for name, rows in splits.items():
            torch.manual_seed(args.seed)
            per_prompt = score_model(model, tokenizer, rows, reward_fn, args, progress=f"{label} {name}")
            avg = 100.0 * sum(per_prompt) / len(per_prompt)
            results[label][name] = {"avg": avg, "n_prompts": len(rows), "per_prompt": per_prompt}
            print(f"{label} {name}: avg@{args.n} = {avg:.1f} over {len(rows)} prompts", flush=True)
            if on_result is not None:
                on_result(results)
        del model  # the next model needs the memory (a vLLM engine's GPU memory goes with it)
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def run_from_args(args) -> int:
    models, tasks = _pairs(args.model, "--model"), _pairs(args.task, "--task")
    # Everything that can be checked without a model is, before the first one loads.
    check_args(args)
    check_outputs(args.out, args.overwrite)
    firsts = {name: load_split(path, 1, name)[0] for name, path in tasks}
    for label, path in models:
        check_model_path(label, path)
    from verl.utils.import_utils import load_extern_object

    reward = f"--reward-path {args.reward_path} --reward-name {args.reward_name}"
    try:
        reward_fn = load_extern_object(module_path=args.reward_path, object_name=args.reward_name)
    except Exception as exc:  # noqa: BLE001 - verl raises several kinds; the flags are named
        raise SystemExit(f"{reward}: {type(exc).__name__}: {exc}") from None
    # The reward must score each task's rows (a data_source it does not know raises only when called).
    from srpo_verl.tasks import gold_response

    for name, row in firsts.items():
        truth, info = row["reward_model"]["ground_truth"], row.get("extra_info")
        try:
            accuracy(reward_fn(row["data_source"], gold_response(row["data_source"], truth, info), truth, info))
        except Exception as exc:  # noqa: BLE001 - any failure here would stop the run after generation
            raise SystemExit(f"{reward} cannot score --task {name}'s first row: {type(exc).__name__}: {exc}") from None
    os.makedirs(args.out, exist_ok=True)
    names = [name for name, _ in tasks]
    try:
        results = evaluate_models(
            models, tasks, args, on_result=lambda r: write_results(args.out, r, names, args, complete=False)
        )
    except BaseException:
        if os.path.exists(os.path.join(args.out, "results.json")):
            print(f"evaluation stopped; the results measured so far are in {args.out}/results.json", file=sys.stderr)
        raise
    print(write_results(args.out, results, names, args, complete=True))
    return 0

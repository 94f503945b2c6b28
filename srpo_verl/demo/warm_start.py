"""Warm start for the CPU demo: a short SFT of the tiny Qwen3 on the demo task.

RL needs a policy that is sometimes right (GRPO learns nothing from all-wrong groups) and SRPO's
self-teacher needs a policy that can read a sibling's solution from its prompt. So part of the SFT
examples (`hint_fraction`) use the plugin's REAL teacher prompt: `teacher_prompt_ids` with the
default `algorithm.srpo.reprompt_template`, the correct answer standing in for the sibling's
solution, exactly the token sequence the SRPO trainer builds for its teacher (a short "hint:"
wording the trainer never uses teaches the teacher nothing).

Recipe: batch 64, AdamW lr 1e-3, loss on the answer and <|im_end|> only,
300 steps. Measured on 2 cores: see docs/demo.md.

The result is a HF model directory (weights, config, tokenizer) cached under
`$SRPO_VERL_CACHE` (default ~/.cache/srpo_verl) in `warm_start_<key>/`, the key a hash of every
setting below plus the tiny model's and the task's settings; a second call returns it at once.
`warm_start.json` in it records the settings, the time taken and the held-out accuracies.

`python -m srpo_verl.demo.warm_start [--steps N] [--hint-fraction F] ...` builds (or finds) it and
prints the path and accuracies.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import time

# Bumped whenever the training code changes in a way that changes the weights.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    # Share of examples whose prompt is the SRPO teacher prompt carrying the correct answer. The
    # prototype's 0.6 left the policy at 4% sampled after 300 steps with the real (3x longer)
    # template; 0.4 gives ~18% sampled / ~29% greedy / ~75% teacher-prompted (docs/demo.md).
    hint_fraction: float = 0.4
    seed: int = 0
    # The tiny model (tiny_model.build_tiny_model) and the task split (addition.split_rg_problems).
    hidden_size: int = 128
    num_layers: int = 4
    model_seed: int = 0
    n_train: int = 2048
    n_val: int = 256
    data_seed: int = 0

    def key(self) -> str:
        from srpo_verl.algo_config import SRPOConfig
        from srpo_verl.demo import addition, tiny_model

        spec = {
            "format": FORMAT_VERSION,
            "tiny_model_format": tiny_model.FORMAT_VERSION,
            "task": [addition.RG_DATASET, sorted((k, str(v)) for k, v in addition.RG_CONFIG.items())],
            "reprompt_template": SRPOConfig().reprompt_template,
            **dataclasses.asdict(self),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels); labels are -100 except on the target."""
    import torch

    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros_like(ids)  # (B, T)
    labels = torch.full_like(ids, -100)  # (B, T)
    for i, (prompt, target) in enumerate(examples):
        seq = prompt + target
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(target)
    return ids, mask, labels


def _group_grads(model, group, pad_id: int, n_targets: int) -> float:
    """Forward and backward of one group of examples, its loss over the batch's target tokens
    added into the parameters' .grad; returns that loss."""
    import torch

    ids, mask, labels = _batch(group, pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
    loss = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        / n_targets
    )
    loss.backward()
    return loss.item()


def _second_core(model, grads, requests, replies) -> None:
    """The other process of a two-process warm start: for each (group, pad_id, n_targets) it gets,
    the group's gradient at the shared weights, written into the shared buffer `grads`."""
    import torch

    torch.set_num_threads(1)
    replies.put("ready")
    for group, pad_id, n_targets in iter(requests.get, None):
        model.zero_grad(set_to_none=True)
        loss = _group_grads(model, group, pad_id, n_targets)
        torch.cat([p.grad.reshape(-1) for p in model.parameters()], out=grads)
        replies.put(loss)


def _reply(helper, replies):
    """The second process's next answer; raises if it died instead of answering."""
    import queue

    while True:
        try:
            return replies.get(timeout=1.0)
        except queue.Empty:
            if not helper.is_alive():
                raise RuntimeError(f"the second process exited with code {helper.exitcode}") from None


def train(cfg: WarmStartConfig, out_dir: str, *, log=print, processes: int = 2) -> dict:
    """Run the SFT from the tiny model and save it into `out_dir`; returns the record.

    processes=2 computes the plain-prompt group's gradient in a second process (one torch thread
    each), on weights shared with this one, while this one computes the hinted group's: the same
    operations on the same numbers as processes=1, so the same weights bit for bit (two torch
    threads in one process change them), in less time on two cores (docs/performance.md, "CPU start-up").
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srpo_verl.demo import addition, evaluate, tiny_model

    base = tiny_model.build_tiny_model(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, seed=cfg.model_seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    helper = None
    if processes > 1:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        model.share_memory()  # the optimiser's in-place updates are seen by the helper
        grads = torch.zeros(sum(p.numel() for p in model.parameters())).share_memory_()
        requests, replies = ctx.Queue(), ctx.Queue()
        helper = ctx.Process(target=_second_core, args=(model, grads, requests, replies), daemon=True)
        helper.start()
        try:
            _reply(helper, replies)
        except RuntimeError as exc:
            # E.g. a calling script without a `__main__` guard, which a spawned process re-runs.
            log(f"[warm start] one process: {exc}")
            helper = None
    train_set, val_set = addition.split_rg_problems(n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.data_seed)

    eos = tokenizer.eos_token_id
    plain, hinted = [], []
    for entry in train_set:
        question = addition.compact_prompt(entry["metadata"]["expression"])
        target = tokenizer.encode(entry["answer"], add_special_tokens=False) + [eos]
        plain.append((evaluate.prompt_ids(tokenizer, question), target))
        hinted.append((evaluate.hinted_prompt_ids(tokenizer, question, entry["answer"]), target))

    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    rng = random.Random(cfg.seed)
    model.train()
    start = time.time()
    try:
        for step in range(1, cfg.steps + 1):
            picks = [rng.randrange(len(train_set)) for _ in range(cfg.batch_size)]
            use_hint = [rng.random() < cfg.hint_fraction for _ in picks]
            groups = [
                [hinted[i] for i, h in zip(picks, use_hint) if h],
                [plain[i] for i, h in zip(picks, use_hint) if not h],
            ]
            groups = [group for group in groups if group]
            # Hinted prompts are ~3x longer: padding them separately from plain ones saves ~40% of
            # the tokens. One denominator (all target tokens of the batch) keeps it the mean over
            # the batch. The second group's gradient is added to the first's, in one process or two.
            n_targets = sum(len(t) for group in groups for _, t in group)
            optim.zero_grad(set_to_none=True)
            if helper is not None and len(groups) == 2:
                requests.put((groups[1], tokenizer.pad_token_id, n_targets))
                total = _group_grads(model, groups[0], tokenizer.pad_token_id, n_targets)
                total += _reply(helper, replies)
                offset = 0
                for p in model.parameters():
                    p.grad += grads[offset : offset + p.numel()].view_as(p)
                    offset += p.numel()
            else:
                total = 0.0
                for group in groups:
                    total += _group_grads(model, group, tokenizer.pad_token_id, n_targets)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            if step % 50 == 0 or step == cfg.steps:
                log(f"[warm start] step {step}/{cfg.steps}  loss {total:.3f}  {time.time() - start:.0f}s")
    finally:
        if helper is not None:
            requests.put(None)
            helper.join(timeout=30)
    train_s = time.time() - start

    problems = [(addition.compact_prompt(e["metadata"]["expression"]), e["answer"]) for e in val_set]
    accuracy = evaluate.evaluate(model, tokenizer, problems)
    record = {"config": dataclasses.asdict(cfg), "key": cfg.key(), "train_s": round(train_s, 1), "eval": accuracy}

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, "warm_start.json"), "w") as f:
            json.dump(record, f, indent=1)

    tiny_model.write_dir_atomically(out_dir, write)
    return record


def warm_start(cfg: WarmStartConfig = WarmStartConfig(), *, cache_dir: str | None = None, log=print) -> str:
    """Path of the warm-started model for `cfg`, trained now unless cached."""
    from srpo_verl.demo.tiny_model import cache_root

    out_dir = os.path.join(cache_dir or cache_root(), f"warm_start_{cfg.key()}")
    if os.path.exists(os.path.join(out_dir, "warm_start.json")):
        log(f"[warm start] cached: {out_dir}")
        return out_dir
    log(f"[warm start] {cfg.steps} SFT steps of the tiny model -> {out_dir}")
    train(cfg, out_dir, log=log)
    return out_dir


def read_record(path: str) -> dict:
    with open(os.path.join(path, "warm_start.json")) as f:
        return json.load(f)


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = WarmStartConfig()
    for field in dataclasses.fields(WarmStartConfig):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see docs/demo.md)")
    args = vars(parser.parse_args(argv))
    torch.set_num_threads(args.pop("threads"))
    path = warm_start(WarmStartConfig(**args))
    record = read_record(path)
    print(path)
    print(json.dumps({"train_s": record["train_s"], **record["eval"]}))


if __name__ == "__main__":
    main()

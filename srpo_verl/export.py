"""`python -m srpo_verl export-teacher CHECKPOINT_DIR OUT_DIR`: the EMA teacher as a Hugging Face model.

The SRPO worker saves the EMA teacher next to verl's actor checkpoint as rank-local shards,
`<actor>/srpo_ema_teacher/rank_<r>.pt`, each a dict {parameter name: that rank's FSDP2 shard}
(`DTensor.to_local()`: dim-0 chunks in rank order, as `torch.chunk` cuts them). This module puts
them back together and writes a directory that `AutoModelForCausalLM.from_pretrained` loads, with
the student's config, tokenizer and generation config (the teacher is an EMA of the student, so
it has the student's architecture). The student itself is exported by verl's own merger
(`python -m verl.model_merger merge --backend fsdp ...`, docs/export.md).

Reassembly needs no placement metadata: every parameter of the model built from the student's
config has a known full shape, and a shard list either concatenates along dim 0 to that shape
(FSDP2's Shard(0)) or is one full copy per rank (replicated); anything else is an error naming
the parameter. A 1-rank and an N-rank checkpoint of the same weights export the same model.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

import torch

# Files of the actor's huggingface/ folder copied as they are (everything but weights).
_HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".safetensors.index.json", ".bin.index.json")


def actor_dir(checkpoint_dir: str, step: int | None = None) -> str:
    """The `actor/` folder of a checkpoint, given the run's `trainer.default_local_dir` (the latest
    step, or `step`), a `global_step_N` folder, or the actor folder itself."""
    path = os.path.abspath(checkpoint_dir)
    if os.path.isdir(os.path.join(path, "huggingface")) and os.path.basename(path) == "actor":
        return path
    if os.path.isdir(os.path.join(path, "actor")):
        return os.path.join(path, "actor")
    latest = os.path.join(path, "latest_checkpointed_iteration.txt")
    if step is None and os.path.exists(latest):
        with open(latest) as f:
            step = int(f.read().strip())
    if step is not None and os.path.isdir(os.path.join(path, f"global_step_{step}", "actor")):
        return os.path.join(path, f"global_step_{step}", "actor")
    raise FileNotFoundError(
        f"{checkpoint_dir} is not a verl checkpoint: expected an actor/ folder, a global_step_N/ folder or "
        "trainer.default_local_dir with latest_checkpointed_iteration.txt"
    )


def teacher_shard_paths(actor: str) -> list[str]:
    """rank_0.pt .. rank_{W-1}.pt of the EMA teacher, checked against verl's recorded world size."""
    from srpo_verl.integration.worker import TEACHER_DIR

    folder = os.path.join(actor, TEACHER_DIR)
    by_rank = {}
    for path in glob.glob(os.path.join(folder, "rank_*.pt")):
        match = re.fullmatch(r"rank_(\d+)\.pt", os.path.basename(path))
        if match:
            by_rank[int(match.group(1))] = path
    if not by_rank:
        raise FileNotFoundError(
            f"no EMA teacher in {folder}: the checkpoint was not written by an SRPO/SDPO run with an EMA teacher"
        )
    world = len(by_rank)
    if sorted(by_rank) != list(range(world)):
        raise FileNotFoundError(f"EMA teacher shards of {folder} are not ranks 0..{world - 1}: found {sorted(by_rank)}")
    fsdp_config = os.path.join(actor, "fsdp_config.json")
    if os.path.exists(fsdp_config):
        with open(fsdp_config) as f:
            recorded = json.load(f).get("world_size")
        if recorded is not None and recorded != world:
            raise ValueError(f"{folder} holds {world} teacher shards but the actor checkpoint was saved by {recorded} ranks")
    return [by_rank[r] for r in range(world)]


def merge_shards(shards: list[dict[str, torch.Tensor]], full_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """{name: full tensor} from per-rank {name: shard} dicts (rank order), using the full shapes."""
    names = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != names:
            raise ValueError(f"teacher shard of rank {rank} has different parameters than rank 0: {sorted(names ^ set(shard))[:5]}")
    unknown = names - set(full_shapes)
    if unknown:
        raise ValueError(f"teacher parameters not in the student's architecture: {sorted(unknown)[:5]}")
    merged = {}
    for name in sorted(names):
        pieces = [shard[name] for shard in shards]
        shape = torch.Size(full_shapes[name])
        if len(pieces) > 1 and all(p.shape == shape for p in pieces):
            # Replicated (not sharded by FSDP): every rank holds the same full tensor.
            for rank, p in enumerate(pieces[1:], start=1):
                if not torch.equal(p, pieces[0]):
                    raise ValueError(f"{name}: full-size copies on rank 0 and rank {rank} differ")
            merged[name] = pieces[0]
            continue
        full = torch.cat(pieces, dim=0) if pieces[0].dim() else pieces[0]
        if full.shape != shape:
            raise ValueError(
                f"{name}: the {len(pieces)} shards {[tuple(p.shape) for p in pieces]} concatenate to {tuple(full.shape)}, "
                f"not the model's {tuple(shape)}"
            )
        merged[name] = full.contiguous()
    return merged


def _empty_model(hf_dir: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_teacher_state(checkpoint_dir: str, step: int | None = None) -> dict[str, torch.Tensor]:
    """The EMA teacher's full state dict (the tied output embedding is not repeated)."""
    actor = actor_dir(checkpoint_dir, step)
    model = _empty_model(os.path.join(actor, "huggingface"))
    full_shapes = {name: t.shape for name, t in model.state_dict().items()}
    shards = [torch.load(path, map_location="cpu", weights_only=True) for path in teacher_shard_paths(actor)]
    return merge_shards(shards, full_shapes)


def export_teacher(checkpoint_dir: str, out_dir: str, *, step: int | None = None, dtype: str | None = None) -> str:
    """Write the EMA teacher of `checkpoint_dir` to `out_dir` as a HF model; returns `out_dir`.

    `dtype` ("float32", "bfloat16", ...) casts the weights; by default they keep the training
    dtype of the shards (verl's merger writes the student in bfloat16)."""
    actor = actor_dir(checkpoint_dir, step)
    hf_dir = os.path.join(actor, "huggingface")
    state = load_teacher_state(actor)
    if dtype is not None:
        state = {name: t.to(getattr(torch, dtype)) for name, t in state.items()}
    model = _empty_model(hf_dir)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if model.config.get_text_config().tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"EMA teacher of {actor}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.config.dtype = next(iter(state.values())).dtype
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(hf_dir):
        src = os.path.join(hf_dir, name)
        if os.path.isfile(src) and not name.endswith(_HF_WEIGHT_SUFFIXES):
            shutil.copy2(src, os.path.join(out_dir, name))  # tokenizer, chat template, generation config
    model.save_pretrained(out_dir)  # config.json (with the weights' dtype) and the safetensors
    return out_dir

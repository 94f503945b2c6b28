"""`python -m srpo_verl export-teacher CHECKPOINT_DIR OUT_DIR`: the EMA teacher as a Hugging Face model.

The SRPO worker saves the EMA teacher next to verl's actor checkpoint as rank-local shards,
`<actor>/srpo_ema_teacher/rank_<r>.pt`, each a dict {parameter name: that rank's FSDP2 shard}
(`DTensor.to_local()`: dim-0 chunks in rank order, as `torch.chunk` cuts them). This module puts
them back together and writes a directory that `AutoModelForCausalLM.from_pretrained` loads, with
the student's config, tokenizer and generation config (the teacher is an EMA of the student, so
it has the student's architecture). The student itself is exported by verl's own merger
(`python -m verl.model_merger merge --backend fsdp ...`, docs/export.md).

A LoRA student's teacher is base + EMA(adapter): its shards hold the adapter's `lora_` tensors only.
The base comes from the actor checkpoint (frozen in training, so the checkpointed base is the one
the teacher ran on); OUT_DIR then gets base + the teacher adapter merged, and OUT_DIR/teacher_adapter/
the adapter alone in PEFT's layout (adapter_config.json, adapter_model.safetensors).

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


TRACKER = "latest_checkpointed_iteration.txt"  # verl's record of the latest saved step
_STEP_FOLDER = re.compile(r"global_step_(\d+)")
# --dtype: torch's names, and the short ones verl's configs use.
DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
}


class NotACheckpoint(FileNotFoundError):
    """The path is not a verl checkpoint at all (as opposed to one with a missing or broken part)."""


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype of a --dtype name, refused before any shard is read."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def _step_of(folder: str) -> int | None:
    match = _STEP_FOLDER.fullmatch(os.path.basename(folder))
    return int(match.group(1)) if match else None


def _check_step_folder(step: int | None, folder: str) -> None:
    """--step given with a folder of one step: it must be that step, never silently another."""
    if step is None:
        return
    own = _step_of(folder)
    if own != step:
        which = f"the folder of step {own}" if own is not None else "one step's folder (its step unknown)"
        raise ValueError(f"--step {step}: {folder} is {which}; give trainer.default_local_dir to choose a step")


def read_tracker(path: str) -> int:
    with open(path) as f:
        text = f.read()
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{path}: expected the latest step number, found {text[:60]!r}") from None


def actor_dir(checkpoint_dir: str, step: int | None = None) -> str:
    """The `actor/` folder of a checkpoint, given the run's `trainer.default_local_dir` (the latest
    step, or `step`), a `global_step_N` folder, or the actor folder itself. NotACheckpoint when
    the path is none of these; a checkpoint folder missing the step asked for names what is there."""
    path = os.path.abspath(checkpoint_dir)
    if os.path.isdir(os.path.join(path, "huggingface")) and os.path.basename(path) == "actor":
        _check_step_folder(step, os.path.dirname(path))
        return path
    if os.path.isdir(os.path.join(path, "actor")):
        _check_step_folder(step, path)
        return os.path.join(path, "actor")
    tracker = os.path.join(path, TRACKER)
    steps = sorted(
        s for s in (_step_of(name) for name in (os.listdir(path) if os.path.isdir(path) else [])) if s is not None
    )
    if not os.path.exists(tracker) and not steps:
        raise NotACheckpoint(
            f"{checkpoint_dir} is not a verl checkpoint: expected an actor/ folder, a global_step_N/ folder or "
            f"trainer.default_local_dir with {TRACKER}"
        )
    source = "--step"
    if step is None:
        if not os.path.exists(tracker):
            raise FileNotFoundError(
                f"{checkpoint_dir}: no {TRACKER} to name the latest step (steps there: {steps}); pass --step"
            )
        step, source = read_tracker(tracker), tracker
    actor = os.path.join(path, f"global_step_{step}", "actor")
    if not os.path.isdir(actor):
        raise FileNotFoundError(
            f"{checkpoint_dir}: no global_step_{step}/actor (step {step} from {source}); steps there: {steps}"
        )
    return actor


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
        try:
            with open(fsdp_config) as f:
                recorded = json.load(f).get("world_size")
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{fsdp_config}: not verl's FSDP record, a JSON object with world_size ({exc})") from None
        if recorded is not None and recorded != world:
            raise ValueError(
                f"{folder} holds {world} teacher shards but the actor checkpoint was saved by {recorded} ranks"
            )
    return [by_rank[r] for r in range(world)]


def merge_shards(shards: list[dict[str, torch.Tensor]], full_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """{name: full tensor} from per-rank {name: shard} dicts (rank order), using the full shapes."""
    names = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != names:
            raise ValueError(
                f"teacher shard of rank {rank} has different parameters than rank 0: {sorted(names ^ set(shard))[:5]}"
            )
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
                f"{name}: the {len(pieces)} shards {[tuple(p.shape) for p in pieces]} concatenate to "
                f"{tuple(full.shape)}, "
                f"not the model's {tuple(shape)}"
            )
        merged[name] = full.contiguous()
    return merged


def _empty_model(hf_dir: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_shard(path: str) -> dict[str, torch.Tensor]:
    """One rank's {name: tensor}; a truncated or foreign file is named instead of torch's bare error."""
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds (RuntimeError, EOFError, pickle errors)
        raise ValueError(
            f"{path}: not a readable teacher shard, truncated or corrupt? ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(shard, dict) or not all(isinstance(t, torch.Tensor) for t in shard.values()):
        raise ValueError(f"{path}: expected a dict of parameter name -> tensor, found {type(shard).__name__}")
    return shard


def nonfinite(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """{name: count of NaN/inf entries} of the tensors that hold any."""
    out = {}
    for name, t in state.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                out[name] = bad
    return out


def load_teacher_state(checkpoint_dir: str, step: int | None = None) -> dict[str, torch.Tensor]:
    """The EMA teacher's full state dict (the tied output embedding is not repeated)."""
    actor = actor_dir(checkpoint_dir, step)
    model = _empty_model(os.path.join(actor, "huggingface"))
    full_shapes = {name: t.shape for name, t in model.state_dict().items()}
    shards = [load_shard(path) for path in teacher_shard_paths(actor)]
    return merge_shards(shards, full_shapes)


def _refuse_nonfinite(state: dict[str, torch.Tensor], where: str, why: str) -> None:
    bad = nonfinite(state)
    if bad:
        named = ", ".join(f"{name} ({count} entries)" for name, count in list(bad.items())[:5])
        raise ValueError(
            f"EMA teacher of {where}: NaN/inf in {len(bad)} of {len(state)} tensors, e.g. {named}: {why}; "
            "pass --allow-nonfinite to export it anyway"
        )


ADAPTER_DIR = "teacher_adapter"  # inside OUT_DIR, for a LoRA student's teacher
_LORA_SUFFIX = re.compile(r"\.lora_[A-Za-z_]+\.[^.]+\.weight$")  # .lora_A.default.weight, ...
_PEFT_PREFIX = "base_model.model."


def is_adapter_state(names) -> bool:
    """Teacher shards of a LoRA student: adapter tensors only (srpo_verl/integration/lora_teacher.py)."""
    from srpo_verl.integration.lora_teacher import ADAPTER_MARK

    names = list(names)
    return bool(names) and all(ADAPTER_MARK in name for name in names)


def _student_shards(actor: str, world: int) -> list[dict[str, torch.Tensor]]:
    """verl's actor shards (DTensors) as rank-local tensors, rank order."""
    shards = []
    for rank in range(world):
        path = os.path.join(actor, f"model_world_size_{world}_rank_{rank}.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: the LoRA teacher's base weights are read from the actor checkpoint")
        state = torch.load(path, map_location="cpu", weights_only=False)  # verl pickles DTensors
        shards.append({k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in state.items()})
    return shards


def _lora_teacher_model(actor: str, teacher_shards: list[dict[str, torch.Tensor]]):
    """The PEFT model of the checkpoint: base from the actor shards, adapter = the EMA teacher's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    meta_path = os.path.join(actor, "lora_train_meta.json")  # verl writes r and lora_alpha there
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: a LoRA teacher needs verl's record of the adapter's rank and alpha")
    with open(meta_path) as f:
        meta = json.load(f)
    # The adapted modules, by full name, from the teacher's own tensor names.
    targets = sorted({_LORA_SUFFIX.sub("", name).removeprefix(_PEFT_PREFIX) for name in teacher_shards[0]})
    config = AutoConfig.from_pretrained(os.path.join(actor, "huggingface"))
    with torch.device("meta"):
        skeleton = get_peft_model(
            AutoModelForCausalLM.from_config(config),
            LoraConfig(r=int(meta["r"]), lora_alpha=meta["lora_alpha"], target_modules=targets, bias="none"),
        )
    full_shapes = {name: t.shape for name, t in skeleton.state_dict().items()}
    teacher = merge_shards(teacher_shards, full_shapes)
    student = merge_shards(_student_shards(actor, len(teacher_shards)), full_shapes)
    state = {**student, **teacher}  # base from the actor, adapter from the teacher
    missing, unexpected = skeleton.load_state_dict(state, strict=False, assign=True)
    if config.get_text_config().tie_word_embeddings:
        skeleton.base_model.model.tie_weights()
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"LoRA teacher of {actor}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return skeleton, teacher


def _copy_hf_files(hf_dir: str, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(hf_dir):
        src = os.path.join(hf_dir, name)
        if os.path.isfile(src) and not name.endswith(_HF_WEIGHT_SUFFIXES):
            shutil.copy2(src, os.path.join(out_dir, name))  # tokenizer, chat template, generation config


def _export_lora_teacher(actor, out_dir, shards, cast, dtype, allow_nonfinite) -> str:
    peft_model, adapter = _lora_teacher_model(actor, shards)
    if not allow_nonfinite:
        _refuse_nonfinite(adapter, actor, "the run diverged before this checkpoint")
    if cast is not None:
        peft_model.to(cast)
    hf_dir = os.path.join(actor, "huggingface")
    adapter_dir = os.path.join(out_dir, ADAPTER_DIR)
    peft_model.save_pretrained(adapter_dir)  # PEFT layout: adapter_config.json + adapter_model.safetensors
    merged = peft_model.merge_and_unload()  # W + (alpha / r) B A in each adapted layer
    state = merged.state_dict()
    if not allow_nonfinite:
        _refuse_nonfinite(state, actor, f"--dtype {dtype} overflows them" if cast is not None else "merging overflows")
    merged.config.dtype = next(iter(state.values())).dtype
    _copy_hf_files(hf_dir, out_dir)
    merged.save_pretrained(out_dir)
    return out_dir


def export_teacher(
    checkpoint_dir: str,
    out_dir: str,
    *,
    step: int | None = None,
    dtype: str | None = None,
    allow_nonfinite: bool = False,
) -> str:
    """Write the EMA teacher of `checkpoint_dir` to `out_dir` as a HF model; returns `out_dir`.

    `dtype` ("float32", "bfloat16", ...) casts the weights; by default they keep the training
    dtype of the shards (verl's merger writes the student in bfloat16). A teacher holding NaN or
    inf (a diverged run, or a cast that overflows) is refused unless `allow_nonfinite`. A LoRA
    student's teacher is written merged into its base, and alone under OUT_DIR/teacher_adapter/."""
    cast = torch_dtype(dtype)  # a bad name fails here, before gigabytes of shards are read
    actor = actor_dir(checkpoint_dir, step)
    hf_dir = os.path.join(actor, "huggingface")
    paths = teacher_shard_paths(actor)
    first = load_shard(paths[0])
    if is_adapter_state(first):
        shards = [first] + [load_shard(path) for path in paths[1:]]
        return _export_lora_teacher(actor, out_dir, shards, cast, dtype, allow_nonfinite)
    state = load_teacher_state(actor)
    if not allow_nonfinite:
        _refuse_nonfinite(state, actor, "the run diverged before this checkpoint")
    if cast is not None:
        state = {name: t.to(cast) for name, t in state.items()}
        if not allow_nonfinite:
            _refuse_nonfinite(state, actor, f"--dtype {dtype} overflows them")
    model = _empty_model(hf_dir)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if model.config.get_text_config().tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"EMA teacher of {actor}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.config.dtype = next(iter(state.values())).dtype
    _copy_hf_files(hf_dir, out_dir)
    model.save_pretrained(out_dir)  # config.json (with the weights' dtype) and the safetensors
    return out_dir

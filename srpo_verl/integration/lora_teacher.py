"""The EMA teacher of a LoRA student: the same frozen base plus an EMA copy of the student's adapter.

With `actor_rollout_ref.model.lora_rank > 0` only the adapter trains, so an EMA over the whole model
would average base weights that never move. The teacher is therefore base + EMA(adapter): its state
is one fp32 tensor per adapter shard (the rank-local shard of each student parameter whose name holds
`lora_`), and it runs inside the student's own FSDP module with those tensors swapped in for one
no-grad forward. No second model is built; the teacher costs the adapter's bytes.

Why a swap and not PEFT's second adapter: verl wraps the PEFT model in FSDP after building it with one
adapter ("default"); a second adapter added later is not in FSDP's parameter groups, and one added
before would be trained by verl's optimiser unless frozen by hand and would ride along in every weight
sync and checkpoint. Copying shard tensors in place keeps verl's module, optimiser, checkpoints and
rollout sync exactly as verl built them, and FSDP2 all-gathers from those same shard tensors.
"""

# device: the teacher's tensors live where the student's adapter shards live (the only factories are clones)
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.distributed.fsdp import FSDPModule

ADAPTER_MARK = "lora_"  # PEFT names every LoRA tensor lora_A / lora_B / lora_embedding_* / lora_magnitude_*


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def adapter_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The student's adapter parameters by name, after checking the base is frozen.

    Raises when a parameter outside the adapter trains (PEFT `modules_to_save`, a bias, an unfrozen
    base): the teacher would hold a stale copy of it, i.e. it would not be base + EMA(adapter)."""
    adapter, trainable_base = {}, []
    for name, p in module.named_parameters():
        if ADAPTER_MARK in name:
            adapter[name] = p
        elif p.requires_grad:
            trainable_base.append(name)
    if trainable_base:
        raise RuntimeError(
            f"LoRA student with {len(trainable_base)} trainable non-adapter parameters (e.g. {trainable_base[:3]}): "
            "the EMA adapter teacher needs a frozen base (no modules_to_save, bias='none')"
        )
    if not adapter:
        raise RuntimeError("actor_rollout_ref.model.lora_rank > 0 but the student has no 'lora_' parameters")
    return adapter


def _reshard(module: torch.nn.Module) -> None:
    """Free any unsharded FSDP2 parameters so the next forward all-gathers the shards as they are now
    (FSDP2 does not reshard its root after forward; the swap must not meet a stale gathered copy)."""
    for m in module.modules():
        if isinstance(m, FSDPModule):  # fully_shard makes each wrapped module one
            m.reshard()


class AdapterTeacher:
    """base + EMA(adapter), run in the student's module (see the module docstring)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.active = False
        # fp32 whatever the student's dtype: at rate 0.05 a bf16 teacher would round most updates away.
        self.state = {
            name: _local(p).detach().to(dtype=torch.float32, copy=True)
            for name, p in adapter_parameters(module).items()
        }

    def pairs(self):
        """(name, teacher tensor, student's rank-local shard); the shard is looked up now, as FSDP may
        have moved it (offload) since the last call."""
        params = adapter_parameters(self.module)
        if params.keys() != self.state.keys():
            raise RuntimeError("the LoRA student's adapter parameters changed since the EMA teacher was built")
        for name, p in params.items():
            yield name, self.state[name], _local(p)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())

    @contextmanager
    def swapped_in(self):
        """The teacher's adapter in the student's module; the student's own values (bit for bit) back on
        exit, also on error. Gradients and the optimiser state are never touched: only parameter data."""
        pairs = [(t, s) for _, t, s in self.pairs()]
        with torch.no_grad():
            saved = [s.clone() for _, s in pairs]
        _reshard(self.module)
        try:
            with torch.no_grad():
                for t, s in pairs:
                    s.copy_(t)  # copy_ casts to the shard's dtype and device
            self.active = True
            yield
        finally:
            self.active = False
            with torch.no_grad():
                for (_, s), keep in zip(pairs, saved):
                    s.copy_(keep)
            _reshard(self.module)

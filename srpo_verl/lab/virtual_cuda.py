"""CUDA semantics on a CPU-only torch: a virtual `cuda` device and flash-attn's in-place cross-entropy.

What a GPU run does that a CPU run hides, emulated so the suite can see it:

* `VirtualCuda()` — a TorchFunctionMode under which tensors "moved to cuda" keep their real CPU
  data but report `device == cuda:0`, and every torch call checks that its tensor arguments live on
  one device (0-dim CPU tensors excepted, as on CUDA). Factory calls with `device=cuda` make CPU
  tensors that report cuda. Mixing raises the same error CUDA raises, so code that builds a CPU
  `arange` next to a micro-batch verl moved to the GPU fails here as it would there; `.tolist()` and
  `.item()` still return real values (they do on CUDA too, with a sync), `.numpy()` refuses as on CUDA.
  `torch._subclasses.fake_tensor.FakeTensorMode` gives the same device check without values, but on
  a CPU-only build it cannot index (`x[i]` asks for the CUDA device guard), so it only serves value-free
  code; tests/gpu/test_cuda_semantics.py cross-checks the two on such code.
* `inplace_logprobs_from_logits` — verl's `logprobs_from_logits` as it behaves with flash-attn
  installed: its backward writes d loss / d logits into the logits' own storage (without bumping the
  version counter, as a Triton kernel does) and returns that storage as the gradient.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_TAG = "_srpo_virtual_device"  # "cuda" or "cpu" on a tensor whose place the mode knows
_DEFAULT = ["cpu"]  # where an untagged tensor lives: "cuda" inside VirtualCuda(default="cuda")
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_DISTRIBUTED_DIR = os.path.join(_TORCH_DIR, "distributed") + os.sep
_THIS_FILE = os.path.abspath(__file__)


def _device_of(t) -> str:
    tag = getattr(t, _TAG, None)
    if tag is None and getattr(t, "is_nested", False) and getattr(t, "_values", None) is not None:
        return _device_of(t._values)  # a jagged tensor is where its values are (torch builds it untracked)
    return _DEFAULT[0] if tag is None else tag


def is_virtual(t) -> bool:
    """True for a tensor on the virtual cuda device."""
    return isinstance(t, torch.Tensor) and _device_of(t) == "cuda"


def _tag(t, device: str):
    if isinstance(t, torch.Tensor):
        setattr(t, _TAG, device)
        if t.is_nested:  # jagged: its components are what `.values()`/`.offsets()` return
            for part in (t.values(), t.offsets(), getattr(t, "_lengths", None)):
                if part is not None:
                    setattr(part, _TAG, device)
    return t


def _mark(t):
    return _tag(t, "cuda")


def _wants_cuda(device) -> bool | None:
    """True for a cuda target, False for cpu, None when no device is named."""
    if device is None:
        return None
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


def _fresh_copy(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object with the same values (so tagging it does not tag the original)."""
    if t.is_nested:
        lengths = getattr(t, "_lengths", None)
        return torch.nested.nested_tensor_from_jagged(
            t.values().clone(),
            t.offsets().clone(),
            lengths=None if lengths is None else lengths.clone(),
            min_seqlen=t._min_seqlen,
            max_seqlen=t._max_seqlen,
        )
    return t.view_as(t) if t.requires_grad else t.clone()


def _called_by_torch_distributed() -> bool:
    """Whether the torch call being handled was made by torch.distributed (FSDP1/2, DTensor, c10d).

    Their device is the process group's: the real one (cpu, gloo) here, the accelerator on a GPU. So
    under default="cuda" they see the real devices (`.device` answers cpu, as the CPU backend set them
    up) and what they make or move counts as on the accelerator, as it would be there. Frames of torch's
    own Python plumbing between them and this call are skipped; the first other frame decides."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_DISTRIBUTED_DIR):
            return True
        if not (name.startswith(_TORCH_DIR) or name == _THIS_FILE):
            return False
        frame = frame.f_back
    return False


class DeviceMismatch(RuntimeError):
    pass


_DEVICE_FREE = {
    torch.Tensor.dim,
    torch.Tensor.size,
    torch.Tensor.numel,
    torch.Tensor.__len__,
    torch._has_compatible_shallow_copy_type,
}
# Calls that may take tensors of two devices on CUDA too.
_CROSS_DEVICE = {torch.Tensor.copy_}


class VirtualCuda(TorchFunctionMode):
    """See the module docstring. `to_cuda(x)` inside the mode moves a tensor or TensorDict.

    default="cpu": every tensor is on the host until moved (`.to("cuda")`, a factory with
    device="cuda"). default="cuda": every tensor the mode has not seen made on or moved to the host is
    on the device (a model built before the mode, its gradients and optimiser state, as FSDP places
    them on a GPU); factories without a device, `.cpu()` and `.to("cpu")` make host tensors, and
    `to_host(x)` marks what a caller hands over from the host (verl's TransferQueue batches).

    `host_reads` lists every device-to-host read (a copy to the CPU, `.item()`, `float()`, `.tolist()`
    of a cuda tensor): each is a synchronisation and a transfer on a real GPU."""

    def __init__(self, default: str = "cpu"):
        super().__init__()
        if default not in ("cpu", "cuda"):
            raise ValueError(f"default must be cpu or cuda, got {default!r}")
        self.default, self.host_reads = default, []

    def __enter__(self):
        self._saved_default = _DEFAULT[0]
        _DEFAULT[0] = self.default
        return super().__enter__()

    def __exit__(self, *exc):
        _DEFAULT[0] = self._saved_default
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if func in (torch.Tensor.device.__get__, torch.Tensor.is_cuda.__get__, torch.Tensor.get_device):
            if self.default == "cuda" and _called_by_torch_distributed():
                return func(*args)  # the process group's own view: the real device
            on_cuda = is_virtual(args[0])
            if func is torch.Tensor.get_device:
                return 0 if on_cuda else -1
            if func == torch.Tensor.is_cuda.__get__:
                return on_cuda
            return CUDA if on_cuda else func(*args)
        if (
            func is torch.Tensor.numpy
            and is_virtual(args[0])
            and not (self.default == "cuda" and _called_by_torch_distributed())
        ):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")
        if func == torch.Tensor.data.__set__:  # nn.Module.to() swaps a parameter's data in place
            func(*args, **kwargs)
            _tag(args[0], _device_of(args[1]))
            return None
        if func is torch.Tensor.pin_memory:  # page-locked host memory is still the host's; no accelerator here
            return args[0]
        if func in _DEVICE_FREE or name in ("__get__", "__set__"):
            return func(*args, **kwargs)
        internal = self.default == "cuda" and _called_by_torch_distributed()

        # Moves between devices.
        if name == "_parse_to":  # how TensorDict.to reads its target: answer cuda without an accelerator
            device = kwargs.pop("device", None)
            call = []
            for a in args:
                if isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
                    device, a = a, "cpu"
                call.append(a)
            parsed = func(*call, **kwargs)
            return (CUDA,) + tuple(parsed[1:]) if _wants_cuda(device) else parsed
        if func is torch.Tensor.cuda:
            return args[0] if is_virtual(args[0]) else _mark(_fresh_copy(args[0]))
        if func is torch.Tensor.cpu:
            if internal or not is_virtual(args[0]):
                return args[0]
            self.host_reads.append("cpu")
            return _tag(_fresh_copy(args[0]), "cpu")
        if func is torch.Tensor.to:
            # The named device (positional or keyword) is replaced by cpu; dtype and flags stay.
            device = kwargs.get("device")
            call = list(args)
            for i, a in enumerate(call[1:], start=1):
                if isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
                    device, call[i] = a, "cpu"
            if "device" in kwargs:
                kwargs["device"] = "cpu"
            out = func(*call, **kwargs)
            target = True if internal and device is not None else _wants_cuda(device)
            source = _device_of(args[0])
            if target is None:  # a dtype change stays where it was
                return _tag(out, source) if out is not args[0] else out
            wanted = "cuda" if target else "cpu"
            if wanted == source:
                return out
            if wanted == "cpu":
                self.host_reads.append("to")
            return _tag(_fresh_copy(out) if out is args[0] else out, wanted)

        # Everything else: one device among the tensor arguments, as CUDA kernels require.
        named = _wants_cuda(kwargs.get("device"))
        if "device" in kwargs and kwargs["device"] is not None:
            kwargs["device"] = "cpu"
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_cuda = [t for t in tensors if is_virtual(t)]
        # 0-dim host tensors are accepted next to CUDA ones (they become scalars).
        host = [t for t in tensors if not is_virtual(t) and not (t.dim() == 0 and not t.is_nested)]
        # torch's own jagged-tensor views carry a CPU dummy by design (it only holds a symbolic size).
        exempt = internal or name.startswith("_nested") or func in _CROSS_DEVICE
        if on_cuda and host and not exempt:
            raise DeviceMismatch(
                f"{name or func}: Expected all tensors to be on the same device, but found at least two "
                f"devices, cpu and cuda:0! (shapes on the host {[tuple(t.shape) for t in host]}, on cuda "
                f"{[tuple(t.shape) for t in on_cuda]})"
            )
        out = func(*args, **kwargs)
        if named is not None:
            where = "cuda" if named or internal else "cpu"
        elif tensors:
            where = "cuda" if on_cuda else "cpu"
        else:  # a factory without a device: the default device is the host, except for the process group
            where = "cuda" if internal else "cpu"
        if where == "cuda" and name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
            self.host_reads.append(name)
            return out
        in_place = (name.endswith("_") and not name.startswith("__")) or name in (
            "__setitem__",
            "__iadd__",
            "__isub__",
            "__imul__",
            "__itruediv__",
        )
        if in_place:
            return out
        tree_map(lambda t: _tag(t, where) if not any(t is a for a in tensors) else t, out)
        return out


def to_cuda(x):
    """Move a tensor or a TensorDict to the virtual cuda device (call inside `VirtualCuda()`)."""
    if isinstance(x, torch.Tensor):
        return x.to(CUDA)
    return x.to(CUDA)


# ------------------------------------------------------------------------------------------------
# flash-attn's cross-entropy with inplace_backward=True


class _InplaceBackwardLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits.float(), dim=-1)  # (N,)
        ctx.save_for_backward(logits, lse, labels)
        return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float() - lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, lse, labels = ctx.saved_tensors
        g = grad_out.float().unsqueeze(-1)  # (N, 1)
        dlogits = torch.exp(logits.float() - lse.unsqueeze(-1)).mul_(-g)  # -p * g
        dlogits.scatter_add_(-1, labels.unsqueeze(-1), g)  # + g at the label
        storage = logits.data  # the Triton kernel writes here; no version-counter bump
        storage.copy_(dlogits)
        return storage, None


def inplace_logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, inplace_backward: bool = True):
    """verl.utils.torch_functional.logprobs_from_logits with flash-attn's in-place backward contract."""
    shape = logits.shape[:-1]
    flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if inplace_backward:
        out = _InplaceBackwardLogProbs.apply(flat, flat_labels)
    else:
        out = torch.log_softmax(flat.float(), -1).gather(-1, flat_labels.unsqueeze(-1)).squeeze(-1)
    return out.view(*shape)


@contextlib.contextmanager
def flash_attn_cross_entropy():
    """Patch verl's FSDP engine to compute token log-probs with `inplace_logprobs_from_logits`."""
    from verl.workers.engine.fsdp import transformer_impl

    saved = transformer_impl.logprobs_from_logits
    transformer_impl.logprobs_from_logits = inplace_logprobs_from_logits
    try:
        yield
    finally:
        transformer_impl.logprobs_from_logits = saved

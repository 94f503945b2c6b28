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
  code; `test_device_placement.py` cross-checks the two on such code.
* `inplace_logprobs_from_logits` — verl's `logprobs_from_logits` as it behaves with flash-attn
  installed: its backward writes d loss / d logits into the logits' own storage (without bumping the
  version counter, as a Triton kernel does) and returns that storage as the gradient.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_TAG = "_srpo_virtual_cuda"


def is_virtual(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def _mark(t):
    if isinstance(t, torch.Tensor):
        setattr(t, _TAG, True)
        if t.is_nested:  # jagged: its components are what `.values()`/`.offsets()` return
            for part in (t.values(), t.offsets(), getattr(t, "_lengths", None)):
                if part is not None:
                    setattr(part, _TAG, True)
    return t


def _wants_cuda(device) -> bool | None:
    """True for a cuda target, False for cpu, None when no device is named."""
    if device is None:
        return None
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


def _fresh_copy(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object with the same values (so marking it does not mark the CPU original)."""
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


class DeviceMismatch(RuntimeError):
    pass


_DEVICE_FREE = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.__len__, torch._has_compatible_shallow_copy_type}


class VirtualCuda(TorchFunctionMode):
    """See the module docstring. `to_cuda(x)` inside the mode moves a tensor or TensorDict.

    `host_reads` lists every device-to-host read (a copy to the CPU, `.item()`, `float()`, `.tolist()`
    of a cuda tensor): each is a synchronisation and a transfer on a real GPU."""

    def __init__(self):
        super().__init__()
        self.host_reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if func == torch.Tensor.device.__get__:
            return CUDA if is_virtual(args[0]) else func(*args)
        if func == torch.Tensor.is_cuda.__get__:
            return is_virtual(args[0])
        if func is torch.Tensor.get_device:
            return 0 if is_virtual(args[0]) else -1
        if func is torch.Tensor.numpy and is_virtual(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")
        if func == torch.Tensor.data.__set__:  # nn.Module.to() swaps a parameter's data in place
            func(*args, **kwargs)
            if is_virtual(args[1]):
                _mark(args[0])
            elif is_virtual(args[0]):
                setattr(args[0], _TAG, False)
            return None
        if func in _DEVICE_FREE or name in ("__get__", "__set__"):
            return func(*args, **kwargs)

        # Moves between devices.
        if func in (torch.Tensor.cuda,):
            return _mark(_fresh_copy(args[0])) if not is_virtual(args[0]) else args[0]
        if func is torch.Tensor.cpu:
            if is_virtual(args[0]):
                self.host_reads.append("cpu")
                return _fresh_copy(args[0])
            return args[0]
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
            target = _wants_cuda(device)
            if target is True and not is_virtual(out):
                return _mark(_fresh_copy(out) if out is args[0] else out)
            if target is False and is_virtual(out):
                self.host_reads.append("to")
                return _fresh_copy(out)
            return _mark(out) if target is None and is_virtual(args[0]) else out

        # Everything else: one device among the tensor arguments, as CUDA kernels require.
        cuda_factory = _wants_cuda(kwargs.get("device")) is True
        if "device" in kwargs and kwargs["device"] is not None:
            kwargs["device"] = "cpu"
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        virtual = [t for t in tensors if is_virtual(t)]
        # 0-dim CPU tensors are accepted next to CUDA ones (they become scalars).
        plain = [t for t in tensors if not is_virtual(t) and not (t.dim() == 0 and not t.is_nested)]
        # torch's own jagged-tensor views carry a CPU dummy by design (it only holds a symbolic size).
        internal = name.startswith("_nested")
        if (virtual or cuda_factory) and plain and not internal:
            raise DeviceMismatch(
                f"{name or func}: Expected all tensors to be on the same device, but found at least two "
                "devices, cpu and cuda:0!"
            )
        out = func(*args, **kwargs)
        if virtual or cuda_factory:
            if name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
                self.host_reads.append(name)
                return out
            tree_map(_mark, out)
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

"""SRPO's GPU-path code with the tensors verl hands it on a CUDA machine, run on a CPU-only torch.

On GPU, verl's FSDP engine moves every micro-batch to the accelerator before it calls the logits
processor and the loss (nested tensors' `offsets()` included), and computes token log-probs with
flash-attn's cross-entropy, whose backward writes its gradient into the logits. `virtual_cuda.py`
emulates both; each test here runs one piece of the GPU path under it and compares with a float64
reference, so a CPU tensor next to a CUDA one, or a backward that re-reads the logits, fails here.
"""

import contextlib
import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from verl.utils import tensordict_utils as tu

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration import wire
from srpo_verl.integration import worker as worker_module
from srpo_verl.integration.loss import srpo_loss_fn
from srpo_verl.integration.worker import SRPOActorRolloutRefWorker
from srpo_verl.lab.loss_case import (
    ACTOR,
    K,
    RESPONSE_LENS,
    engine_like_call,
    make_batch,
    micro_batch,
    nested,
    reference_loss,
)
from srpo_verl.lab.virtual_cuda import CUDA, DeviceMismatch, VirtualCuda, inplace_logprobs_from_logits, is_virtual
from srpo_verl.lent_gradient import Lend, LendBook


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def _to_cuda(data):
    return data.to(CUDA)


# ------------------------------------------------------------------ the emulation itself


def test_virtual_cuda_refuses_what_cuda_refuses_and_agrees_with_fake_tensors():
    lens_cpu = torch.tensor([3, 4])
    with VirtualCuda():
        lens = lens_cpu.to("cuda")
        assert lens.device == CUDA and lens.tolist() == [3, 4]
        # The pattern of the first-update crash: a CPU arange repeated by CUDA lengths.
        with pytest.raises(DeviceMismatch, match="cpu and cuda:0"):
            torch.repeat_interleave(torch.arange(2), lens)
        ok = torch.repeat_interleave(torch.arange(2, device=lens.device), lens)
        assert ok.device == CUDA and ok.tolist() == [0, 0, 0, 1, 1, 1, 1]
        with pytest.raises(TypeError, match="numpy"):
            lens.numpy()
        assert torch.zeros(2).device.type == "cpu"  # nothing leaks onto tensors that were not moved
    # FakeTensorMode (no values, no indexing on a CPU-only build) refuses the same value-free op.
    with FakeTensorMode(shape_env=ShapeEnv()):
        fake_lens = torch.ones(2, dtype=torch.long, device="cuda")
        with pytest.raises(Exception, match="cpu and cuda:0"):
            torch.repeat_interleave(torch.arange(2), fake_lens)


def test_inplace_cross_entropy_emulation_overwrites_the_logits_like_flash_attn():
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 6, 3, 3])
    x = logits * 1.0  # a non-leaf, as the engine's logits are
    out = inplace_logprobs_from_logits(x, labels)
    # fp32 output, as flash-attn's kernel gives (float64 in, so compare at fp32 precision).
    expected_lp = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(out.double(), expected_lp, rtol=1e-6, atol=1e-6)
    before = x.detach().clone()
    out.sum().backward()
    assert not torch.equal(x.detach(), before)  # x's storage now holds d out / d x
    expected = torch.nn.functional.one_hot(labels, 7) - torch.softmax(before, -1)
    torch.testing.assert_close(x.detach(), expected)
    torch.testing.assert_close(logits.grad, expected)


# ------------------------------------------------------------------ the loss hook, both roles


def _loss_on_cuda(batch, logits, *, beta, alpha, inplace):
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(beta=beta, alpha=alpha, topk=K))
    _, log_mean = reference_loss(batch, batch["student_logits"], beta=beta, alpha=alpha)
    logprobs = inplace_logprobs_from_logits if inplace else out_of_place_logprobs
    with VirtualCuda():
        x = logits.to(CUDA) * 1.0  # the engine's logits: a non-leaf on the device
        loss, metrics = engine_like_call(
            fn, batch, range(5), x, logprobs=logprobs, move=_to_cuda, num_tokens=sum(RESPONSE_LENS), log_mean=log_mean
        )
        assert loss.device == CUDA
        loss.backward()
    return loss, metrics


def out_of_place_logprobs(logits, labels, inplace_backward=True):
    return torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place_ce", "flash_attn_inplace_ce"])
@pytest.mark.parametrize("beta,alpha", [(1.0, 0.5), (0.0, 0.2)])
def test_loss_hook_on_cuda_equals_the_float64_reference(batch, inplace, beta, alpha):
    logits = batch["student_logits"].clone().requires_grad_(True)
    loss, metrics = _loss_on_cuda(batch, logits, beta=beta, alpha=alpha, inplace=inplace)
    ref_logits = batch["student_logits"].clone().requires_grad_(True)
    ref, _ = reference_loss(batch, ref_logits, beta=beta, alpha=alpha)
    ref.backward()
    torch.testing.assert_close(loss.detach().double(), ref.detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-8)
    assert metrics["srpo/topk_match_fraction"] == 1.0


def _bf16_loss_hook(batch, logprobs):
    """(loss, gradient) of the loss hook on the bf16-rounded student logits moved to (virtual) CUDA,
    token log-probs by `logprobs`; and the float64 reference (loss, gradient) on the same rounded logits,
    so what remains is the bf16 handling itself."""
    logits_bf16 = batch["student_logits"].to(torch.bfloat16)
    x = logits_bf16.clone().requires_grad_(True)
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    _, log_mean = reference_loss(batch, batch["student_logits"], beta=1.0, alpha=0.5)
    with VirtualCuda():
        loss, _ = engine_like_call(
            fn,
            batch,
            range(5),
            x.to(CUDA) * 1.0,
            logprobs=logprobs,
            move=_to_cuda,
            num_tokens=sum(RESPONSE_LENS),
            log_mean=log_mean,
        )
        loss.backward()
    ref_x = logits_bf16.double().requires_grad_(True)
    ref, _ = reference_loss(batch, ref_x, beta=1.0, alpha=0.5)
    ref.backward()
    return loss, x.grad, ref, ref_x.grad


def test_loss_hook_in_bf16_against_float64(batch):
    # The GPU engine's logits are bf16; the loss upcasts per chunk. Tolerance: bf16 keeps 8 mantissa
    # bits, so logits are rounded by up to 2^-9 relative (|logit| < 8 here: ~0.016 absolute).
    loss, grad, ref, ref_grad = _bf16_loss_hook(batch, inplace_logprobs_from_logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    # The gradient is stored in bf16: relative rounding 2^-8.
    torch.testing.assert_close(grad.double(), ref_grad, rtol=8e-3, atol=2e-4)


def test_loss_hook_with_verls_bf16_torch_log_probs(batch):
    # Without flash-attn's cross-entropy (VERL_DISABLE_FLASH_ATTN_CE=1, or not installed) verl computes a
    # bf16 row's log-probs with a bf16 log_softmax: values rounded to bf16, and its backward rebuilds p
    # from them. The loss must accept those log-probs (no false refusal) and the lent gradient then has
    # that path's bf16 precision (GRPO's own gradient there has it too).
    from verl.utils.torch_functional import logprobs_from_logits_v2

    loss, grad, ref, ref_grad = _bf16_loss_hook(
        batch, lambda lg, lb, inplace_backward=True: logprobs_from_logits_v2(lg, lb)
    )
    assert abs(loss.item() - ref.item()) <= 2**-7 * abs(ref.item())
    assert float((grad.double() - ref_grad).norm() / ref_grad.norm()) <= 2**-6  # measured 0.7%


def test_processor_output_stays_on_the_device_and_only_routed_rows_are_nonzero(batch):
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    with VirtualCuda():
        data = micro_batch(batch, range(5), num_tokens=1, log_mean=0.0).to(CUDA)
        out = fn(student_logits=batch["student_logits"].to(CUDA).unsqueeze(0), data=data)
        assert all(is_virtual(v) for v in out.values())
        div = out[wire.DIVERGENCE].squeeze(0)
        assert int((div != 0).sum()) == sum(r for r, z in zip(RESPONSE_LENS, [1, 0, 1, 0, 1]) if z)


# ------------------------------------------------------------------ the teacher pass processor


class _LinearLM(torch.nn.Module):
    """A tiny causal LM stand-in: embedding, one linear layer per position, vocabulary V; like
    transformers' causal LMs, `logits_to_keep` (an index tensor) picks the positions given logits."""

    def __init__(self, vocab, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(vocab, 8, generator=g, dtype=torch.float64))
        self.head = torch.nn.Parameter(torch.randn(8, vocab, generator=g, dtype=torch.float64))
        self.positions_seen = 0

    def forward(self, input_ids, position_ids=None, use_cache=False, logits_to_keep=None):
        hidden = self.embed.index_select(0, input_ids.reshape(-1)) + 0.1 * position_ids.reshape(-1, 1).to(
            self.embed.dtype
        )
        if logits_to_keep is not None:
            hidden = hidden[logits_to_keep]
        self.positions_seen += hidden.shape[0]
        return SimpleNamespace(logits=(hidden @ self.head).unsqueeze(0))


class _Engine:
    """verl's `prepare_model_inputs` packs the micro-batch on its device (rmpad layout)."""

    _autocast_dtype = torch.float32  # verl skips autocast for fp32 parameters

    def __init__(self, module):
        self.module = module

    def prepare_model_inputs(self, micro_batch):
        ids = micro_batch["input_ids"]
        pos = micro_batch["position_ids"]
        temperature = tu.get_non_tensor_data(data=micro_batch, key="temperature", default=1.0)
        values = ids.values()
        inputs = {"input_ids": values.unsqueeze(0), "position_ids": pos.values().unsqueeze(0)}
        return inputs, {"temperature_rmpad": torch.full(values.shape, float(temperature), device=values.device)}

    eval_mode = staticmethod(contextlib.nullcontext)

    def get_data_parallel_group(self):
        return None


def _teacher_case(vocab=11, k=4, temperature=0.7):
    """Two teacher rows: student prompts, responses, teacher prompts, and the student's top-K ids of
    each response token (what the old-log-prob forward stored)."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, vocab, (n,), generator=g) for n in (3, 5)]
    responses = [torch.randint(0, vocab, (n,), generator=g) for n in (4, 2)]
    teacher_prompts = [torch.randint(0, vocab, (n,), generator=g) for n in (6, 4)]
    student = _LinearLM(vocab, 0)
    ids = [
        _student_logits(student, p, r, temperature).topk(k, -1).indices.to(torch.int32)
        for p, r in zip(prompts, responses)
    ]
    data = tu.get_tensordict(
        {
            "responses": nested(responses),
            wire.TEACHER_INPUT_IDS.name: nested([torch.cat([t, r]) for t, r in zip(teacher_prompts, responses)]),
            wire.TOPK_IDS.name: nested(ids),
        }
    )
    tu.assign_non_tensor(data, temperature=temperature)
    return prompts, responses, teacher_prompts, ids, data


def _student_logits(student, prompt, response, temperature):
    logits = student(torch.cat([prompt, response]), torch.arange(len(prompt) + len(response))).logits
    return logits[0, len(prompt) - 1 : -1] / temperature


def _assert_teacher_fields(got, ids, teacher, teacher_prompt, response, temperature=0.7):
    """The teacher-pass outputs of one row against a direct float64 computation on the CPU."""
    assert set(got) == set(wire.TEACHER_OUTPUT_NAMES)
    t_logits = teacher(torch.cat([teacher_prompt, response]), torch.arange(len(teacher_prompt) + len(response))).logits
    log_q = torch.log_softmax(t_logits[0, len(teacher_prompt) - 1 : -1] / temperature, -1)
    torch.testing.assert_close(got[wire.TEACHER_TOPK.name].double(), log_q.gather(-1, ids.long()), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        got[wire.TEACHER_ENTROPY.name].double(), -(log_q.exp() * log_q).sum(-1), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        got[wire.TEACHER_LOG_PROB.name].double(), log_q.gather(-1, response[:, None]).squeeze(-1), rtol=0, atol=1e-6
    )


def test_student_topk_in_the_old_log_prob_forward_on_cuda():
    # verl's engine hands the processor the packed student logits of a micro-batch on the accelerator;
    # only the taught rows get ids, host-side, keyed by srpo_row.
    vocab, k = 11, 4
    student = _LinearLM(vocab, 0)
    prompts, responses, _, ids, _ = _teacher_case(vocab, k, temperature=1.0)
    prompts.append(prompts[0])
    responses.append(responses[1])
    data = tu.get_tensordict(
        {
            "prompts": nested(prompts),
            "responses": nested(responses),
            wire.TAUGHT.name: torch.tensor([1, 0, 1]),
            wire.ROW: torch.tensor([5, 6, 7]),
        }
    )
    collector = worker_module._StudentTopK(k, chunk_size=2)
    with VirtualCuda(), torch.no_grad():
        student.to(CUDA)
        mb = data.to(CUDA)
        seqs = [torch.cat([p, r]) for p, r in zip(mb["prompts"].unbind(), mb["responses"].unbind())]
        positions = torch.cat([torch.arange(len(x), device=CUDA) for x in seqs])
        assert collector(student_logits=student(torch.cat(seqs), positions).logits, data=mb) == {}
    assert set(collector.rows) == {5, 6, 7} and collector.rows[6].shape == (0, k)  # nothing for the GRPO row
    student.to("cpu")
    for row, (p, r) in ((5, (prompts[0], responses[0])), (7, (prompts[2], responses[2]))):
        got = collector.rows[row]
        assert got.device.type == "cpu" and not is_virtual(got)
        expected = _student_logits(student, p, r, 1.0).topk(k, -1).indices
        assert torch.equal(got.long().sort(-1).values, expected.sort(-1).values)


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed_micro_batches", "dynamic_token_budget"])
def test_teacher_pass_on_cuda_micro_batches_equals_a_direct_float64_computation(monkeypatch, dynamic):
    # compute_srpo_teacher as the worker runs it: its own micro-batches of teacher sequences moved to
    # the accelerator, the teacher's logits at the response positions only, per-row host tensors
    # assembled into nested fields for TransferQueue.
    vocab, k = 11, 4
    teacher = _LinearLM(vocab, 1)
    prompts, responses, teacher_prompts, ids, data = _teacher_case(vocab, k)
    engine_config = SimpleNamespace(
        infer_micro_batch_size_per_gpu=1, use_dynamic_bsz=dynamic, infer_max_token_len_per_gpu=16
    )
    worker = SimpleNamespace(
        srpo=SRPOConfig(topk=k, chunk_size=2),
        srpo_k=k,
        actor=SimpleNamespace(engine_config=engine_config, engine=_Engine(None)),
        teacher=SimpleNamespace(engine=_Engine(teacher)),
    )
    for name in ("_score_teacher_micro_batch", "_teacher_engine", "_teacher_weights"):
        setattr(worker, name, partial(getattr(SRPOActorRolloutRefWorker, name), worker))
    monkeypatch.setattr(worker_module, "get_device_id", lambda: CUDA)
    with VirtualCuda(), torch.no_grad():
        teacher.to(CUDA)
        out = SRPOActorRolloutRefWorker.compute_srpo_teacher(worker, data)
    teacher.to("cpu")
    assert teacher.positions_seen == sum(len(r) for r in responses)  # logits at response positions only
    for i, (r, t) in enumerate(zip(responses, teacher_prompts)):
        got = {key: out[key].unbind()[i] for key in wire.TEACHER_OUTPUT_NAMES}
        assert all(v.device.type == "cpu" and not is_virtual(v) for v in got.values())  # host-side for the trainer
        _assert_teacher_fields(got, ids[i], teacher, t, r)


# ------------------------------------------------------------------ weight normaliser and EMA step


class _RecordingEngine:
    def __init__(self, module=None, grad_norm=1.0):
        self.module, self.seen, self.grad_norm = module, None, grad_norm

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        self.seen = data
        return {}

    def optimizer_step(self):
        return torch.tensor(self.grad_norm)

    def get_data_parallel_group(self):
        return None


def _worker(actor_engine, teacher_engine=None, beta=1.0, teacher="ema"):
    worker = SimpleNamespace(
        actor=SimpleNamespace(engine=actor_engine),
        teacher=SimpleNamespace(engine=teacher_engine) if teacher_engine is not None else None,
        srpo=SRPOConfig(beta=beta, teacher=teacher),
        srpo_lends=LendBook(),
        srpo_teacher_rows_total=0,
    )
    worker._param_pairs = partial(SRPOActorRolloutRefWorker._param_pairs, worker)
    return worker


def test_weight_normaliser_on_cuda_equals_the_log_mean_over_routed_tokens(monkeypatch):
    engine = _RecordingEngine()
    SRPOActorRolloutRefWorker._install_engine_hooks(_worker(engine, beta=2.0))
    # A data-parallel group on NCCL: collectives take accelerator tensors only (one rank here).
    reduced = []

    def nccl_all_reduce(tensor, op=None, group=None):
        if not is_virtual(tensor):
            raise RuntimeError("NCCL: Tensors must be CUDA and dense")
        reduced.append(op)

    monkeypatch.setattr(engine, "get_data_parallel_group", lambda: object())
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", nccl_all_reduce)
    monkeypatch.setattr(worker_module, "get_device_id", lambda: 0)
    entropy = [torch.tensor([400.0, 401.0, 1.0]), torch.tensor([402.0, 0.5])]
    data = tu.get_tensordict(
        {
            "responses": nested([torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long)]),
            "response_mask": nested([torch.tensor([1, 1, 0]), torch.tensor([1, 1])]),
            wire.ROUTE.name: torch.tensor([1, 1]),
            wire.TEACHER_ENTROPY.name: nested(entropy),
        }
    )
    # verl 0.9.1 hands forward_backward_batch the mini-batch on the host (it moves each micro-batch in
    # forward_step): the hook must reduce on the device and come back, never mix the two.
    with VirtualCuda():
        engine.forward_backward_batch(data, None)
    # beta * H = 800.. on every routed token: a linear-space mean would be log(0).
    expected = math.log((math.exp(-800) + math.exp(-802) + math.exp(-804) + math.exp(-1)) / 4)
    assert tu.get_non_tensor_data(data=engine.seen, key="srpo_log_mean_weight", default=None) == pytest.approx(expected)
    # log-mean: max then sum of (weights, count); the distilled-token count: one more sum.
    assert reduced == [torch.distributed.ReduceOp.MAX, torch.distributed.ReduceOp.SUM, torch.distributed.ReduceOp.SUM]
    assert tu.get_non_tensor_data(data=engine.seen, key="srpo_num_distilled_tokens", default=None) == 4.0


def _modules(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3).double()


@pytest.mark.parametrize("grad_norm", [1.0, float("inf"), float("nan")], ids=["finite", "inf", "nan"])
def test_ema_step_on_cuda_student_and_host_teacher(grad_norm):
    student, teacher = _modules(0), _modules(1)
    t0 = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    actor = _RecordingEngine(student, grad_norm=grad_norm)
    worker = _worker(actor, _RecordingEngine(teacher))
    SRPOActorRolloutRefWorker._install_engine_hooks(worker)
    with VirtualCuda():
        student.to(CUDA)  # the student shards live on the accelerator; the teacher is offloaded to host
        actor.optimizer_step()
        out = SRPOActorRolloutRefWorker.srpo_ema_update(worker)
    rate = 0.05 if math.isfinite(grad_norm) else 0.0
    for name, p in teacher.named_parameters():
        expected = (1 - rate) * t0[name] + rate * dict(student.named_parameters())[name].detach()
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)
    assert out["srpo/ema_skipped"] == float(not math.isfinite(grad_norm))


def test_ema_step_with_both_shards_on_cuda_reads_one_number_back():
    # Teacher shards kept on the accelerator (offload off): the step and the gap metric stay there;
    # the only device-to-host read is the gap itself (before: one per parameter, plus copies).
    student, teacher = _modules(0), _modules(1)
    s0 = {n: p.detach().clone() for n, p in student.named_parameters()}
    t0 = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    worker = _worker(_RecordingEngine(student), _RecordingEngine(teacher))
    mode = VirtualCuda()
    with mode:
        student.to(CUDA), teacher.to(CUDA)
        mode.host_reads.clear()
        out = SRPOActorRolloutRefWorker.srpo_ema_update(worker)
        reads = list(mode.host_reads)
        teacher.to("cpu")
    assert reads == ["__float__"]
    new = {n: p.detach() for n, p in teacher.named_parameters()}
    for name in t0:
        torch.testing.assert_close(new[name], 0.95 * t0[name] + 0.05 * s0[name], rtol=0, atol=1e-15)
    gap = math.sqrt(sum(float((s0[n] - new[n]).pow(2).sum()) for n in t0))
    assert out["srpo/teacher_student_l2"] == pytest.approx(gap, rel=1e-12)


def test_optimiser_step_is_refused_while_a_distillation_gradient_is_pending_and_the_next_step_starts_clean():
    actor = _RecordingEngine(_modules(0))
    worker = _worker(actor, _RecordingEngine(_modules(1)))
    SRPOActorRolloutRefWorker._install_engine_hooks(worker)
    half_done = Lend()
    half_done.upstream = torch.zeros(2)  # the token log-prob's backward lent its part; the rest never came
    worker.srpo_lends.add(half_done)
    with pytest.raises(RuntimeError, match="1 SRPO distillation gradient"):
        actor.optimizer_step()
    # The next forward_backward_batch forgets the failed step's lends: no module-global state remains.
    actor.forward_backward_batch(tu.get_tensordict({"responses": nested([torch.zeros(2, dtype=torch.long)])}), None)
    assert float(actor.optimizer_step()) == 1.0

"""The EMA teacher of a LoRA student (`srpo_verl/integration/lora_teacher.py`) on a PEFT model.

Checked against an independent computation: a second PEFT model whose adapter is set to the teacher's
values by name, scored separately; the EMA closed form on the adapter tensors; and the teacher's bytes
against the adapter's size computed from the model dimensions (tiny Qwen3 and a Qwen3-8B-shaped model
built on the meta device).
"""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen3Config

from srpo_verl import core_algos
from srpo_verl.integration.lora_teacher import AdapterTeacher, adapter_parameters
from srpo_verl.lab.ranks import run_ranks

RANK = 8
LORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def qwen3(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, inter=64, vocab=50, tie=True) -> Qwen3Config:
    return Qwen3Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=64,
    )


def lora_model(config: Qwen3Config, rank: int = RANK, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # As verl builds it (transformer_impl._build_lora_module): all linear layers, no bias.
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules="all-linear", bias="none"))


def perturb_adapter(model, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def logits(model, ids):
    return model(input_ids=ids).logits


@pytest.fixture
def student():
    model = lora_model(qwen3())
    perturb_adapter(model, 0.1, seed=1)  # lora_B starts at 0: move it so the adapter changes the output
    return model


def test_teacher_holds_fp32_copies_of_the_adapter_only(student):
    teacher = AdapterTeacher(student)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert set(teacher.state) == trainable  # PEFT trains exactly the lora_ tensors
    for name, p in student.named_parameters():
        if name in teacher.state:
            assert teacher.state[name].dtype == torch.float32
            assert torch.equal(teacher.state[name], p.detach().float())
            assert teacher.state[name].data_ptr() != p.data_ptr()


def test_a_trainable_base_weight_is_refused(student):
    student.base_model.model.model.embed_tokens.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="trainable non-adapter parameters"):
        AdapterTeacher(student)


def test_swap_scores_with_the_teacher_adapter_and_restores_the_student(student):
    teacher = AdapterTeacher(student)
    perturb_adapter(student, 0.1, seed=2)  # the student moves on; the teacher keeps its values
    ids = torch.randint(0, 50, (2, 7))
    # The student has gradients pending (the swap must not touch them).
    logits(student, ids).sum().backward()
    before = {
        n: (p.detach().clone(), p.grad.clone() if p.grad is not None else None) for n, p in student.named_parameters()
    }
    places = {n: (p.device, p.dtype) for n, p in student.named_parameters()}
    # Independent reference: a separate model holding base + the teacher's adapter.
    reference = copy.deepcopy(student)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in teacher.state:
                p.copy_(teacher.state[name])
    student.eval()
    reference.eval()
    with torch.no_grad():
        expected, student_logits = logits(reference, ids), logits(student, ids)
        with teacher.swapped_in():
            assert teacher.active
            got = logits(student, ids)
    assert not teacher.active
    assert torch.equal(got, expected)
    assert not torch.allclose(got, student_logits), "teacher and student adapters agree: the check proves nothing"
    for name, p in student.named_parameters():
        value, grad = before[name]
        assert torch.equal(p.detach(), value), name
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad), name
        assert (p.device, p.dtype) == places[name], name


def test_swap_restores_the_student_on_error(student):
    teacher = AdapterTeacher(student)
    perturb_adapter(student, 0.1, seed=3)
    before = {n: p.detach().clone() for n, p in adapter_parameters(student).items()}
    with pytest.raises(ValueError, match="boom"), teacher.swapped_in():
        raise ValueError("boom")
    for name, p in adapter_parameters(student).items():
        assert torch.equal(p.detach(), before[name])


def test_ema_moves_the_adapter_teacher_by_the_closed_form_and_never_the_base(student):
    teacher = AdapterTeacher(student)
    theta0 = {n: t.clone() for n, t in teacher.state.items()}
    base = {n: p.detach().clone() for n, p in student.named_parameters() if n not in teacher.state}
    perturb_adapter(student, 0.1, seed=4)
    theta1 = {n: p.detach().double() for n, p in adapter_parameters(student).items()}
    gap = core_algos.ema_teacher_update_([(t, s) for _, t, s in teacher.pairs()], 0.05)
    sq = 0.0
    for name, t in teacher.state.items():
        expected = 0.95 * theta0[name].double() + 0.05 * theta1[name]
        torch.testing.assert_close(t.double(), expected, rtol=0, atol=1e-7)
        sq += float(((theta1[name] - t.double()) ** 2).sum())
    assert float(gap) == pytest.approx(sq**0.5, rel=1e-5)
    for name, p in student.named_parameters():
        if name in base:
            assert torch.equal(p.detach(), base[name]), name


def adapter_numel(config: Qwen3Config, rank: int) -> int:
    """LoRA on the seven linear layers of each decoder layer: r * (in + out) per layer."""
    h, i = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    return config.num_hidden_layers * rank * sum(a + b for a, b in shapes)


def full_numel(config: Qwen3Config) -> int:
    """All parameters of a Qwen3 computed from the dimensions (the full-parameter teacher's count)."""
    h, i, d = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + 2 * d  # projections, 2 norms, q/k norms
    embed = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return config.num_hidden_layers * layer + embed + h


QWEN3_8B = dict(
    hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, inter=12288, vocab=151936, tie=False
)  # Qwen/Qwen3-8B's config.json
# srpo_verl/demo/tiny_model.py's defaults (build_config)
TINY = dict(hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, inter=512, vocab=100, tie=True)


@pytest.mark.parametrize(
    "shape, rank", [(TINY, 8), (QWEN3_8B, 8), (QWEN3_8B, 64)], ids=["tiny_r8", "qwen3_8b_r8", "qwen3_8b_r64"]
)
def test_teacher_memory_is_the_adapter_in_fp32(shape, rank, capsys):
    config = qwen3(**shape)
    with torch.device("meta"):  # the 8B shape is never materialised
        student = lora_model(config, rank)
    teacher = AdapterTeacher(student)
    lora_bytes = teacher.nbytes()
    full_bytes = 4 * full_numel(config)  # the full-parameter EMA teacher: every weight in fp32
    base_numel = sum(p.numel() for n, p in student.named_parameters() if n not in teacher.state)
    assert base_numel == full_numel(config)
    assert lora_bytes == 4 * adapter_numel(config, rank)
    with capsys.disabled():
        print(
            f"\n[teacher memory] {shape['hidden']}h x {shape['layers']}L, rank {rank}: LoRA teacher "
            f"{lora_bytes:,} B, full-parameter teacher {full_bytes:,} B ({full_bytes / lora_bytes:.0f}x)"
        )
    assert lora_bytes < full_bytes / 10


FSDP2_ROOT = """
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from srpo_verl.integration.lora_teacher import _reshard
dist.init_process_group("gloo")
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
fully_shard(model[0])
fully_shard(model)
with torch.no_grad():
    model(torch.ones(1, 4))
print("gathered after forward:", not isinstance(model[1].bias, DTensor))
_reshard(model)
print("sharded after _reshard:", isinstance(model[1].bias, DTensor))
dist.destroy_process_group()
"""


def test_reshard_frees_the_fsdp2_roots_gathered_parameters(tmp_path):
    """FSDP2 keeps a root's parameters gathered after a no-grad forward; the swap must reshard them so
    the next forward gathers the swapped-in shards (a stale gathered copy would score as the student)."""
    script = tmp_path / "fsdp2_root.py"
    script.write_text(FSDP2_ROOT)
    (log,) = run_ranks([str(script)], world=1, timeout=120)
    assert "gathered after forward: True" in log
    assert "sharded after _reshard: True" in log

"""The teacher pass's micro-batches under dynamic batch sizes are budgeted by teacher tokens.

A teacher sequence is [teacher prompt (with the demonstration) | response]: here the demonstration
is 3x the response, so a split by the student's lengths would put several times the per-GPU token
budget into one teacher forward.
"""

from types import SimpleNamespace

import pytest
import torch
from verl.utils import tensordict_utils as tu

from srpo_verl.integration import wire
from srpo_verl.integration.worker import SRPOActorRolloutRefWorker, teacher_micro_batches


def nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def teacher_rows(n=12, prompt=20, response=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [response - 7 * (i % 3) for i in range(n)]  # responses of 30, 23, 16 tokens
    demo = [3 * r for r in lens]  # the demonstration: 3x the response
    data = tu.get_tensordict(
        {
            "input_ids": nested([torch.randint(0, 50, (prompt + d + r,), generator=g) for d, r in zip(demo, lens)]),
            "responses": nested([torch.randint(0, 50, (r,), generator=g) for r in lens]),
            wire.ROW: torch.arange(n),
        }
    )
    student_lens = [prompt + r for r in lens]
    return data, student_lens


@pytest.mark.parametrize("budget", [150, 260, 400])
def test_dynamic_micro_batches_hold_the_token_budget_in_teacher_tokens(budget):
    data, student_lens = teacher_rows()
    tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=budget)
    parts = teacher_micro_batches(data, use_dynamic_bsz=True, micro_batch_size=None)
    teacher_tokens = [int(p["input_ids"].offsets()[-1]) for p in parts]
    assert max(teacher_tokens) <= budget  # the budget bounds what the teacher forward holds
    rows = sorted(r for p in parts for r in p[wire.ROW].tolist())
    assert rows == list(range(12))  # every row once
    # Before, the teacher ran inside the student's micro-batches, which verl balances by the student's
    # lengths: with the same budget, those micro-batches held more teacher tokens than the budget.
    student = tu.get_tensordict(
        {"input_ids": nested([torch.zeros(n, dtype=torch.long) for n in student_lens]), wire.ROW: torch.arange(12)}
    )
    tu.assign_non_tensor(student, use_dynamic_bsz=True, max_token_len_per_gpu=budget)
    seq = data["input_ids"].offsets().diff().tolist()
    old = teacher_micro_batches(student, use_dynamic_bsz=True, micro_batch_size=None)
    assert max(sum(seq[r] for r in p[wire.ROW].tolist()) for p in old) > budget


def test_fixed_micro_batches_keep_the_remainder_apart():
    data, _ = teacher_rows(n=7)
    parts = teacher_micro_batches(data, use_dynamic_bsz=False, micro_batch_size=3)
    assert [p[wire.ROW].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_teacher_sequence_over_the_budget_is_refused_naming_the_key():
    data, _ = teacher_rows(n=2)
    data = tu.get_tensordict(
        {
            wire.TEACHER_INPUT_IDS.name: data["input_ids"],
            "responses": data["responses"],
            wire.TOPK_IDS.name: nested([torch.zeros(len(r), 4, dtype=torch.int32) for r in data["responses"].unbind()]),
        }
    )
    tu.assign_non_tensor(data, temperature=1.0)
    longest = int(data[wire.TEACHER_INPUT_IDS.name].offsets().diff().max())
    worker = SimpleNamespace(
        srpo=SimpleNamespace(teacher="ema"),
        actor=SimpleNamespace(
            engine_config=SimpleNamespace(
                use_dynamic_bsz=True, infer_max_token_len_per_gpu=longest - 1, infer_micro_batch_size_per_gpu=None
            ),
            engine=SimpleNamespace(get_data_parallel_group=lambda: None),
        ),
    )
    with pytest.raises(ValueError, match=f"{longest} tokens .*log_prob_max_token_len_per_gpu={longest - 1}"):
        SRPOActorRolloutRefWorker.compute_srpo_teacher(worker, data)


_TWO_RANKS = r"""
import os, sys
from types import SimpleNamespace
import torch, torch.distributed as dist
from verl.utils import tensordict_utils as tu
from srpo_verl.integration import wire
from srpo_verl.integration import worker as w
dist.init_process_group("gloo")
w.get_device_id = lambda: "cpu"
rank = dist.get_rank()
length = 40 if rank == 0 else 10  # only rank 0 holds a sequence over the budget
nested = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)
data = tu.get_tensordict({
    wire.TEACHER_INPUT_IDS.name: nested([torch.zeros(length, dtype=torch.long)]),
    "responses": nested([torch.zeros(4, dtype=torch.long)]),
    wire.TOPK_IDS.name: nested([torch.zeros(4, 2, dtype=torch.int32)]),
})
tu.assign_non_tensor(data, temperature=1.0)
worker = SimpleNamespace(srpo=SimpleNamespace(student_mix=None), actor=SimpleNamespace(
    engine_config=SimpleNamespace(
        use_dynamic_bsz=True, infer_max_token_len_per_gpu=20, infer_micro_batch_size_per_gpu=None
    ),
    engine=SimpleNamespace(get_data_parallel_group=lambda: dist.group.WORLD)))
try:
    w.SRPOActorRolloutRefWorker.compute_srpo_teacher(worker, data)
    print("NO ERROR")
except ValueError as err:
    print("REFUSED", "40 tokens" in str(err))
"""


def test_a_sequence_over_the_budget_on_one_rank_is_refused_on_every_rank(tmp_path):
    # One rank raising alone would leave the other waiting in verl's next collective: both refuse.
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _TWO_RANKS], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("REFUSED True" in out for out in outs), outs


class _TinyLM(torch.nn.Module):
    """A causal LM's output contract: logits at `logits_to_keep` (an index tensor), or, like the
    forwards verl patches for qwen2/2.5/3-VL, glm4v and qwen3.5, at every position regardless."""

    def __init__(self, honours_logits_to_keep: bool):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50)
        self.honours = honours_logits_to_keep
        self.config = SimpleNamespace(model_type="qwen2_vl" if not honours_logits_to_keep else "qwen3")

    def forward(self, input_ids, position_ids=None, use_cache=False, logits_to_keep=0):
        hidden = self.embed(input_ids)  # (1, nnz, 8)
        if self.honours and isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        return SimpleNamespace(logits=self.head(hidden))


def test_teacher_logits_at_the_response_positions_whether_or_not_the_forward_keeps_only_them(caplog):
    from srpo_verl.integration import teacher_forward

    ids = torch.randint(0, 50, (1, 17))
    positions = torch.tensor([9, 10, 11, 15])
    expected = teacher_forward.response_logits(_TinyLM(True), {"input_ids": ids}, positions)
    assert expected.shape == (4, 50)
    with caplog.at_level("WARNING"):
        # Before: the (17, 50) logits of every position went on to the scoring (a size mismatch there).
        got = teacher_forward.response_logits(_TinyLM(False), {"input_ids": ids}, positions)
    torch.testing.assert_close(got, expected)
    assert "qwen2_vl" in caplog.text and "logits_to_keep" in caplog.text

"""A teacher that would be the live student is refused, by configuration and at run time (docs/spec.md §4).

The configuration route is covered in test_config_composition (ema_rate=1.0, teacher=student);
here the run-time guard: an EMA teacher whose parameters share storage with the student's is
refused before any EMA step or teacher pass, and a real copy is accepted.
"""

import copy

import pytest
import torch

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration.worker import SRPOActorRolloutRefWorker


class _Engine:
    def __init__(self, module):
        self.module = module


class _Holder:
    def __init__(self, module):
        self.engine = _Engine(module)


def worker_with(student: torch.nn.Module, teacher: torch.nn.Module) -> SRPOActorRolloutRefWorker:
    worker = SRPOActorRolloutRefWorker.__new__(SRPOActorRolloutRefWorker)  # no Ray, no process group
    worker.actor, worker.teacher = _Holder(student), _Holder(teacher)
    worker.srpo = SRPOConfig()
    return worker


def test_teacher_sharing_the_students_tensors_is_refused():
    student = torch.nn.Linear(4, 3)
    worker = worker_with(student, student)
    with pytest.raises(RuntimeError, match="live student"):
        worker.srpo_ema_update()
    with pytest.raises(RuntimeError, match="live student"):
        worker.srpo_teacher_state()


def test_teacher_sharing_one_tensor_is_refused():
    student = torch.nn.Linear(4, 3)
    teacher = copy.deepcopy(student)
    teacher.bias = student.bias  # one shared tensor is enough to make it partly live
    with pytest.raises(RuntimeError, match="bias"):
        worker_with(student, teacher).srpo_ema_update()


def test_a_real_copy_is_updated_by_the_ema_closed_form():
    student = torch.nn.Linear(4, 3)
    teacher = copy.deepcopy(student)
    theta0 = {k: v.detach().clone() for k, v in teacher.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    metrics = worker_with(student, teacher).srpo_ema_update()
    for name, p in teacher.named_parameters():
        expected = 0.95 * theta0[name] + 0.05 * dict(student.named_parameters())[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    assert metrics["srpo/teacher_student_l2"] == pytest.approx(0.95 * (3 * 4 + 3) ** 0.5, rel=1e-5)


@pytest.mark.parametrize("override,key", [({"ema_rate": 1.0}, "ema_rate"), ({"teacher": "student"}, "teacher")])
def test_config_that_makes_the_teacher_the_student_names_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        SRPOConfig(**override)


def test_empty_shards_are_not_taken_for_the_live_student():
    # FSDP leaves trailing ranks an empty shard of a small parameter (Qwen3-8B's 128-wide q_norm at 24
    # GPUs and more); every empty tensor has data_ptr 0, on the teacher and the student alike.
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    student.weight, teacher.weight = torch.nn.Parameter(torch.empty(0, 4)), torch.nn.Parameter(torch.empty(0, 4))
    assert student.weight.data_ptr() == teacher.weight.data_ptr() == 0
    bias0 = teacher.bias.detach().clone()
    worker_with(student, teacher).srpo_ema_update()  # refused with "live student" before the fix
    torch.testing.assert_close(teacher.bias.detach(), 0.95 * bias0 + 0.05 * student.bias.detach())
    # The same empty parameter object on both sides is still the live student.
    teacher.weight = student.weight
    with pytest.raises(RuntimeError, match="weight"):
        worker_with(student, teacher).srpo_ema_update()

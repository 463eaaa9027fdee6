"""Distillation keeps what compression made discrete (sparse zeros, shared codes), trains only what it is told,
works across architectures, and shares one teacher's outputs among several students."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import assert_state_unchanged, state_snapshot

import slimgraph as sg
from slimgraph.distill import TeacherOutputs, kd_loss
from slimgraph.errors import InputError
from slimgraph.share import last_report


class CNN(nn.Module):
    def __init__(self, width: int, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def _images(n_batches=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 12, 12, generator=g),) for _ in range(n_batches)]


def _gap(student, teacher, data):
    with torch.no_grad():
        return sum(kd_loss(student(*b), teacher(*b), "kl", 2.0).item() for b in data) / len(data)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval(), (torch.randn(4, 16),)


def test_sparse_student_keeps_its_zeros_exactly():
    teacher, x = _mlp()
    student = sg.sparsify(teacher, x, sparsity=0.7, scope="local", lower="off")
    snap = state_snapshot(student)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(32, 16, generator=g),) for _ in range(4)]
    trained = sg.distill(student, teacher, data, steps=40, lr=1e-2, output_loss="mse", progress=False)
    assert_state_unchanged(student, snap)
    assert sorted(trained.distill_history.masked) == ["0.weight", "2.weight"]
    for name in ("0.weight", "2.weight"):
        before, after = student.get_parameter(name), trained.get_parameter(name)
        assert torch.equal(after == 0, before == 0), f"{name}: the sparsity pattern moved"
        assert not torch.signbit(after[after == 0]).any()  # +0.0: stays sparse in the entropy coder
        assert not torch.equal(after, before)  # the survivors did train
    assert _gap(trained, teacher, data) < _gap(student, teacher, data)


def test_without_the_record_zeros_would_move():
    # the control: same model without graph_info().sparsity, so the test above can fail
    teacher, x = _mlp()
    student = sg.sparsify(teacher, x, sparsity=0.7, scope="local", lower="off")
    sg.graph_info(student).sparsity.clear()
    data = [(torch.randn(32, 16),) for _ in range(4)]
    trained = sg.distill(student, teacher, data, steps=5, lr=1e-2, output_loss="mse", progress=False)
    assert not torch.equal(trained.get_parameter("0.weight") == 0, student.get_parameter("0.weight") == 0)


def test_shared_student_trains_only_what_is_selected():
    teacher, x = _mlp()
    shared = sg.share_weights(teacher, x, bits=2)
    data = [(torch.randn(32, 16),) for _ in range(4)]
    trained = sg.distill(shared, teacher, data, steps=20, lr=1e-2, output_loss="mse", progress=False,
                         trainable="*_codebook")
    assert all(name.endswith("_codebook") for name in trained.distill_history.trained)
    for row in last_report(shared).layers:
        assert torch.equal(trained.get_buffer(row.codes), shared.get_buffer(row.codes))  # integer codes never train
        assert not torch.equal(trained.get_parameter(row.codebook), shared.get_parameter(row.codebook))
    assert torch.equal(trained.get_parameter("0.bias"), shared.get_parameter("0.bias"))
    with pytest.raises(InputError, match="matches no floating-point parameter"):
        sg.distill(shared, teacher, data, steps=1, progress=False, trainable=["nope*"])


def test_small_cnn_learns_from_a_bigger_one():
    torch.manual_seed(0)
    teacher, student = CNN(16).eval(), CNN(4).eval()
    data = _images()
    trained = sg.distill(student, teacher, data, steps=120, lr=5e-3, temperature=2.0, progress=False)
    assert _gap(trained, teacher, data) < 0.5 * _gap(student, teacher, data)
    assert _agreement(trained, teacher, data) > _agreement(student, teacher, data) + 0.15


def _agreement(student, teacher, data) -> float:
    with torch.no_grad():
        return sum((student(*b).argmax(1) == teacher(*b).argmax(1)).float().mean().item() for b in data) / len(data)


def test_one_teacher_several_students_share_teacher_outputs():
    torch.manual_seed(0)
    teacher = CNN(16).eval()
    students = [CNN(4).eval(), CNN(8).eval()]
    data = _images(n_batches=4)
    calls = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    trained = sg.distill_many(students, teacher, data, steps=40, lr=5e-3, progress=False)
    hook.remove()
    assert len(calls) == len(data)  # 2 students x 40 steps, but the teacher ran once per batch
    for before, after in zip(students, trained):
        assert _gap(after, teacher, data) < _gap(before, teacher, data)
    cache = TeacherOutputs(teacher)
    with pytest.raises(InputError, match="another teacher"):
        sg.distill(students[0], CNN(16), data, steps=1, progress=False, teacher_outputs=cache)
    with pytest.raises(InputError, match="at least one student"):
        sg.distill_many([], teacher, data)

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_state_unchanged, state_snapshot

import slimgraph as sg
from slimgraph.distill import kd_loss
from slimgraph.errors import InputError
from slimgraph.testing.models import MLP


def _setup():
    torch.manual_seed(0)
    teacher = MLP(d_in=16, hidden=64, d_out=8).eval()
    x = torch.randn(4, 16)
    student = sg.prune(teacher, (x,), ratio=0.5, round_to=1, check=False)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(32, 16, generator=g) for _ in range(8)]
    return teacher, student, data


def _gap(student, teacher, data, kind="mse"):
    with torch.no_grad():
        return sum(kd_loss(student(x), teacher(x), kind, 2.0).item() for x in data) / len(data)


@pytest.mark.parametrize("output_loss", ["kl", "mse", "cosine"])
def test_distillation_closes_the_gap_to_the_teacher(output_loss):
    teacher, student, data = _setup()
    t_snap, s_snap = state_snapshot(teacher), state_snapshot(student)
    trained = sg.distill(student, teacher, [(x,) for x in data], steps=150, output_loss=output_loss, lr=3e-3,
                         progress=False)
    assert _gap(trained, teacher, data, output_loss) < 0.5 * _gap(student, teacher, data, output_loss)
    history = trained.distill_history
    assert len(history.losses) == 150 and history.losses[-1] < history.losses[0]
    assert_state_unchanged(teacher, t_snap)  # neither input is modified in place
    assert_state_unchanged(student, s_snap)


def test_labels_mix_the_task_loss_in():
    teacher, student, data = _setup()
    labels = [teacher(x).argmax(-1) for x in data]
    batches = [{"args": (x,), "labels": y} for x, y in zip(data, labels)]
    trained = sg.distill(student, teacher, batches, steps=40, temperature=4.0, alpha=0.3, lr=3e-3, progress=False)
    h = trained.distill_history
    assert len(h.task_losses) == 40 and h.task_losses[-1] < h.task_losses[0]


def test_hidden_state_matching_on_same_shaped_outputs():
    class TwoOut(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.fc1 = nn.Linear(8, hidden)
            self.fc2 = nn.Linear(hidden, 8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc2(F.relu(self.fc1(x)))
            return self.head(h), h  # logits first, then a hidden state of the same shape in both models

    torch.manual_seed(0)
    teacher, student = TwoOut(32).eval(), TwoOut(8).eval()
    data = [(torch.randn(16, 8),) for _ in range(4)]
    trained = sg.distill(student, teacher, data, steps=100, hidden_weight=1.0, lr=5e-3, progress=False)
    x = data[0][0]
    before = F.mse_loss(student(x)[1], teacher(x)[1]).item()
    after = F.mse_loss(trained(x)[1], teacher(x)[1]).item()
    assert after < 0.5 * before


@pytest.mark.parametrize("kwargs, match", [
    ({"output_loss": "l7"}, "unknown output_loss"),
    ({"steps": 0}, "steps"),
    ({"temperature": 0.0}, "temperature"),
    ({"alpha": 1.5}, "alpha"),
])
def test_bad_arguments(kwargs, match):
    teacher, student, data = _setup()
    with pytest.raises(InputError, match=match):
        sg.distill(student, teacher, [(x,) for x in data], progress=False, **kwargs)


def test_empty_and_malformed_batches():
    teacher, student, _ = _setup()
    with pytest.raises(InputError, match="at least one batch"):
        sg.distill(student, teacher, [], progress=False)
    with pytest.raises(InputError, match="a batch must be"):
        sg.distill(student, teacher, [object()], progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_data_parallel_with_gloo_on_two_processes(tmp_path):
    script = Path(__file__).parent / "scripts" / "ddp_distill.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # DDP kept replicas identical
    assert all(r["after"] < r["before"] for r in ranks)


def test_pruned_graph_students_match_the_teachers_hidden_states():
    from slimgraph.testing import make

    model, args, kwargs = make("bert")
    student = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs, check=False)
    batches = [{"args": args, "kwargs": kwargs}]
    trained = sg.distill(student, model, batches, steps=30, output_loss="mse", hidden_weight=1.0, lr=1e-3,
                         progress=False)
    names = trained.distill_history.hidden_states
    assert names and all("layer_norm" in n for n in names)  # one per block plus the embedding LayerNorm
    with torch.no_grad():
        before = F.mse_loss(student(*args, **kwargs).last_hidden_state, model(*args, **kwargs).last_hidden_state)
        after = F.mse_loss(trained(*args, **kwargs).last_hidden_state, model(*args, **kwargs).last_hidden_state)
    assert after < before
    assert isinstance(trained, torch.fx.GraphModule) and "slimgraph" in trained.meta  # still a slimgraph graph
    assert trained.graph is not student.graph  # a trained copy

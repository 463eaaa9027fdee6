"""Run by tests/test_distill.py under torchrun: 2 CPU processes, gloo backend."""

import json
import os
import sys

import torch
import torch.distributed as dist

import slimgraph as sg
from slimgraph.testing.models import MLP


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    teacher = MLP(d_in=16, hidden=64, d_out=8).eval()
    x = torch.randn(4, 16)
    student = sg.prune(teacher, (x,), ratio=0.5, round_to=1, check=False)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 16, generator=g),) for _ in range(8)]
    before = torch.nn.functional.mse_loss(student(batches[0][0]), teacher(batches[0][0])).item()
    trained = sg.distill(student, teacher, batches, steps=60, output_loss="mse", lr=3e-3, progress=False)
    after = torch.nn.functional.mse_loss(trained(batches[0][0]), teacher(batches[0][0])).item()
    checksum = sum(p.double().sum().item() for p in trained.parameters())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world": dist.get_world_size(), "before": before, "after": after, "checksum": checksum}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

"""Small models and helpers shared by the sparsity tests."""

import torch
import torch.nn as nn


class MLP(nn.Module):
    """Three linears of different widths (one with a prime input size) and a tied-free head."""

    def __init__(self, d_in=64, hidden=96, d_out=10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    """conv2d (default and padding="same"), a grouped conv, and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3, padding="same")
        self.dw = nn.Conv2d(16, 16, 3, groups=4, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.dw(x))
        return self.head(x.mean(dim=(2, 3)))


def tensor(gm, path: str) -> torch.Tensor:
    obj = gm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def zero_count(t: torch.Tensor) -> int:
    return int((t == 0).sum())

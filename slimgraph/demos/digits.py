"""A small CNN trained on scikit-learn's bundled 8x8 handwritten digits, cached after the first run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_VERSION = 1


class DigitsCNN(nn.Module):
    """conv-bn-relu x2 -> pool -> conv-bn-relu -> flatten -> linear -> linear (8x8 grey input)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def digits_data(seed: int = 0):
    """(x_train, y_train, x_test, y_test): images scaled to [0, 1], shape [N, 1, 8, 8]; 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / len(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * ((len(x) + 63) // 64))
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def cache_dir() -> Path:
    root = os.environ.get("SLIMGRAPH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "slimgraph")
    return Path(root)


def trained_digits_cnn() -> DigitsCNN:
    """The trained teacher: loaded from the cache, or trained (a few seconds on CPU) and cached."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"digits_cnn-v{CACHE_VERSION}.safetensors"
    model = DigitsCNN()
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception as exc:  # noqa: BLE001 - corrupt or stale cache: retrain below, and say so
            print(f"[slimgraph] cached digits CNN {path} unreadable ({type(exc).__name__}); retraining it",
                  file=sys.stderr, flush=True)
    x_train, y_train, _, _ = digits_data()
    train(model, x_train, y_train)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return model.eval()


def load_digits_cnn():
    from . import Demo

    model = trained_digits_cnn()
    x_train, y_train, x_test, y_test = digits_data()
    acc = accuracy(model, x_test, y_test)
    train = [{"args": (x_train[i:i + 64],), "labels": y_train[i:i + 64]} for i in range(0, len(x_train), 64)]
    def evaluate(candidate):
        return {"accuracy": accuracy(candidate, x_test, y_test)}

    evaluate.description = f"top-1 accuracy in % on the {len(x_test)} held-out test images of sklearn digits"
    return Demo("digits-cnn", model, (x_test[:16],), {},
                description=f"CNN on sklearn digits (8x8), test accuracy {acc:.1f}%",
                evaluate=evaluate,
                train_batches=train, calib_batches=[b["args"] for b in train[:8]], distill=DISTILL)


# Hinton KD plus the label loss; a small CNN recovers within a few hundred steps (bench/prune_digits.py).
DISTILL = {"steps": 600, "lr": 2e-3, "temperature": 4.0, "alpha": 0.7, "output_loss": "kl"}

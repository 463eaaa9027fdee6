"""A zoo of small models covering the architecture families slimgraph must handle.

Each entry builds ``(model, args, kwargs)`` deterministically from a seed. transformers models come
from small configs of the real classes (BERT, GPT-2, Llama with grouped-query attention, ViT, ConvNeXt,
ResNet, MobileNetV2, Swin); the hand-written CNNs cover the graph shapes pruning and folding must get
right (residual adds, concat, depthwise/group convs, channel shuffle, flatten -> linear, transposed conv).
BatchNorm statistics are randomized so folding is exercised on non-trivial values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], tuple[nn.Module, tuple, dict]]
    family: str  # "transformers" | "cnn" | "mlp"
    has_bn: bool = False


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model.eval()


# ------------------------------------------------------------------------------- hand-written models


class MLP(nn.Module):
    def __init__(self, d_in=32, hidden=64, d_out=10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


class ResidualCNN(nn.Module):
    """Two residual stages with BN, a strided downsample shortcut, global pool and a classifier."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.b1 = self._block(width, width)
        self.b2 = self._block(width, 2 * width, stride=2)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.fc = nn.Linear(2 * width, classes)

    @staticmethod
    def _block(cin, cout, stride=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = F.relu(self.down(x) + self.b2(x))
        return self.fc(x.mean((2, 3)))


class ConcatCNN(nn.Module):
    """Inception-style branches joined by concat, then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU())
        self.mix = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        return self.head(F.relu(self.mix(y)).amax((2, 3)))


class MobileBlockCNN(nn.Module):
    """Inverted residual with a depthwise conv (MobileNetV2 style), ReLU6, and a grouped conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.group = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(self.group(x).mean((2, 3)))


class ShuffleCNN(nn.Module):
    """ShuffleNet-style grouped 1x1 convs with a channel shuffle (view -> transpose -> view)."""

    def __init__(self, groups=4):
        super().__init__()
        self.groups = groups
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.g1 = nn.Sequential(nn.Conv2d(16, 16, 1, groups=groups, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.g2 = nn.Sequential(nn.Conv2d(16, 16, 1, groups=groups, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def shuffle(self, x):
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, c, h, w)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.g2(self.dw(self.shuffle(self.g1(x))))
        return self.fc(F.relu(x + y).mean((2, 3)))


class FlattenCNN(nn.Module):
    """conv -> pool -> flatten -> linear: channel pruning must map channels to h*w feature blocks."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        x = F.relu(self.bn2(self.c2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class TransposedConvNet(nn.Module):
    """Encoder-decoder with a transposed conv (grouped) and BN after it."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.up(self.enc(x)))))


def _cnn(cls, shape=(2, 3, 16, 16), **kw):
    def build():
        torch.manual_seed(0)
        return _randomize_bn(cls(**kw)), (torch.randn(*shape),), {}

    return build


def _mlp():
    torch.manual_seed(0)
    return MLP().eval(), (torch.randn(4, 32),), {}


# --------------------------------------------------------------------------------- transformers


def _tokens(batch=2, seq=16, vocab=100, mask=True):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    kwargs = {"attention_mask": torch.ones(batch, seq, dtype=torch.long)} if mask else {}
    return (ids,), kwargs


def _bert():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    args, kwargs = _tokens()
    return transformers.BertModel(cfg).eval(), args, kwargs


def _gpt2():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False,
                                  bos_token_id=0, eos_token_id=0)
    args, kwargs = _tokens()
    return transformers.GPT2Model(cfg).eval(), args, kwargs


def _llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    args, kwargs = _tokens()
    return transformers.LlamaModel(cfg).eval(), args, kwargs


def _vit():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
    return transformers.ViTForImageClassification(cfg).eval(), (torch.randn(2, 3, 32, 32),), {}


def _convnext():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    return transformers.ConvNextForImageClassification(cfg).eval(), (torch.randn(2, 3, 32, 32),), {}


def _resnet():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck",
                                    num_labels=10)
    model = transformers.ResNetForImageClassification(cfg)
    return _randomize_bn(model), (torch.randn(2, 3, 32, 32),), {}


def _mobilenet_v2():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=10)
    return _randomize_bn(transformers.MobileNetV2ForImageClassification(cfg)), (torch.randn(2, 3, 32, 32),), {}


def _swin():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                  window_size=4, num_labels=10)
    return transformers.SwinForImageClassification(cfg).eval(), (torch.randn(2, 3, 32, 32),), {}


ZOO: dict[str, ModelCase] = {c.name: c for c in [
    ModelCase("mlp", _mlp, "mlp"),
    ModelCase("residual_cnn", _cnn(ResidualCNN), "cnn", has_bn=True),
    ModelCase("concat_cnn", _cnn(ConcatCNN), "cnn", has_bn=True),
    ModelCase("mobile_block_cnn", _cnn(MobileBlockCNN), "cnn", has_bn=True),
    ModelCase("shuffle_cnn", _cnn(ShuffleCNN), "cnn", has_bn=True),
    ModelCase("flatten_cnn", _cnn(FlattenCNN, shape=(2, 1, 8, 8)), "cnn", has_bn=True),
    ModelCase("transposed_conv", _cnn(TransposedConvNet), "cnn", has_bn=True),
    ModelCase("bert", _bert, "transformers"),
    ModelCase("gpt2", _gpt2, "transformers"),
    ModelCase("llama_gqa", _llama, "transformers"),
    ModelCase("vit", _vit, "transformers"),
    ModelCase("convnext", _convnext, "transformers"),
    ModelCase("resnet", _resnet, "transformers", has_bn=True),
    ModelCase("mobilenet_v2", _mobilenet_v2, "transformers", has_bn=True),
    ModelCase("swin", _swin, "transformers"),
]}


def make(name: str) -> tuple[nn.Module, tuple, dict]:
    """Build zoo model ``name``: ``(model, args, kwargs)``."""
    return ZOO[name].build()

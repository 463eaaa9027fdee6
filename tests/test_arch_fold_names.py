"""fold-constants keeps a weight's own name when it folds a transpose (GPT-2's Conv1D ``x @ W`` becomes
``linear(x, W.t())``): reports and the quantized graph then name the layer (``proj_int8``), not
``_folded.transpose_3_int8``."""

from __future__ import annotations

import torch
import torch.nn as nn
from helpers import assert_close_outputs

import slimgraph as sg
from slimgraph.passes.manager import PassManager

torch.manual_seed(0)


class XWt(nn.Module):
    """``x @ W`` twice (W stored [in, out]): one weight read only through that product, one also read directly."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(8, 16))
        self.tied = nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        h = torch.relu(x @ self.proj)  # [.., 16]
        return h @ self.tied + (h * self.tied.sum(1)).sum(-1, keepdim=True)  # tied also read directly


def _tensors(gm):
    return dict(gm.named_parameters()) | dict(gm.named_buffers())


def test_folded_transpose_keeps_the_weight_name_and_the_tied_one_stays():
    model = XWt().eval()
    x = torch.randn(2, 5, 8)
    gm = sg.capture(model, (x,))
    result = PassManager("fold-constants", check_numerics=True).run(gm)
    folded = result.gm
    names = _tensors(folded)
    assert "proj" in names and tuple(names["proj"].shape) == (16, 8), sorted(names)  # W.T under W's name
    assert isinstance(names["proj"], nn.Parameter)  # the kind is kept
    # tied is read twice (its transpose and a row sum): neither fold may take its name, both get fresh ones
    assert all(t.numel() == 16 * 8 for n, t in names.items() if "tied" in n), sorted(names)
    assert any(n.startswith("_folded") and t.shape == (16,) for n, t in names.items()), sorted(names)
    assert_close_outputs(folded(x), model(x), rel=1e-6)
    x2 = torch.randn(3, 7, 8)
    assert_close_outputs(folded(x2), model(x2), rel=1e-6)


def test_quantized_names_follow_the_weight():
    model = XWt().eval()
    x = torch.randn(2, 5, 8)
    q = sg.quantize(model, (x,), scheme="w8a8-dynamic")
    ints = [n for n, t in _tensors(q).items() if t.dtype == torch.int8]
    assert any(n.startswith("proj") for n in ints), ints
    assert not any("transpose" in n for n in ints), ints

"""Observers pick sensible clipping ranges; SmoothQuant is an exact float rewrite; calibration errors name the
node or batch at fault."""

import pytest
import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.errors import InputError
from slimgraph.quant import quantize
from slimgraph.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver, make_observer
from slimgraph.testing import make


def test_minmax_tracks_absmax_over_batches():
    obs = MinMaxObserver()
    obs.update(torch.tensor([0.5, -2.0]))
    obs.update(torch.tensor([1.0, 3.0]))
    assert obs.threshold() == 3.0 and obs.batches == 2


def test_percentile_ignores_rare_outliers_and_histogram_widening_keeps_counts():
    obs = PercentileObserver(percentile=99.0)
    g = torch.Generator().manual_seed(0)
    obs.update(torch.rand(10000, generator=g))  # range [0, 1]
    obs.update(torch.tensor([50.0]))  # one outlier widens the histogram 64x
    assert obs.hist.sum().item() == 10001
    assert obs.absmax == 50.0
    assert 0.9 <= obs.threshold() <= 1.2  # the 99th percentile of the bulk, not the outlier


def test_mse_clips_a_long_tail_but_not_a_uniform_range():
    g = torch.Generator().manual_seed(0)
    uniform = MSEObserver()
    uniform.update(torch.rand(100000, generator=g) * 2 - 1)
    assert uniform.threshold() > 0.95
    tail = MSEObserver()
    tail.update(torch.cat([torch.randn(100000, generator=g), torch.tensor([60.0])]))
    # Rounding noise of 100k values at a 60/127 step costs more than clipping the single outlier at 60.
    assert 4.0 < tail.threshold() < 0.8 * 60.0


def test_make_observer_rejects_unknown_kinds():
    with pytest.raises(InputError, match="unknown observer"):
        make_observer("entropy")
    with pytest.raises(InputError, match="percentile"):
        make_observer("percentile", percentile=0.0)


class _LNBlock(nn.Module):
    """Post-LN block: the LayerNorm output feeds two linears *and* the residual (BERT's shape)."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.q = nn.Linear(16, 16)
        self.k = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        h = self.ln(x)
        return self.out(torch.relu(self.q(h) + self.k(h))) + h


def test_smoothquant_folds_into_layer_norm_and_keeps_the_residual_exact():
    torch.manual_seed(0)
    model = _LNBlock().eval()
    with torch.no_grad():
        model.ln.weight.mul_(torch.linspace(0.1, 8.0, 16))  # channel outliers, as in real transformers
    x = torch.randn(4, 8, 16)
    plain = quantize(model, (x,), "w8a8-dynamic", smoothquant=None)
    smooth = quantize(model, (x,), "w8a8-dynamic", smoothquant=0.5)
    auto = quantize(model, (x,), "w8a8-dynamic")  # the default smooths activation schemes
    assert sg.quant.last_report(auto).smoothed_layernorms == 1
    assert sg.quant.last_report(quantize(model, (x,), "w8a16")).smoothed_layernorms == 0
    report = sg.quant.last_report(smooth)
    assert report.smoothed_layernorms == 1
    rows = {r.name: r for r in report.layers}
    base = {r.name: r for r in sg.quant.last_report(plain).layers}
    assert rows["q"].sqnr_db > base["q"].sqnr_db  # flatter activations quantize better
    # The residual reads mul(ln', s): the float path through it is unchanged.
    assert any(n.target is torch.ops.aten.mul.Tensor for n in smooth.graph.nodes)
    with torch.no_grad():
        ref = model(x)
    assert torch.nn.functional.cosine_similarity(smooth(x).flatten(), ref.flatten(), dim=0) > 0.999


def test_calibration_errors_name_the_batch_or_node():
    torch.manual_seed(0)
    model = make("mlp")[0]
    x = torch.randn(4, 32)
    with pytest.raises(InputError, match="calibration data is empty"):
        quantize(model, (x,), calib=[])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="batch 1: input 0 contains NaN"):
        quantize(model, (x,), calib=[(x,), (bad,)])

    class Overflow(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 8)
            self.fc2 = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(torch.exp(self.fc1(x) * 1000.0))  # exp overflows to Inf inside the model

    with pytest.raises(InputError, match=r"node 'exp'.*produced Inf"):
        quantize(Overflow().eval(), (torch.randn(2, 8),))

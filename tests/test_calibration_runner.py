"""The one calibration runner (slimgraph.ir.calibration) that quantization, pruning and sparsity all use."""

import pytest
import torch

import slimgraph as sg
from slimgraph.errors import InputError
from slimgraph.ir import calibration
from slimgraph.ir.calibration import Batch, each_output, normalize_batches, run_outputs, run_watched, watch


def _graph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()
    return model, sg.capture(model, (torch.randn(3, 4),))


def _relu(gm):
    return next(n for n in gm.graph.nodes if n.op == "call_function" and "relu" in str(n.target))


def test_watchers_see_every_batch_and_outputs_match_the_model():
    model, gm = _graph()
    batches = normalize_batches([(torch.randn(3, 4),), (torch.randn(3, 4),)], gm)
    seen = []
    outs = run_watched(gm, batches, {_relu(gm): [lambda v: seen.append((v.batch, v.result.clone()))]})
    assert [b for b, _ in seen] == [0, 1]
    for (_, act), batch in zip(seen, batches):
        assert torch.equal(act, torch.relu(model[0](*batch.args)))
    assert all(torch.allclose(o[0], model(*b.args)) for o, b in zip(outs, batches))
    assert [o[0].shape for o in run_outputs(gm, batches)] == [torch.Size([3, 2])] * 2


def test_batches_in_every_accepted_form_and_the_example_by_default():
    _, gm = _graph()
    x = torch.randn(3, 4)
    forms = normalize_batches([x, (x,), [x], ((x,), {}), Batch((x,), {})], gm)
    assert all(b.args[0] is x and b.kwargs == {} for b in forms)
    (default,) = normalize_batches(None, gm)
    assert default.args[0].shape == (3, 4)
    with pytest.raises(InputError, match="got a single Tensor"):
        normalize_batches(x, gm)


def test_a_batch_that_does_not_fit_names_its_index():
    _, gm = _graph()
    batches = normalize_batches([(torch.randn(3, 4),), (torch.randn(3, 5),)], gm)
    with pytest.raises(InputError, match="calibration batch 1 does not run through the model"):
        watch(gm, batches, {_relu(gm): [lambda v: None]})
    with pytest.raises(InputError, match="calibration batch 1 does not run"):
        run_outputs(gm, batches)


def test_grad_only_when_asked_and_only_around_the_forward():
    _, gm = _graph()
    batches = normalize_batches([(torch.randn(3, 4),)], gm)
    (_, out), = each_output(gm, batches, grad=True)
    assert out.requires_grad
    (_, out), = each_output(gm, batches)
    assert not out.requires_grad
    assert torch.is_grad_enabled()  # the caller's mode is left as it was


def test_progress_lines_in_logs(capsys):
    _, gm = _graph()
    batches = normalize_batches([(torch.randn(3, 4),)] * 4, gm)
    watch(gm, batches, {_relu(gm): [lambda v: None]}, desc="prune: test", progress=True)
    assert "prune: test: 4/4 batches (100%)" in capsys.readouterr().err
    watch(gm, batches, {_relu(gm): [lambda v: None]}, desc="prune: test")  # default: a bar on a terminal only
    assert capsys.readouterr().err == ""


def test_quant_and_prune_use_the_shared_runner(monkeypatch):
    model, _ = _graph()
    calls = []
    real = calibration.each_output

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(calibration, "each_output", counting)
    x = torch.randn(3, 4)
    sg.quantize(model, (x,), "w8a8", calib=[(torch.randn(3, 4),)] * 2)
    assert "quant: calibrating" in calls and "quant: sensitivity" in calls
    calls.clear()
    sg.prune(model, (x,), ratio=0.5, importance="act", calib=[(torch.randn(3, 4),)] * 2, round_to=1, reconstruct=True)
    assert "prune: activation statistics" in calls and "prune: reconstruction statistics" in calls
    calls.clear()
    sg.prune(model, (x,), ratio=0.5, importance="taylor", round_to=1, reconstruct=False)
    assert calls == ["prune: taylor gradients"]

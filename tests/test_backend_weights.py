"""The torch.compile backend never returns results of weights the model no longer has (issue 10, item 7),
and its options and grad handling fail loudly or fall back in the documented way (item 9)."""

import pytest
import torch

import slimgraph as sg
from slimgraph.backend import COMPILED, BackendOptions
from slimgraph.errors import InputError, SlimgraphError


def _model(seed: int):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 6 * 6, 4)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    return m


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(model, **options):
    return torch.compile(model, backend=sg.backend(inner="eager", **options))


def _frozen_record():
    """The last compile, checked to be slimgraph's own (BN folded into frozen constants), not a fallback to the
    unmodified graph: a fallback reads the weights on every call and would pass the tests below trivially."""
    record = COMPILED[-1]
    assert record.fallback is None, record.fallback
    assert "fold-bn" in record.applied and "fuse" in record.applied, record.applied
    return record


@pytest.mark.parametrize("quant", [None, "w8a8-dynamic"])
def test_load_state_dict_after_compile_recompiles(quant):
    model, x = _model(0), torch.randn(2, 3, 8, 8)
    compiled = _compiled(model, quant=quant)
    with torch.no_grad():
        before = compiled(x)
        record = COMPILED[-1]
        assert "fold-bn" in record.applied and record.fallback is None  # BN really was folded into constants
        model.load_state_dict(_model(1).state_dict())
        after, want = compiled(x), model(x)
    tol = 1e-5 if quant is None else 0.05 * float(want.abs().max())
    assert float((after - want).abs().max()) <= tol
    assert float((before - want).abs().max()) > 10 * tol  # the old weights really gave other results
    assert record.recompiles == 1


def test_optimizer_step_is_seen():
    model, x = _model(0), torch.randn(2, 3, 8, 8)
    compiled = _compiled(model)
    with torch.no_grad():
        compiled(x)
    record = _frozen_record()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).square().sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
    assert record.recompiles == 1


def test_replaced_parameter_data_is_seen():
    model, x = _model(0), torch.randn(2, 3, 8, 8)
    compiled = _compiled(model)
    with torch.no_grad():
        compiled(x)
        record = _frozen_record()
        model[4].weight.data = torch.randn_like(model[4].weight)
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
    assert record.recompiles == 1


def test_frozen_true_raises_instead_of_recompiling():
    model, x = _model(0), torch.randn(2, 3, 8, 8)
    compiled = _compiled(model, frozen=True)
    with torch.no_grad():
        compiled(x)
        _frozen_record()
        model[0].weight.mul_(2.0)
        with pytest.raises(SlimgraphError, match="frozen=True"):
            compiled(x)


def test_unchanged_weights_do_not_recompile():
    model, x = _model(0), torch.randn(2, 3, 8, 8)
    compiled = _compiled(model)
    with torch.no_grad():
        compiled(x)
        record = _frozen_record()
        for _ in range(3):
            compiled(x)
    assert record.recompiles == 0


@pytest.mark.parametrize(("raw", "value"), [("no", False), ("off", False), ("false", False), ("yes", True),
                                            (True, True), (False, False)])
def test_boolean_options_read_words(raw, value):
    assert BackendOptions.from_dict({"fuse": raw}).fuse is value


@pytest.mark.parametrize("raw", ["nope", 2, None, "0.5"])
def test_boolean_options_reject_junk(raw):
    with pytest.raises(InputError, match="fuse"):
        BackendOptions.from_dict({"fuse": raw})


def test_eager_int8_with_grad_requiring_input_still_differentiates():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    compiled = _compiled(model, quant="w8a8-dynamic")
    x = torch.randn(4, 16, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    model(ref_x).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)
    assert any("inputs require grad" in note for note in COMPILED[-1].notes)

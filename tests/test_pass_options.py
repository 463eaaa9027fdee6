"""A pass's options are only what a pipeline string can set; data and callables travel through the API."""

import dataclasses

import pytest
import torch

import slimgraph as sg
from slimgraph.cli import main as cli_main
from slimgraph.ir.calibration import UsesData
from slimgraph.passes.base import _format_value, parse_pipeline, pass_options, registered_passes
from slimgraph.passes.manager import PassManager

PASSES = sorted(registered_passes())


def test_every_lossy_family_is_registered():
    # the parametrized tests below would pass vacuously if registration broke
    assert {"prune", "quant"} <= set(PASSES)


@pytest.mark.parametrize("name", PASSES)
def test_listed_options_are_plain_settable_values(name):
    cls = registered_passes()[name]
    for key, default in pass_options(cls).items():
        assert default is not dataclasses.MISSING, f"{name}.{key} has no default"
        assert not callable(default), f"{name}.{key} defaults to a callable: data goes through the API"
        assert not isinstance(default, torch.Tensor), f"{name}.{key} defaults to a tensor"
        # every listed option round-trips through a pipeline string, at its default value
        (parsed,) = parse_pipeline(f"{name}{{{key}={_format_value(default) if default is not None else 'none'}}}")
        assert getattr(parsed, key) == default, (name, key)
    assert not {"calib", "loss_fn", "data"} & set(pass_options(cls)), f"{name} carries data as an option"


def test_cli_listing_shows_only_real_options(capsys):
    assert cli_main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "prune" in out and "quant" in out and "ratio=0.5" in out and "per_layer={}" in out
    for junk in ("_MISSING_TYPE", "calib=", "loss_fn=", "<function", "<lambda"):
        assert junk not in out, junk


@pytest.mark.parametrize("name", ["prune", "quant"])
def test_data_travels_beside_the_options(name):
    cls = registered_passes()[name]
    assert issubclass(cls, UsesData)
    plain = cls()
    batches = [(torch.randn(2, 4),), (torch.randn(2, 4),)]

    def loss(out):
        return out.sum()

    bound = plain.with_data(calib=iter(batches), loss_fn=loss)  # any iterable; kept as a tuple
    assert bound == plain and str(bound) == str(plain)  # same pass, same pipeline name
    assert bound.data.calib == tuple(batches) and bound.data.loss_fn is loss
    assert plain.data.calib is None and plain.data.loss_fn is None  # the original is unchanged
    (parsed,) = parse_pipeline(name)
    assert parsed.data.calib is None  # a pipeline string carries no data: the example inputs are used
    with pytest.raises(sg.errors.InputError, match="iterable of input tuples"):
        plain.with_data(calib=torch.randn(2, 4))
    with pytest.raises(sg.errors.InputError, match="loss_fn must be callable"):
        plain.with_data(loss_fn=3)


def test_prune_pass_uses_the_data_it_is_given():
    """act importance from calibration batches that excite other channels than the example input does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(8, 4) + torch.eye(8, 4).roll(4, 0))  # units i and i+4 read input i
        model[0].bias.zero_()
    example = (torch.tensor([[1.0, 1.0, 0.0, 0.0]]),)  # excites units 0, 1, 4, 5
    calib = [(torch.tensor([[0.0, 0.0, 1.0, 1.0]]),)]  # excites units 2, 3, 6, 7
    def kept_units(p):
        out = PassManager([p]).run(sg.capture(model, example)).gm
        w = dict(out.named_parameters())["0.weight"]  # the kept rows of the first layer
        return sorted(int(i) for i in w.abs().argmax(dim=1))

    (parsed,) = parse_pipeline("prune{ratio=0.5,importance=act,round_to=1}")
    assert kept_units(parsed) == [0, 0, 1, 1]  # calibrated on the example input
    assert kept_units(parsed.with_data(calib=calib)) == [2, 2, 3, 3]  # calibrated on the given batches

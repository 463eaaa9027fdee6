"""sg.prune rejects malformed options with InputError naming the option (issue 10, item 9)."""

import pytest
import torch

import slimgraph as sg
from slimgraph.errors import InputError


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


@pytest.mark.parametrize("ratio", ["0.5", None, True, [0.5]])
def test_ratio_must_be_a_number(ratio):
    with pytest.raises(InputError, match="ratio must be a number"):
        sg.prune(_mlp(), (torch.randn(2, 8),), ratio=ratio)


@pytest.mark.parametrize("ratios", [{"channels": "0.5"}, {3: 0.5}, [("channels", 0.5)]])
def test_ratios_entries_are_checked(ratios):
    with pytest.raises(InputError, match="ratios"):
        sg.prune(_mlp(), (torch.randn(2, 8),), ratio=0.5, ratios=ratios)


def test_ratios_key_matching_nothing_is_refused():
    with pytest.raises(InputError, match="'nomatch' matches no group.*channels"):
        sg.prune(_mlp(), (torch.randn(2, 8),), ratio=0.5, ratios={"nomatch": 0.5})


def test_ratios_key_matching_a_module_is_used():
    small = sg.prune(_mlp(), (torch.randn(2, 8),), ratio=0.0, ratios={"0": 0.5}, round_to=1)
    assert sg.prune_report(small).params_after < sg.prune_report(small).params_before

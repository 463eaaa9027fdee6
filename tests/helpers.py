"""Assertions shared by the pass tests: numbers match the unrewritten graph, and the rewrite fired."""

from __future__ import annotations

from collections import Counter

import torch
import torch.fx as fx

from slimgraph.numerics import compare_outputs, run_module


def count_ops(gm: fx.GraphModule) -> Counter:
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_function")


def assert_close_outputs(actual, expected, rel: float = 1e-4):
    err = compare_outputs(actual, expected)
    assert err.max_rel <= rel, f"outputs differ: {err} (allowed max_rel {rel})"
    return err


def run(module, args, kwargs=None):
    return run_module(module, args, kwargs or {})


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]):
    now = model.state_dict()
    assert set(now) == set(snapshot), "the caller's model gained or lost state entries"
    for k, v in snapshot.items():
        assert torch.equal(now[k], v), f"the caller's model changed: {k}"


def assert_identical(actual, expected):
    err = compare_outputs(actual, expected)
    assert err.exact, f"outputs are not bit-identical: {err}"

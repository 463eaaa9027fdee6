import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.errors import PassError, PipelineError, VerificationError
from slimgraph.ir.propagate import invalidate
from slimgraph.passes import Pass, PassManager, PassResult, parse_pipeline, register_pass
from slimgraph.passes.base import _REGISTRY

aten = torch.ops.aten


@dataclass(frozen=True)
class _Options(Pass):
    name: ClassVar[str] = "test-options"
    ratio: float = 0.5
    steps: int = 1
    enabled: bool = True
    label: str = "x"
    skip: tuple[str, ...] = ()
    limit: float | None = None
    per_module: dict[str, float] | None = None

    def run(self, gm):
        return PassResult(gm, False)


@dataclass(frozen=True)
class _BreakNumerics(Pass):
    """Deliberately wrong 'lossless' pass: turns every relu into a sigmoid."""

    name: ClassVar[str] = "test-break-numerics"

    def run(self, gm):
        changed = False
        for node in gm.graph.nodes:
            if node.target is aten.relu.default:
                node.target = aten.sigmoid.default
                invalidate(node)
                changed = True
        gm.recompile()
        return PassResult(gm, changed)


@dataclass(frozen=True)
class _BreakGraph(Pass):
    """Leaves a get_attr pointing at a missing attribute."""

    name: ClassVar[str] = "test-break-graph"

    def run(self, gm):
        node = next(n for n in gm.graph.nodes if n.op == "get_attr")
        node.target = "does.not.exist"
        return PassResult(gm, True)


@dataclass(frozen=True)
class _Slow(Pass):
    """Takes a known minimum time and changes nothing: what the manager records as its time must cover it."""

    name: ClassVar[str] = "test-slow"
    seconds: float = 0.05

    def run(self, gm):
        time.sleep(self.seconds)
        return PassResult(gm, False)


_TEST_PASSES = (_Options, _BreakNumerics, _BreakGraph, _Slow)


@pytest.fixture(autouse=True)
def _register_test_passes():
    for cls in _TEST_PASSES:
        register_pass(cls)
    yield
    for cls in _TEST_PASSES:
        _REGISTRY.pop(cls.name, None)


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), (torch.randn(3, 4),)


def test_parse_pipeline_converts_option_types():
    (p,) = parse_pipeline("test-options{ratio=0.25, steps=3, enabled=false, label=abc, skip=[fc1,fc2], "
                          "limit=0.1, per_module=[fc1:0.3,fc2:0.5]}")
    assert p == _Options(ratio=0.25, steps=3, enabled=False, label="abc", skip=("fc1", "fc2"), limit=0.1,
                         per_module={"fc1": 0.3, "fc2": 0.5})
    assert parse_pipeline("test-options{limit=none}")[0].limit is None
    assert str(p).startswith("test-options{ratio=0.25,steps=3,enabled=false")
    assert parse_pipeline(str(p)) == [p]  # printing and parsing round-trip


def test_parse_pipeline_lists_and_objects():
    passes = parse_pipeline(["fold-bn", _Options(steps=2), "fuse"])
    assert [p.name for p in passes] == ["fold-bn", "test-options", "fuse"]
    assert parse_pipeline("") == [] and parse_pipeline(None) == []


@pytest.mark.parametrize("spec, match", [
    ("no-such-pass", "unknown pass 'no-such-pass'; known passes: .*fold-bn"),
    ("test-options{nope=1}", "has no option 'nope'; its options: ratio, steps"),
    ("test-options{steps=two}", "expected an integer"),
    ("test-options{enabled=maybe}", "expected true/false"),
    ("test-options{ratio}", "key=value"),
    ("fold-bn{", "unbalanced"),
])
def test_parse_pipeline_errors(spec, match):
    with pytest.raises(PipelineError, match=match):
        parse_pipeline(spec)


def test_registry_lists_builtin_passes():
    names = set(sg.registered_passes())
    assert {"dce", "fold-constants", "fold-bn", "fuse"} <= names


def test_numeric_check_names_the_failing_pass_and_its_predecessors():
    model, args = _model()
    gm = sg.capture(model, args)
    with pytest.raises(PassError) as err:
        PassManager("dce,fold-constants,test-break-numerics", check_numerics=True).run(gm)
    msg = str(err.value)
    assert "'test-break-numerics'" in msg and "dce -> fold-constants" in msg
    assert "changed the outputs" in msg


def test_without_numeric_check_the_broken_pass_goes_through():
    model, args = _model()
    gm = sg.capture(model, args)
    result = PassManager("test-break-numerics", check_numerics=False).run(gm)
    assert result.records[0].modified


def test_verifier_catches_a_malformed_graph():
    model, args = _model()
    gm = sg.capture(model, args)
    with pytest.raises(PassError, match="test-break-graph.*(malformed|missing attribute)"):
        PassManager("fuse,test-break-graph").run(gm)


def test_records_time_stats_and_errors():
    model, args = _model()
    gm = sg.capture(model, args)
    start = time.perf_counter()
    result = PassManager("fold-bn,test-slow,fuse", check_numerics=True).run(gm)
    wall = time.perf_counter() - start
    assert [r.name for r in result.records] == ["fold-bn", "test-slow", "fuse"]  # in pipeline order
    slow, fuse = result.records[1], result.records[2]
    assert 0.05 <= slow.seconds < wall and not slow.modified  # the pass's own time is what is recorded
    assert all(r.seconds > 0 for r in result.records) and result.seconds <= wall
    assert fuse.modified and fuse.stats["linear_act"] == 1
    assert fuse.error_vs_input is not None and fuse.error_vs_input.max_rel <= 1e-6
    assert "fuse" in result.table()
    assert sg.graph_info(result.gm).applied == ["fuse"]
    assert [r.name for r in sg.graph_info(result.gm).history] == ["fold-bn", "test-slow", "fuse"]


def test_dump_writes_graph_after_every_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_DUMP", str(tmp_path))
    model, args = _model()
    PassManager("fold-bn,fuse").run(sg.capture(model, args))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["00-input.txt", "01-fold-bn.txt", "02-fuse.txt"]
    assert "slimgraph.linear_act" in (tmp_path / "02-fuse.txt").read_text()


def test_verify_rejects_non_op_targets():
    model, args = _model()
    gm = sg.capture(model, args)
    node = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
    node.target = torch.relu  # a Python function, not an op overload: not exportable
    with pytest.raises(VerificationError, match="not an op overload"):
        sg.verify(gm)

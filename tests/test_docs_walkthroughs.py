"""The walk-throughs of docs/architecture.md ("How to add a pass / an op / a benchmark") run as written.

Each section's ```python blocks are executed in order in one namespace, so a walk-through that no longer matches
the code (a renamed helper, a changed signature, a pass that stops firing) fails here instead of misleading the
next reader. The blocks carry their own asserts; the tests below also check what each walk-through promises.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

import slimgraph as sg
from slimgraph.passes import base as pass_base

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
SECTIONS = ("How to add a pass", "How to add an op", "How to add a benchmark")


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of the page, in order."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/architecture.md has no section '## {section}'"
    blocks = re.findall(r"^```python\n(.*?)^```", match.group(1), flags=re.M | re.S)
    assert blocks, f"section '## {section}' has no python block"
    return blocks


def run_section(section: str) -> dict:
    """Run a section's blocks as one module (dataclasses look their class's module up in sys.modules)."""
    module = types.ModuleType(f"docs_walkthrough_{section.split()[-1]}")
    sys.modules[module.__name__] = module
    for i, block in enumerate(python_blocks(section)):
        # dont_inherit: the page's code runs as written, without this file's ``from __future__`` imports
        code = compile(block, f"docs/architecture.md[{section}, block {i}]", "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102
    return module.__dict__


@pytest.fixture(scope="module")
def walkthroughs():
    """Every section run once per process (the example op and pass register globally; a second run would clash);
    the example pass and ONNX translation are taken out again so other tests see the registries unchanged."""
    from slimgraph.quant.onnx_ops import TRANSLATIONS

    passes, translations = dict(pass_base._REGISTRY), dict(TRANSLATIONS)
    try:
        yield {section: run_section(section) for section in SECTIONS}
    finally:
        pass_base._REGISTRY.clear()
        pass_base._REGISTRY.update(passes)
        TRANSLATIONS.clear()
        TRANSLATIONS.update(translations)
        for section in SECTIONS:
            sys.modules.pop(f"docs_walkthrough_{section.split()[-1]}", None)


def test_the_sections_exist_and_hold_code():
    for section in SECTIONS:
        assert len(python_blocks(section)) >= 2, section


def test_example_pass_rewrites_a_graph_and_leaves_other_relus_alone(walkthroughs):
    ns = walkthroughs["How to add a pass"]
    relu = torch.ops.aten.relu.default
    assert sg.passes.get_pass("drop-repeated-relu") is ns["DropRepeatedRelu"]

    class Chain(torch.nn.Module):
        def forward(self, x):
            return torch.relu(torch.relu(torch.relu(x))) * 2, torch.relu(-x)

    x = torch.randn(3, 5)
    gm = sg.capture(Chain(), (x,))
    expected = gm(x)
    assert sum(n.target is relu for n in gm.graph.nodes) == 4
    result = ns["DropRepeatedRelu"]().run(gm)
    assert result.modified and result.stats["repeated_relu"] == 2  # relu(relu(relu(x))) -> relu(x)
    assert sum(n.target is relu for n in result.gm.graph.nodes) == 2  # relu(-x) has no relu before it: kept
    result.gm.recompile()
    for got, want in zip(result.gm(x), expected):
        torch.testing.assert_close(got, want)

    class Apart(torch.nn.Module):  # two relus, neither reading the other
        def forward(self, x):
            return torch.relu(x) + torch.relu(x + 1)

    untouched = sg.capture(Apart(), (x,))
    assert not ns["DropRepeatedRelu"]().run(untouched).modified
    assert sum(n.target is relu for n in untouched.graph.nodes) == 2


def test_example_op_runs_traces_and_counts_macs(walkthroughs):
    ns = walkthroughs["How to add an op"]
    op = torch.ops.example.scaled_linear
    x, w, scale = torch.randn(2, 3, 8), torch.randn(5, 8), torch.rand(5)
    torch.testing.assert_close(op(x, w, scale), (x @ w.T) * scale)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = op(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(scale))
    assert fake.shape == (2, 3, 5)
    assert "scaled_linear_onnx" in ns  # the ONNX block ran (it exported and compared with onnxruntime)


def test_example_benchmark_writes_its_results(walkthroughs, tmp_path):
    ns = walkthroughs["How to add a benchmark"]
    assert ns["main"](["--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "linear-act.md").read_text()
    assert "python -m bench.linear_act --quick" in md and "| linear+relu |" in md
    with pytest.raises(SystemExit):
        ns["main"](["--help"])

"""The independent re-timing check of a compress report's speed column (slimgraph.demos.retime)."""

import json

from test_compress import USER_MODULE

from slimgraph.cli import main as cli_main
from slimgraph.demos.retime import agree, main
from slimgraph.timing import Ratio


def test_agreement_is_overlap_of_the_two_ranges():
    reported = {"median": 1.5, "low": 1.3, "high": 1.7}
    assert agree(reported, Ratio(1.6, 1.4, 1.9))
    assert agree(reported, Ratio(1.2, 1.0, 1.3))  # touching ranges overlap
    assert not agree(reported, Ratio(1.0, 0.9, 1.1))
    assert not agree(reported, Ratio(2.5, 2.0, 3.0))


def test_retime_reloads_every_stage_and_writes_its_verdict(tmp_path, monkeypatch):
    (tmp_path / "mymod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["compress", "mymod:factory", "--data", "mymod:batches", "--out", "out", "--no-onnx",
                     "--timing-rounds", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "stages").iterdir()) == [
        "original.slimgraph", "pruned.slimgraph", "quantized.slimgraph"]
    code = main(["out", "--rounds", "3"])
    result = json.loads((tmp_path / "out" / "retime.json").read_text())
    assert [r["stage"] for r in result["stages"]] == ["pruned", "quantized"]
    assert code == (0 if result["all_agree"] else 1)
    assert all(r["retimed_ms"]["samples"] == 3 for r in result["stages"])
    md = (tmp_path / "out" / "retime.md").read_text()
    assert "python -m slimgraph.demos.retime out --rounds 3" in md and "| pruned |" in md

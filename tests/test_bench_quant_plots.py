"""The quant benches write their JSON, markdown and PNG (issue 15: result sets without a PNG), and bench.aot draws
its PNG from a committed JSON without recompiling anything."""

import json
from pathlib import Path

import pytest

from bench import harness

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _titles(monkeypatch) -> list[str]:
    """Record the title of every figure the harness finishes (and still write it)."""
    titles, finish = [], harness.finish_figure

    def recording(*args, **kwargs):
        titles.append(kwargs["title"])
        return finish(*args, **kwargs)

    monkeypatch.setattr(harness, "finish_figure", recording)
    return titles


def test_aot_plot_draws_the_committed_json(tmp_path, monkeypatch):
    from bench.aot import plot

    titles = _titles(monkeypatch)
    rows = json.loads((ROOT / "bench/results/aot-sm90a-sm80.json").read_text())["rows"]
    path = plot(tmp_path, rows)
    assert path == tmp_path / "aot-sm90a-sm80.png" and path.read_bytes()[:8] == PNG
    assert titles == [f"AOT compiles: {len(rows)} of {len(rows)} compiled, 0 spill / overflow / i32-offset"]


def test_aot_plot_counts_failed_compiles_and_failing_rows(tmp_path, monkeypatch):
    from bench.aot import plot

    titles = _titles(monkeypatch)
    good = dict(kernel="int8_matmul", arch="sm_90a", ok=True, regs=128, shared=98304, smem_limit=232448,
                over_smem=False, spill_stores=0, spill_loads=0, i32_offset_muls=[])
    rows = [good, {**good, "arch": "sm_80", "smem_limit": 166912, "spill_stores": 8, "spill_loads": 8},
            {"kernel": "quantize", "arch": "sm_80", "ok": False, "error": "ptxas killed"}]  # no regs: never compiled
    path = plot(tmp_path, rows, "aot-test")
    assert path.name == "aot-test.png" and path.read_bytes()[:8] == PNG
    assert titles == ["AOT compiles: 2 of 3 compiled, 1 failed, 1 spill / overflow / i32-offset"]


@pytest.mark.slow
def test_quant_digits_quick_writes_json_markdown_and_png(tmp_path, monkeypatch):
    from bench import quant_digits

    titles = _titles(monkeypatch)
    assert quant_digits.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "quant-digits-quick.json").read_text())
    rows = {r["name"]: r for r in payload["rows"]}
    assert list(rows) == ["float", *quant_digits.QUICK_CONFIGS]
    for name in quant_digits.QUICK_CONFIGS:  # every conv and linear int8, accuracy within the target
        assert (rows[name]["int8_layers"], rows[name]["layers"]) == (5, 5)
        assert rows[name]["drop_points"] <= quant_digits.TARGET_DROP_POINTS
        assert rows[name]["file_mb"] < rows["float"]["file_mb"] / 3  # int8 weights: about a quarter of fp32
    assert payload["timing"]["rounds"] == 20 and payload["target"]["met"] is True
    md = (tmp_path / "quant-digits-quick.md").read_text()
    assert "python -m bench.quant_digits --quick" in md and "| w8a16 |" in md
    assert (tmp_path / "quant-digits-quick.png").read_bytes()[:8] == PNG
    assert titles == ["digits CNN int8: accuracy vs latency"]

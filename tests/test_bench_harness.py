"""The bench harness and the contract every bench script keeps: ``main(argv) -> int``, ``--help`` works both as
``python -m bench.<script>`` and as ``slimgraph bench <script>``, and results go to a scratch directory unless
``--out`` is given, so no run replaces the committed files under bench/results by accident."""

import argparse
import importlib
import json
from pathlib import Path

import pytest

from slimgraph.cli import bench_suites
from slimgraph.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
SUITES = bench_suites(ROOT)
# scripts whose owners have not moved them to harness.script_parser yet: their own --out default is
# bench/results (``slimgraph bench`` still sends them to the scratch directory, tested below for every script)
def test_every_bench_script_is_a_suite():
    on_disk = {p.stem for p in (ROOT / "bench").glob("*.py")}
    helpers = {"__init__", "harness", "prune_common", "shapes"}
    assert set(SUITES) == on_disk - helpers  # a script without main(argv) would be missing here
    assert {"quant_minilm", "quant_digits", "e2e", "pipeline_cpu", "prune_families"} <= set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_python_m_bench_script_help(suite, capsys):
    module = importlib.import_module(f"bench.{suite}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


@pytest.mark.parametrize("suite", SUITES)
def test_slimgraph_bench_script_help_creates_nothing(suite, tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", suite, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # no scratch directory for a help request


@pytest.mark.parametrize("suite", SUITES)
def test_slimgraph_bench_writes_to_scratch_unless_out_is_given(suite, tmp_path, monkeypatch):
    import tempfile

    module = importlib.import_module(f"bench.{suite}")
    seen = []
    monkeypatch.setattr(module, "main", lambda argv: seen.append(argv) or 0)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    assert cli_main(["bench", suite, "--quick"]) == 0
    out = Path(seen[-1][seen[-1].index("--out") + 1])
    assert out == tmp_path / "slimgraph-bench" / suite and out.is_dir()
    assert cli_main(["bench", suite, "--out", str(tmp_path / "mine")]) == 0
    assert seen[-1] == ["--out", str(tmp_path / "mine")]


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


@pytest.mark.parametrize("suite", SUITES)
def test_python_m_bench_script_defaults_to_a_scratch_directory(suite, monkeypatch):
    from bench.harness import scratch_dir

    module = importlib.import_module(f"bench.{suite}")

    def stop(parser, args=None, namespace=None):  # the script's own parser, caught before any work starts
        raise _Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed) as parsed:
        module.main([])
    default = Path(str(parsed.value.parser.get_default("out")))
    assert default.parent == scratch_dir("x").parent, default
    assert ROOT not in default.resolve().parents


def test_harness_writes_json_markdown_and_png(tmp_path):
    from bench import harness

    meta = harness.run_metadata("bench.example", ["--quick"], torch_pruning="1.6.0")
    run = harness.time_variants({"a": lambda: sum(range(100)), "b": lambda: sum(range(1000))}, warmup=1, rounds=5)
    harness.finish_metadata(meta, 0.0)
    files = harness.write_results(tmp_path, "example", {"meta": meta, "timing": run},
                                  [*harness.meta_lines(meta), *harness.md_table(["x"], [[1]])])
    files.append(harness.bar_chart(tmp_path, "example", {"median ms": {k: t.median_ms for k, t in run.timings.items()}},
                                   ylabel="ms", title="t", reference=(1.0, "one")))
    files.append(harness.scatter_chart(tmp_path, "example-scatter", {"a": (1.0, 0.5), "b": (2.0, 0.1)}, xlabel="ms",
                                       ylabel="loss", title="t", logy=True))
    assert [f.name for f in files] == ["example.json", "example.md", "example.png", "example-scatter.png"]
    payload = json.loads(files[0].read_text())
    assert payload["meta"]["command"] == "python -m bench.example --quick"
    assert payload["timing"]["rounds"] == 5 and set(payload["timing"]["timings"]) == {"a", "b"}
    assert all(t["samples"] == 5 for t in payload["timing"]["timings"].values())
    md = files[1].read_text()
    assert "torch-pruning 1.6.0" in md and "python -m bench.example --quick" in md and "| x |" in md
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files[2:])


def test_target_line_and_human():
    from bench.harness import human, target_line

    assert target_line("speed", "1.2x", ">= 1.5x", False).endswith("-> MISSED")
    assert target_line("speed", "1.6x", ">= 1.5x", True).endswith("-> met")
    assert target_line("speed", "-", ">= 1.5x", None).endswith("-> n/a")
    assert (human(22_700_000), human(1_500), human(12)) == ("22.70M", "1.50k", "12")


def test_time_variants_quietly_times_a_probe_alongside_and_drops_it():
    from bench import harness

    run, pool = harness.time_variants_quietly({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))},
                                              warmup=1, rounds=5)
    assert set(run.timings) == {"a", "b"} and run.rounds == 5
    assert 1 <= pool["attempts"] <= 3 and pool["quiet"] == (pool["probe_ms"] is None or pool["probe_ms"] <= 1.0)


def test_time_variants_quietly_times_again_while_the_pool_keeps_the_probe_waiting(monkeypatch):
    import time

    from bench import harness

    settles = []
    monkeypatch.setattr(harness, "_cpu_pool_idle", lambda: False)
    monkeypatch.setattr(harness, "settle_threads", lambda **kw: settles.append(kw) or {})
    monkeypatch.setattr(harness, "_probe_gemm", lambda: lambda: time.sleep(0.002))  # always "waiting": 2 ms > 1 ms
    run, pool = harness.time_variants_quietly({"a": lambda: None}, warmup=0, rounds=3, min_rounds=1)
    assert pool["attempts"] == 3 and pool["quiet"] is False and pool["probe_ms"] >= 2.0
    assert [kw["again"] for kw in settles if "again" in kw] == [False, True, True] and set(run.timings) == {"a"}


def test_kernels_cpu_run_times_each_shape_interleaved(tmp_path, monkeypatch):
    import torch

    from bench import kernels

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.main(["--quick", "--ops", "int8_matmul", "--rounds", "5", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "kernels-cpu.json").read_text())
    assert payload["meta"]["command"].startswith("python -m bench.kernels --quick")
    timed = [r for r in payload["rows"] if r["ms"] is not None]
    assert {r["op"] for r in timed} == {"fp16_mm", "int8_matmul", "cudnn_fp16_conv"}  # baselines always run
    assert all(r["ms_q1"] <= r["ms"] <= r["ms_q3"] for r in timed)
    shapes = {r["shape"] for r in timed}
    assert len(payload["timing"]) == len(shapes) and all("5 interleaved rounds" in t for t in payload["timing"])
    assert "ms median (IQR)" in (tmp_path / "kernels-cpu.md").read_text()
    assert (tmp_path / "kernels-cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_metadata_records_the_environment_that_changes_a_measurement(monkeypatch):
    from bench import harness

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("SLIMGRAPH_AUTOTUNE", raising=False)
    meta = harness.run_metadata("bench.example", ["--quick"])
    assert meta["env"]["TRITON_INTERPRET"] == "1" and "SLIMGRAPH_AUTOTUNE" not in meta["env"]
    assert harness.meta_lines(meta)[0] == "- command: `TRITON_INTERPRET=1 python -m bench.example --quick`"


def test_settle_threads_is_reported_and_says_when_the_pool_never_settled(monkeypatch):
    from bench import harness

    monkeypatch.setattr(harness, "_SETTLED", {})
    monkeypatch.setattr(harness, "_cpu_pool_idle", lambda: False)
    monkeypatch.setattr(harness, "_probe_gemm", lambda: lambda: __import__("time").sleep(0.002))
    seen = harness.settle_threads(calls=3, max_seconds=0.05)
    assert seen["settled"] is False and seen["calls"] >= 3
    meta = harness.finish_metadata(harness.run_metadata("bench.example", []), 0.0)
    assert meta["thread_pool"]["settled"] is False
    assert any("did NOT settle" in line for line in harness.meta_lines(meta))

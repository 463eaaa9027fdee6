import json
import subprocess
import sys

import pytest
import torch

import slimgraph as sg
from slimgraph.cli import build_parser, main

FACTORY = "slimgraph.testing.models:_mlp"


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: slimgraph {command}" in out


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("inspect", "optimize", "passes", "demo", "compress", "prune", "quantize", "distill", "export",
                    "bench"):
        assert command in out


def test_inspect_prints_layers_and_totals(capsys):
    assert main(["inspect", "slimgraph.testing.models:_mlp"]) == 0
    out = capsys.readouterr().out
    assert "aten.linear" in out and "fc1" in out
    assert "total:" in out and "MACs" in out


def test_optimize_writes_an_archive_that_loads(tmp_path, capsys):
    out_file = tmp_path / "mlp.sg"
    assert main(["optimize", FACTORY, "--pipeline", "fold-bn,fuse", "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "fuse" in text and "saved to" in text
    loaded = sg.load(out_file)
    assert sg.graph_info(loaded).applied == ["fuse"]
    # and a saved archive can be named as a MODEL
    assert main(["inspect", str(out_file)]) == 0
    assert "slimgraph.linear_act" in capsys.readouterr().out


def test_passes_lists_options(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold-bn" in out and "lossless" in out and "options:" in out


@pytest.mark.parametrize("args, message", [
    (["inspect", "nosuchdemo"], "unknown model"),
    (["inspect", "no_such_module_xyz:f"], "cannot import"),
    (["inspect", "slimgraph.testing.models:nope"], "has no attribute 'nope'"),
    (["optimize", FACTORY, "--pipeline", "bogus"], "unknown pass 'bogus'"),
])
def test_bad_input_gets_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in err


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "slimgraph.cli", "passes"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "fuse" in result.stdout


@pytest.mark.slow  # the whole main job on the digits CNN: capture, prune, distill, int8, ONNX, plots
def test_demo_runs_the_main_job_and_writes_the_report(tmp_path, cache_dir, capsys):
    out = tmp_path / "demo"
    # --int8-everywhere: int8 storage is asserted below, whatever this CPU's int8 speed
    code = main(["demo", "digits-cnn", "--out", str(out), "--prune", "0.5", "--distill", "40", "--quant", "w8a8",
                 "--timing-rounds", "3", "--int8-everywhere"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    stages = {s["stage"] if "stage" in s else s["name"]: s for s in report["stages"]}
    assert list(stages) == ["original", "pruned", "distilled", "quantized"]
    assert stages["pruned"]["macs"] < 0.5 * stages["original"]["macs"]
    assert stages["quantized"]["bytes"] < 0.35 * stages["original"]["bytes"]  # int8 storage, pruned
    assert all("accuracy" in s["metrics"] and "heldout_cosine" in s["metrics"] for s in stages.values())
    assert all(s["latency"]["samples"] == 3 for s in stages.values())
    assert report["checks"]["reload_exact"] is True and report["checks"]["output_shapes_unchanged"] is True
    for name in ("report.md", "layers.png", "tradeoff.png", "model.slimgraph", "model.onnx"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "stage" in printed and "quantized" in printed and "report.md" in printed


def test_prune_quantize_export_subcommands(tmp_path, capsys):
    pruned = tmp_path / "p.sg"
    assert main(["prune", FACTORY, "--ratio", "0.5", "--round-to", "1", "--out", str(pruned)]) == 0
    assert "pruned" in capsys.readouterr().out
    quantized = tmp_path / "q.sg"
    assert main(["quantize", str(pruned), "--scheme", "w8a8-dynamic", "--out", str(quantized)]) == 0
    onnx_file = tmp_path / "q.onnx"
    assert main(["export", str(quantized), "--onnx", str(onnx_file)]) == 0
    assert onnx_file.is_file() and onnx_file.stat().st_size > 0
    assert sg.load(quantized).get_buffer  # loads


def test_bench_subcommand_reports_a_missing_suite(capsys):
    assert main(["bench", "no_such_suite"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow  # two full compress runs with distillation
def test_compress_is_deterministic_given_a_seed(tmp_path, cache_dir):
    from slimgraph.compress import CompressConfig, compress
    from slimgraph.demos import load_model

    demo = load_model("digits-cnn")
    # keep_profitable decides by measured speed, which varies between runs: off for a determinism check
    config = CompressConfig(prune=0.5, distill_steps=20, quant="w8a8", onnx=False, timing_rounds=1,
                            keep_profitable=False)
    data = demo.train_batches[:8]
    first = compress(demo.model, demo.args, data=data, eval_fn=demo.evaluate, config=config, out=tmp_path / "a")
    second = compress(demo.model, demo.args, data=data, eval_fn=demo.evaluate, config=config, out=tmp_path / "b")
    assert [s.metrics for s in first.stages] == [s.metrics for s in second.stages]
    assert [(s.params, s.bytes, s.macs) for s in first.stages] == [(s.params, s.bytes, s.macs) for s in second.stages]
    # same archive content (safetensors writes its header keys in hash order, so bytes may differ)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a" / "model.slimgraph"), "pt") as fa, \
            safe_open(str(tmp_path / "b" / "model.slimgraph"), "pt") as fb:
        assert fa.metadata() == fb.metadata()
        assert sorted(fa.keys()) == sorted(fb.keys())
        assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_bench_writes_to_a_scratch_directory_unless_out_is_given(tmp_path, monkeypatch, capsys):
    import tempfile

    import bench.e2e as e2e

    seen = {}
    monkeypatch.setattr(e2e, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    assert main(["bench", "e2e", "--quick"]) == 0
    out = seen["argv"][seen["argv"].index("--out") + 1]
    assert out.startswith(str(tmp_path)) and "scratch" in capsys.readouterr().err
    seen.clear()
    assert main(["bench", "e2e", "--out", str(tmp_path / "mine")]) == 0
    assert seen["argv"] == ["--out", str(tmp_path / "mine")]

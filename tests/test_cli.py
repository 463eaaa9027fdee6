import json
import subprocess
import sys

import pytest

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
    for command in ("inspect", "optimize", "passes", "demo"):
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
    (["inspect", "slimgraph.testing.models:nope"], "has no callable"),
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


def test_demo_on_digits_writes_report(tmp_path, cache_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "digits-cnn", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["reload_exact"] is True
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["optimized (lossless)"]["metrics"]["accuracy"] == stages["original (eager)"]["metrics"]["accuracy"]
    assert "fold-bn" in (out / "report.md").read_text()
    assert (out / "model.slimgraph").is_file()

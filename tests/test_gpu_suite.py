"""The one-command GPU suite (bench/gpu_suite.py) on CPU: its --dry-run imports every step's script and parses
the step's arguments with the script's own argparse, and a bad argument is caught."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_suite import BUDGET_S, STEPS, Step, check_arguments

ROOT = Path(__file__).resolve().parent.parent


def test_steps_fit_the_budget_and_cover_the_issue():
    assert sum(s.timeout_s for s in STEPS) <= BUDGET_S <= 480
    assert [s.name for s in STEPS] == ["tests", "kernels", "sweep", "e2e"]


def test_bad_arguments_fail_the_check(tmp_path):
    problem = check_arguments(Step("kernels", "bench.kernels", ("--no-such-flag",), 1), tmp_path)
    assert "status 2" in problem
    assert check_arguments(Step("kernels", "bench.kernels", ("--quick", "--out", "{out}"), 1), tmp_path) == ""


@pytest.mark.slow
def test_dry_run_passes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("imports and arguments parse") == len(STEPS)
    assert "all steps ready" in proc.stdout

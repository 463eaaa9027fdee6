"""Progress shows in logs (plain lines) as well as on terminals."""

import io

from slimgraph.progress import LineProgress, progress


def test_line_progress_prints_every_tenth_and_the_end():
    out = io.StringIO()
    bar = LineProgress(25, "distill", "step", stream=out)
    for step in range(25):
        bar.set_postfix(loss=1.0 / (step + 1))
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 13  # every 2 steps (a tenth of 25, rounded down) and the last one
    assert lines[0].startswith("distill: 2/25 steps (8%)")
    assert lines[-1].startswith("distill: 25/25 steps (100%)") and "about 0 s left, loss=0.04" in lines[-1]


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys):
    bar = progress(4, "calibrate", "batch")  # pytest's captured stderr is not a terminal
    assert isinstance(bar, LineProgress)
    bar.update(4)
    assert "calibrate: 4/4 batches (100%)" in capsys.readouterr().err


def test_disabled_progress_is_none():
    assert progress(10, "x", enabled=False) is None

"""Where a benchmark result came from: the commit (and whether the tree had uncommitted changes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_state() -> tuple[str | None, bool | None]:
    """(short commit hash, tracked files under slimgraph/ or bench/ differ from it); Nones outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "slimgraph", "bench"],
                                cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit or None, bool(status)
    except (OSError, subprocess.SubprocessError):
        return None, None


def describe_commit() -> str:
    commit, dirty = git_state()
    if commit is None:
        return "unknown"
    return commit + (" (+ uncommitted changes)" if dirty else "")

"""Progress for long work that shows on a terminal and in logs alike.

On a terminal it is a tqdm bar. Elsewhere (CI logs, ``nohup``, a notebook's captured stderr) a bar is either
invisible or a wall of carriage returns, so a plain line is printed every tenth of the work instead:
``distill: 120/1200 steps (10%), 35 s elapsed, about 5 min 15 s left``.
"""

from __future__ import annotations

import sys
import time


class LineProgress:
    """tqdm's ``update``/``close`` surface, printing one line per ``every`` fraction of ``total``."""

    def __init__(self, total: int, desc: str, unit: str, *, every: float = 0.1, stream=None):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.step = max(1, int(self.total * every))
        self.done = 0
        self.start = time.perf_counter()
        self.postfix = ""

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        before, self.done = self.done, self.done + n
        if self.total and (self.done // self.step > before // self.step or self.done == self.total):
            elapsed = time.perf_counter() - self.start
            left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            share = 100 * self.done / self.total
            line = (f"{self.desc}: {self.done}/{self.total} {_plural(self.unit)} ({share:.0f}%), "
                    f"{_duration(elapsed)} elapsed, about {_duration(left)} left")
            print(f"{line}, {self.postfix}" if self.postfix else line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "step", *, enabled: bool = True):
    """A progress reporter (None when disabled): a tqdm bar on a terminal, periodic lines otherwise."""
    if not enabled:
        return None
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    return LineProgress(total, desc, unit, stream=stream)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

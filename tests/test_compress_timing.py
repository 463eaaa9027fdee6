"""slimgraph.timing: statistics and the "no change" verdict on synthetic timings (a fake clock, no real work)."""

import itertools

import pytest

from slimgraph.errors import InputError
from slimgraph.timing import Ratio, Timing, speedup, time_interleaved


def test_statistics_of_known_samples():
    t = Timing("a", (5.0, 1.0, 3.0, 2.0, 4.0))
    assert t.median_ms == 3.0
    assert (t.q1_ms, t.q3_ms, t.iqr_ms) == (2.0, 4.0, 2.0)  # linear interpolation, as numpy's default
    assert (t.min_ms, t.max_ms) == (1.0, 5.0)
    assert t.as_dict()["samples"] == 5
    even = Timing("b", (1.0, 2.0, 3.0, 4.0))
    assert even.median_ms == 2.5 and even.q1_ms == pytest.approx(1.75) and even.q3_ms == pytest.approx(3.25)


def test_clear_speedup_is_faster_and_its_range_is_conservative():
    before, after = Timing("a", (10.0, 10.5, 11.0, 9.5, 10.2)), Timing("b", (5.0, 5.1, 4.9, 5.3, 5.0))
    r = speedup(before, after)
    assert r.median == pytest.approx(10.2 / 5.0)
    assert r.low == pytest.approx(before.q1_ms / after.q3_ms) and r.high == pytest.approx(before.q3_ms / after.q1_ms)
    assert r.low <= r.median <= r.high
    assert r.verdict == "faster" and r.label().startswith("2.04x (")
    assert speedup(after, before).verdict == "slower"


def test_overlapping_spread_reads_no_change():
    a = Timing("a", (10.0, 12.0, 9.0, 11.0, 10.5))
    b = Timing("b", (10.4, 9.8, 11.5, 10.1, 12.2))
    r = speedup(a, b)
    assert r.low < 1.0 < r.high
    assert r.verdict == "no change" and r.label().startswith("no change (")
    assert Ratio(1.3, 1.01, 1.6).verdict == "faster" and Ratio(0.7, 0.5, 0.99).verdict == "slower"


def test_interleaving_rotates_the_order_and_warms_up_every_variant():
    calls = []
    variants = {name: (lambda n=name: calls.append(n)) for name in "ABC"}
    run = time_interleaved(variants, warmup=2, rounds=3, min_rounds=1, clock=itertools.count().__next__)
    assert calls[:6] == list("ABCABC")  # warm-up: every variant before any is timed
    assert calls[6:] == list("ABC" "BCA" "CAB")  # each round starts one later: nobody always runs first
    assert run.rounds == 3 and all(len(t.samples_ms) == 3 for t in run.timings.values())
    assert all(s == 1000.0 for t in run.timings.values() for s in t.samples_ms)  # the fake clock ticks 1 s per read
    assert "interleaved rounds" in run.conditions() and "load average" in run.conditions()


def test_time_budget_stops_after_the_minimum_rounds():
    ticks = itertools.count(step=100)  # 100 s per clock read: the 1 s budget is spent at once
    run = time_interleaved({"a": lambda: None}, warmup=0, rounds=50, min_rounds=4, max_seconds=1.0,
                           clock=ticks.__next__)
    assert run.rounds == 4


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"min_rounds": 0}, {"warmup": -1}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(InputError):
        time_interleaved({"a": lambda: None}, **kwargs)
    with pytest.raises(InputError, match="at least one variant"):
        time_interleaved({})

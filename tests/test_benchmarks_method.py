"""The benchmark method's arithmetic (benchmarks/_common.py), on synthetic timings: paired
ratios, their median and IQR, the alternating-round scheduler and the rows built from them.
Nothing here times anything."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
method = importlib.import_module("benchmarks._common")


def test_paired_ratios_are_per_round() -> None:
    baseline = [100.0, 200.0, 50.0]
    candidate = [110.0, 180.0, 60.0]
    assert method.paired_ratios(baseline, candidate) == pytest.approx([1.1, 0.9, 1.2])
    # "x cheaper": baseline / candidate
    assert method.paired_ratios(baseline, candidate, invert=True) == pytest.approx(
        [100 / 110, 200 / 180, 50 / 60])


def test_paired_ratios_differ_from_ratio_of_medians() -> None:
    # a slow round for both arms moves the medians, not the paired ratios
    baseline = [10.0, 10.0, 100.0, 10.0]
    candidate = [11.0, 11.0, 110.0, 11.0]
    assert method.paired_ratios(baseline, candidate) == pytest.approx([1.1] * 4)
    assert method.spread(method.paired_ratios(baseline, candidate)).iqr == pytest.approx(0)


def test_paired_ratios_need_the_same_rounds() -> None:
    with pytest.raises(ValueError):
        method.paired_ratios([1.0, 2.0], [1.0])


def test_paired_ratio_of_a_zero_baseline_is_nan() -> None:
    assert math.isnan(method.paired_ratios([0.0], [1.0])[0])


def test_spread_median_and_quartiles() -> None:
    s = method.spread([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert (s.median, s.q1, s.q3, s.n) == (5.0, 3.0, 7.0, 9)
    assert s.iqr == 4.0
    # even count: linear interpolation between closest ranks ("inclusive")
    s = method.spread([4.0, 1.0, 3.0, 2.0])  # order does not matter
    assert (s.median, s.q1, s.q3) == pytest.approx((2.5, 1.75, 3.25))


def test_spread_of_one_and_of_none() -> None:
    s = method.spread([1.5])
    assert (s.median, s.q1, s.q3, s.n, s.iqr) == (1.5, 1.5, 1.5, 1, 0.0)
    empty = method.spread([])
    assert empty.n == 0 and math.isnan(empty.median)


def test_spread_ignores_one_outlier_round() -> None:
    ratios = [1.01, 1.02, 0.99, 1.00, 1.01, 1.03, 1.00, 5.0]  # one disturbed round
    s = method.spread(ratios)
    assert s.median == pytest.approx(1.01)
    assert s.q3 < 1.05


def test_schedule_alternates_and_flips() -> None:
    order = method.schedule(4, ("A", "B"))
    assert order == [(0, "A"), (0, "B"), (1, "B"), (1, "A"),
                     (2, "A"), (2, "B"), (3, "B"), (3, "A")]
    # every round measures every arm once
    for number in range(4):
        assert sorted(arm for r, arm in order if r == number) == ["A", "B"]
    # each arm goes first in half the rounds
    firsts = [order[2 * n][1] for n in range(4)]
    assert firsts.count("A") == firsts.count("B") == 2


def test_schedule_with_more_arms() -> None:
    order = method.schedule(2, ("a", "b", "c"))
    assert [arm for _, arm in order] == ["a", "b", "c", "c", "b", "a"]


def test_schedule_refuses_nothing_to_do() -> None:
    with pytest.raises(ValueError):
        method.schedule(0)
    with pytest.raises(ValueError):
        method.schedule(3, ())


def test_alternate_follows_the_schedule_after_warmup() -> None:
    calls: list[str] = []
    values = {"A": iter([1.0, 2.0, 3.0, 4.0, 5.0]), "B": iter([10.0, 20.0, 30.0, 40.0, 50.0])}

    def arm(name: str):
        def measure() -> float:
            calls.append(name)
            return next(values[name])
        return measure

    per = method.alternate({"A": arm("A"), "B": arm("B")}, rounds=4, warmup=1)
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]
    # the warm-up values (1.0, 10.0) are dropped; one value per round, in round order
    # round 0: A=2, B=20; round 1: B=30, A=3; round 2: A=4, B=40; round 3: B=50, A=5
    assert per["A"] == [2.0, 3.0, 4.0, 5.0]
    assert per["B"] == [20.0, 30.0, 40.0, 50.0]


def test_theil_sen_ignores_an_early_step() -> None:
    xs = list(range(11))
    ys = [0.0] * 2 + [8.0] * 9  # flat, with one jump early on: no steady growth
    slope, slopes = method.theil_sen_slope(xs, ys)
    assert slope == 0.0
    assert len(slopes) == 55
    # a jump in the middle is crossed by more than half of the pairs: it does count
    assert method.theil_sen_slope(xs, [0.0] * 5 + [8.0] * 6)[0] > 0
    steady = [2.0 * x for x in xs]
    assert method.theil_sen_slope(xs, steady)[0] == pytest.approx(2.0)


def test_paired_row_judges_the_median_ratio() -> None:
    row = method.paired_row("2", "host op", unit="us", baseline_name="before",
                            baseline=[100.0, 100.0, 100.0, 100.0, 100.0],
                            candidate=[102.0, 101.0, 104.0, 110.0, 100.0],
                            target=method.Target("<=", 1.03), scale=1e-3)
    assert row.ratio == pytest.approx(1.02)
    assert row.passed is True
    assert row.rounds == 5
    assert (row.q1, row.q3) == pytest.approx((1.01, 1.04))
    assert row.value == pytest.approx(0.102) and row.baseline == pytest.approx(0.1)
    data = row.as_dict()
    assert data["median"] == pytest.approx(1.02)
    assert data["iqr"] == pytest.approx(0.03)
    assert data["ratios"] == pytest.approx([1.02, 1.01, 1.04, 1.10, 1.00])
    assert data["rounds"] == 5


def test_paired_row_x_cheaper() -> None:
    row = method.paired_row("1", "vs patcher", unit="us", baseline_name="patcher",
                            baseline=[500.0, 600.0], candidate=[5.0, 5.0],
                            target=method.Target(">=", 150), invert=True)
    assert row.ratios == pytest.approx([100.0, 120.0])
    assert row.ratio == pytest.approx(110.0)
    assert row.passed is False


def test_value_row_judges_the_median_value() -> None:
    row = method.value_row("1", "enter+exit", unit="us", values=[4000.0, 6000.0, 4500.0],
                           target=method.Target("<=", 5.0, "us", on="value"), scale=1e-3)
    assert row.value == pytest.approx(4.5)
    assert row.passed is True
    assert row.judged == "value"
    assert row.as_dict()["median"] == pytest.approx(4.5)
    assert row.ratio is None and row.ratios == []


def test_target_text_and_missing_median() -> None:
    assert str(method.Target("<=", 1.03)) == "<= 1.03x"
    assert str(method.Target(">=", 150)) == ">= 150x"
    assert str(method.Target("<=", 20.0, "ms", on="value")) == "<= 20 ms"
    assert method.Target("<=", 1.0).meets(float("nan")) is None
    assert method.Target(">=", 0.95).meets(0.95) is True


def test_old_style_rows_still_build() -> None:
    # figures written before the method change build rows positionally
    row = method.Row("9", "m", 1.0, "ms", "-", None, None, "-", None, "note")
    assert row.rounds == 0 and row.ratios == [] and row.median is None
    assert row.as_dict()["iqr"] is None

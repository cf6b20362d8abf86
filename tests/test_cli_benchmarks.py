"""`python -m benchmarks.run`'s output: spreads as percentiles within the runs, and no profiler
chatter on the terminal (only its pieces are run here: the suite itself takes minutes)."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO))
    import benchmarks.common

    return benchmarks.common


def test_two_runs_far_apart_give_percentiles_between_them(common) -> None:
    row = common.summary([0.001, 0.101])  # seconds
    assert row["runs"] == 2 and row["median_ms"] == pytest.approx(51.0)
    # interpolated between the two runs: a quarter and three quarters of the way
    assert (row["p25_ms"], row["p75_ms"]) == (pytest.approx(26.0), pytest.approx(76.0))
    assert common.spread(row) == "     51.00 ms  (p25–p75 26.00–76.00)"


@pytest.mark.parametrize("seconds", [[0.002], [0.004, 0.001, 0.003], [0.001] * 9 + [1.0]])
def test_percentiles_lie_within_the_runs(common, seconds: list[float]) -> None:
    row = common.summary(seconds)
    low, high = 1e3 * min(seconds), 1e3 * max(seconds)
    assert low <= row["p25_ms"] <= row["median_ms"] <= row["p75_ms"] <= high


def test_peak_bytes_prints_no_profiler_notices(common, capfd: pytest.CaptureFixture[str]) -> None:
    def allocate() -> torch.Tensor:
        print("a warning of the measured code", file=sys.stderr)
        return torch.ones(1 << 16, dtype=torch.float64)

    peak = common.peak_bytes(allocate)
    out, err = capfd.readouterr()
    assert peak >= 8 << 16
    assert out == ""
    assert err == "a warning of the measured code\n"  # passed on; libkineto's start and stop lines are not

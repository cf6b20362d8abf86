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


def test_the_water_box_is_liquid_water_and_g2_molecules_stay_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message-passing benchmark's graphs: 64 molecules at 1 g/cm³, no two molecules closer than
    a liquid's hydrogen bonds, ~54 neighbours per atom within 5 Å; replicas the same box; the g2
    batch with no edge between two molecules."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.graphs import WATER_BOX, g2, water, water_box

    box = water_box()
    assert len(box) == 192 and box.get_chemical_formula() == "H128O64"
    grams = box.get_masses().sum() / 6.02214076e23
    assert abs(grams / (WATER_BOX * 1e-8) ** 3 - 1.0) < 0.01  # g/cm³
    graph = water(1)
    molecule = torch.arange(192) // 3
    apart = molecule[graph.src] != molecule[graph.dst]
    assert graph.vectors.norm(dim=1)[apart].min() >= 1.6  # Å: hydrogen-bond distances, no overlaps
    assert 45 < graph.edges / graph.atoms < 60
    assert water((1, 1, 2)).edges == 2 * graph.edges  # periodic replicas: the same neighbourhoods
    batch = g2()
    assert batch.atoms > 800 and batch.edges > 0
    sizes = [len(m) for m in __import__("ase.collections", fromlist=["g2"]).g2]
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    assert (owner[batch.src] == owner[batch.dst]).all()

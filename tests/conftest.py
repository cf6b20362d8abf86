"""Shared fixtures: every test gets its own compile cache, so no test sees another's entries."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run on the CPU through Triton's interpreter; Triton reads this when imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNELS = sorted((REPO / "kernels").glob("*.fus"))

#: Long-running tests: `pytest -m "not slow"` leaves them out (the quick subset for development);
#: a plain `pytest` (the README's command, CI) runs them too.
slow = pytest.mark.slow


def slow_unless(values, fast) -> list:
    """`values` for `parametrize`, each marked slow unless `fast(value)`: the quick subset keeps a few."""
    return [v if fast(v) else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=slow) for v in values]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite kernels/generated/* from the current compiler instead of diffing")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fusionc-cache"))

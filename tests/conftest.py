"""Shared fixtures: every test gets its own compile cache, so no test sees another's entries."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run on the CPU through Triton's interpreter; Triton reads this when imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNELS = sorted((REPO / "kernels").glob("*.fus"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite kernels/generated/* from the current compiler instead of diffing")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fusionc-cache"))

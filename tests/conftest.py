"""Shared fixtures: every test gets its own compile cache, so no test sees another's entries."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Triton kernels run on the CPU through Triton's interpreter; Triton reads this when imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def default_dtype(dtype):
    """torch's default dtype set for a block: e3nn builds its Wigner 3j and D matrices, and MACE
    its U matrices and weights, in the default dtype at construction time, so a float64
    reference must be built under float64 (a later `.double()` would keep float32 values)."""
    import torch

    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)
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


def mask_cases(name: str, fn, args: list) -> list[tuple[int, list, list[int] | None]]:
    """Per bit of a masked program's mask (a vector-Jacobian product `__d…`: its gradients; its own
    `__d2`: its cotangent inputs), (mask, the arguments, the outputs that mask computes): a product
    with one gradient wanted computes that one; its own, with one cotangent present (the others
    zero), computes all its outputs. [] for a program without a mask."""
    import inspect

    import torch

    names = list(inspect.signature(fn).parameters)
    if "_mask" not in names:
        return []
    inputs = names[:names.index("weight")]
    if name.endswith("__d2"):
        present = [k for k, i in enumerate(inputs) if i.startswith("d2_")]
        return [(1 << bit, [torch.zeros_like(a) if k in present and k != position else a for k, a in enumerate(args)],
                 None) for bit, position in enumerate(present)]
    outputs = len(fn.__doc__.split("->")[1].split("),"))
    return [(1 << k, args, [k]) for k in range(outputs)]

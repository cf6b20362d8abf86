"""Timing, peak memory and the matrix-product peak, shared by the CPU suite and its mace-torch
half (which runs in its own environment)."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

PASSES = ("forward", "forward+backward", "double backward")
#: How far a peer sharing fusionc's weights may be from it (relative; ×10 for the double backward)
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def run_pass(module: Callable, inputs: list[torch.Tensor], which: str, grad_input: int = 0) -> torch.Tensor:
    """One pass. forward+backward: a loss on the output, backpropagated to every input and weight.
    double backward (forces): the gradient of an energy with respect to input `grad_input` with
    create_graph=True, then a loss on it backpropagated to everything."""
    if which == "forward":
        with torch.no_grad():
            return module(*inputs)
    floats = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = module(*floats)
    if which == "forward+backward":
        out.pow(2).sum().backward()
        return out
    (force,) = torch.autograd.grad(out.pow(2).sum(), floats[grad_input], create_graph=True)
    force.pow(2).sum().backward()
    return force


def time_alternating(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each contender, taking turns call by call so that drifts in the
    machine's speed hit every contender alike."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, 25th and 75th percentiles, in milliseconds.

    The percentiles interpolate between the runs, so they lie between the fastest and the slowest
    (statistics.quantiles' default extrapolates past them: below zero for two runs far apart).

    >>> summary([0.001, 0.003])
    {'median_ms': 2.0, 'p25_ms': 1.5, 'p75_ms': 2.5, 'runs': 2}
    """
    ms = sorted(1e3 * s for s in seconds)
    p25, _, p75 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "p25_ms": p25, "p75_ms": p75, "runs": len(ms)}


def spread(row: dict) -> str:
    """How a timing row is printed: its median and its 25th to 75th percentiles."""
    return f"{row['median_ms']:>10.2f} ms  (p25–p75 {row['p25_ms']:.2f}–{row['p75_ms']:.2f})"


#: What libkineto writes to stderr at each start and stop of the profiler and of its stages.
_KINETO_NOTICE = re.compile(r"(USDT|STAGE):\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \w+\.cpp:\d+\] ")


@contextlib.contextmanager
def _without_kineto_notices() -> Iterator[None]:
    """Drop libkineto's start and stop notices from stderr, and pass everything else on.

    libkineto logs them at a level above its errors ('USDT:… profiler_start'), so KINETO_LOG_LEVEL
    cannot silence them without silencing its errors too: stderr goes to a file while the profiler
    runs, and its other lines are written out after.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _KINETO_NOTICE.match(line):
                    sys.stderr.write(line)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes torch allocates on the CPU during one call, beyond what was live before
    (from the profiler's allocation events)."""
    with _without_kineto_notices(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                            profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def matmul_peak(dtype: torch.dtype, size: int = 1536, repeats: int = 10) -> float:
    """GFLOP/s of a square matrix product on this machine, now, with the current thread count."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    seconds = time_alternating({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * size ** 3 / statistics.median(seconds) / 1e9


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def check_peers(label: str, contenders: dict, dtype: torch.dtype, grad_input: int) -> list[dict]:
    """Every pass of every peer that shares fusionc's weights gives fusionc's numbers and shapes
    (within TOLERANCE); the others (their own weights, or one output block per path rather than
    their sum) must give finite outputs. `contenders`: {name: (module, inputs, shares weights)}.
    Returns a record per peer and pass (`label` names the case in errors)."""
    checks = []
    mine, inputs, _ = contenders["fusionc"]
    for which in PASSES:
        expected = run_pass(mine, inputs, which, grad_input)
        for name, (module, their_inputs, shared) in contenders.items():
            if name == "fusionc":
                continue
            got = run_pass(module, their_inputs, which, grad_input)
            if (shared and got.shape != expected.shape) or not torch.isfinite(got).all():
                raise AssertionError(f"{label}/{name}/{which}: shape {tuple(got.shape)} (fusionc "
                                     f"{tuple(expected.shape)}) or non-finite values")
            error = relative_error(got, expected) if shared else None
            if shared and not error < TOLERANCE[dtype] * (10 if which == "double backward" else 1):
                raise AssertionError(f"{label}/{name}/{which}/{dtype}: relative difference {error:.2e} to fusionc")
            checks.append({"peer": name, "dtype": str(dtype)[6:], "pass": which, "relative_error": error})
    return checks


def write_readme(section: str, markdown: str, command: str) -> None:
    """Replace README.md's `<!-- SECTION:begin -->` … `<!-- SECTION:end -->` block with `markdown`,
    marked as written by `command`."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    path = Path(__file__).resolve().parents[1] / "README.md"
    text = path.read_text()
    if begin not in text or end not in text:
        raise RuntimeError(f"README.md has no {begin} … {end} section to write the results into")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n<!-- written by `{command}`; do not edit by hand -->\n\n{markdown}\n\n{end}{tail}")

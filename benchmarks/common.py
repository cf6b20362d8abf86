"""Timing, peak memory and the matrix-product peak, shared by the CPU suite and its mace-torch
half (which runs in its own environment)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

PASSES = ("forward", "forward+backward", "double backward")


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
    """Median and interquartile spread, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "q1_ms": q[0], "q3_ms": q[2], "runs": len(ms)}


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes torch allocates on the CPU during one call, beyond what was live before
    (from the profiler's allocation events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
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

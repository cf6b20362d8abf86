"""Re-fit the CPU machine model on this machine: `python -m benchmarks.calibrate [-o FILE]`.

Times the products the torch back end's cost model prices (`fusionc.machine.CpuBlas`) with torch on
this CPU, fits its figures, and writes a machine model (the shipped one with the CPU figures
replaced) that the planner reads when `FUSIONC_MACHINE` names it. Fitted, each in the model's time
unit (the time of `flops_per_unit` multiply-adds of a large matrix product):
- `copy`: making a permuted (rows, 5, 32) view contiguous, per element;
- `min_columns`, `batch_call`: a batch of small per-row products, (32 × k)·(k × c) at 2,000 rows,
  from two inner sizes (rows × columns dominate, plus a cost per matrix);
- `batched_penalty` (in FLOPs per FLOP): per-row (32 × 3)·(3 × 5) products against a large one;
- `op_cost` (in FLOPs): one tiny torch.einsum (views, a product, its result's view), at the large
  product's FLOP rate.
`CpuNative` and `GpuTriton` keep the shipped figures (native kernels compile per diagram; the GPU
figures come from ptxas reports, not timing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from fusionc import machine


def _seconds(fn, repeats: int = 60) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit(rows: int = 2000) -> tuple[machine.CpuBlas, dict[str, float]]:
    """The CPU figures fitted on this machine, and the raw timings they came from."""
    torch.manual_seed(0)
    a, b = torch.randn(rows * 5, 32), torch.randn(32, 32)
    large = _seconds(lambda: torch.mm(a, b))
    mac = large / (rows * 5 * 32 * 32)  # seconds per multiply-add of a large product
    unit = mac * machine.CpuBlas.flops_per_unit  # the model's time unit
    x = torch.randn(rows, 5, 32)
    copy = _seconds(lambda: x.permute(0, 2, 1).contiguous()) / x.numel()

    def per_row(inner: int, columns: int) -> float:
        p, q = torch.randn(rows, 32, inner), torch.randn(rows, inner, columns)
        return _seconds(lambda: torch.bmm(p, q)) / rows

    small3, small6 = per_row(3, 5), per_row(6, 5)
    # per matrix: 32 · inner · max(columns, min_columns) + batch_call units
    min_columns = max(1.0, (small6 - small3) / unit / (32 * 3))
    batch_call = max(0.0, small3 / unit - 32 * 3 * min_columns)
    penalty = (small3 / (32 * 3 * 5)) / mac
    tiny_a, tiny_b = torch.randn(2, 1, 3), torch.randn(3, 4)
    # a generated statement's overhead: views, a product and its result's view (einsum parses too)
    call = _seconds(lambda: torch.einsum("zui,ik->zuk", tiny_a, tiny_b), repeats=200)
    fitted = machine.CpuBlas(
        fitted_on=(f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads (benchmarks.calibrate)").replace("  ", " "),
        op_cost=round(call / mac * 2), batched_penalty=round(penalty, 1), copy=round(copy / unit, 1),
        min_columns=round(min_columns), batch_call=round(batch_call))
    raw = {"large_mm_gflops": 2 / mac / 1e9, "copy_ns_per_element": copy * 1e9,
           "bmm_32x3x5_us_per_row": small3 * 1e6, "bmm_32x6x5_us_per_row": small6 * 1e6,
           "tiny_call_us": call * 1e6}
    return fitted, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", default="machine.json",
                        help="where to write the model (default machine.json); use it with FUSIONC_MACHINE=FILE")
    args = parser.parse_args(argv)
    base = machine.parse(machine.DEFAULT_PATH.read_text())
    fitted, raw = fit()
    print("measured: " + ", ".join(f"{k} {v:.3g}" for k, v in raw.items()))
    for name in ("op_cost", "batched_penalty", "copy", "min_columns", "batch_call"):
        print(f"  cpu_blas.{name:<16}{getattr(base.cpu_blas, name):>12} -> {getattr(fitted, name)}")
    model = replace(base, cpu_blas=fitted)
    Path(args.output).write_text(model.to_json())
    print(f"wrote {args.output}: export FUSIONC_MACHINE={Path(args.output).resolve()} to plan with it")
    json.loads(Path(args.output).read_text())  # what the planner will read parses
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

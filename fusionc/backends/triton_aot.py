"""Ahead-of-time compilation of generated Triton kernels for a GPU this machine need not have.

Each kernel (a diagram's fused forward in every autotuning configuration, and the table kernel
that runs every derivative program, `fusionc.runtime.table_kernel`) is compiled with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", sm, 32))` for float32 rows, and its
cubin's resource usage is read with the `cuobjdump` that Triton ships: registers, shared memory,
local memory and the stack frame (register spills land in one of the last two). Kernels compile
in parallel, a process per CPU (`jobs`): Triton compiles one kernel on one CPU.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

from fusionc.analysis.program import ProgramSet
from fusionc.backends import triton_program
from fusionc.ir.diagram import Diagram

_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass(frozen=True)
class KernelReport:
    kernel: str
    target: str
    registers: int
    shared_bytes: int
    local_bytes: int
    stack_bytes: int
    flops_per_row: int
    bytes_per_row: int


def _cuobjdump() -> Path:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        raise RuntimeError(f"cuobjdump is not where Triton ships it ({tool})")
    return tool


def _signature(d: Diagram) -> dict[str, str]:
    types = {"irreps": "*fp32", "weights": "*fp32", "index": "*i64"}
    signature = {i.name: types[i.kind] for i in d.inputs}
    signature["weight"] = "*fp32"
    signature.update({f"{v.name}__out": "*fp32" for v in d.outputs})
    signature.update({"n": "i32", "BLOCK_Z": "constexpr", "BLOCK_U": "constexpr"})
    return signature


def _bytes_per_row(d: Diagram) -> int:
    """float32 traffic of one row: its inputs read, its outputs written (weights shared by rows
    are not counted; per-row weights are)."""
    total = 0
    for i in d.inputs:
        if i.kind == "irreps":
            total += 4 * i.irreps.dim
        elif i.kind == "index":
            total += 8
        else:
            total += 4 * next(t.weight_numel for t in d.vertices if t.weight_source == i.name)
    return total + sum(4 * v.irreps.dim for v in d.outputs)


def _kernels(module: ModuleType, ps: ProgramSet, which: str):
    """(name, the module's attribute holding the kernel and the attribute of that holding the
    function (or a runtime module's name and its kernel), signature, constexprs, compile options,
    FLOPs per row, bytes per row) of the kernels: the forward kernels' every configuration, then
    the table kernel, which runs the derivative programs and every program of a diagram with index
    spaces (their FLOPs and bytes per row summed)."""
    import triton.language as tl

    for dp in ps.programs:
        d, plan = dp.diagram, dp.plan
        if which in ("all", "forward") and not d.spaces:  # every configuration the autotuner may pick
            tuned = getattr(module, f"_{d.name}__kernel")
            for config in tuned.configs:
                block_z, block_u = config.kwargs["BLOCK_Z"], config.kwargs["BLOCK_U"]
                yield (f"_{d.name}__kernel[{block_z}x{block_u},{config.num_warps}w]", (f"_{d.name}__kernel", "fn"),
                       _signature(d), dict(config.kwargs), {"num_warps": config.num_warps, "maxnreg": config.maxnreg},
                       plan.planned_flops, _bytes_per_row(d))
    if which in ("all", "derivatives"):  # one kernel runs every derivative program's table
        model = ps.machine.gpu_triton
        programs = [v.triton for dp in ps.programs for v in dp.all() if v.triton is not None]
        if programs:
            costs = [triton_program.kernel_cost(p) for p in programs]
            yield ("_table_kernel", ("fusionc.runtime.table_kernel", "table_kernel"), TABLE_SIGNATURE,
                   {"BLOCK_Z": model.block_z, "CHUNK": model.chunk, "DTYPE": tl.float32, "LARGE": False},
                   {"num_warps": model.warps, "maxnreg": model.max_registers},
                   sum(f for f, _ in costs), sum(b for _, b in costs))


#: The table kernel's arguments for float32 rows (`fusionc.runtime.table_kernel.table_kernel`).
TABLE_SIGNATURE = {"buf": "*fp32", "idx": "*i64", "frame": "*i64", "table": "*i32", "coefs": "*fp32", "first": "i32",
                   "count": "i32", "n": "i32", "mask": "i32", "width": "i32", "slots": "i32", "rowbase": "i64",
                   "grouped": "i32", "BLOCK_Z": "constexpr", "CHUNK": "constexpr", "DTYPE": "constexpr",
                   "LARGE": "constexpr"}


#: The generated modules a process compiles kernels of, by path (a worker imports each once).
_MODULES: dict[str, ModuleType] = {}


def _compile(job: tuple) -> KernelReport:
    """Compile one kernel (`_kernels`' row, with the module's path and the target) and read its
    cubin's resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    path, target, (name, (attribute, field), signature, constexprs, options, flops, traffic) = job
    if path not in _MODULES:  # a worker process: the module, under a name of its own
        spec = importlib.util.spec_from_file_location(f"fusionc_aot_{len(_MODULES)}", path)
        assert spec and spec.loader
        _MODULES[path] = module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    holder = importlib.import_module(attribute) if attribute.startswith("fusionc.") else getattr(_MODULES[path], attribute)
    kernel = getattr(holder, field)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability(target), 32),
                              options={**options, "enable_fp_fusion": True})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(_cuobjdump()), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
    registers, stack, shared, local = map(int, _USAGE.search(usage).groups())
    return KernelReport(name, target, registers, shared, local, stack, flops, traffic)


def capability(target: str) -> int:
    """The compute capability a target names: sm_90 -> 90.

    >>> capability("sm_90")
    90
    """
    match = re.fullmatch(r"sm_(\d+)", target)
    if not match:
        raise ValueError(f"unknown target '{target}'; expected sm_80, sm_90, …")
    return int(match.group(1))


def compile_for(module: ModuleType, ps: ProgramSet, target: str, which: str = "all",
                jobs: int = 1) -> Iterator[KernelReport]:
    """Compile the kernels of a generated Triton module (rendered from `ps`, compiled for the Triton
    back end) for `target` (sm_80, sm_90, …): `which` is
    all, forward (the fused forward kernels) or derivatives (the derivative programs' kernels);
    `jobs` kernels at once, each in a process of its own where more than one. The reports come in
    the kernels' order, each as soon as it and those before it are compiled: a file's kernels
    take minutes."""
    capability(target)
    path = module.__file__
    _MODULES.setdefault(path, module)
    work = [(path, target, row) for row in _kernels(module, ps, which)]
    if jobs <= 1 or len(work) <= 1:
        yield from map(_compile, work)
        return
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(work))) as pool:
        yield from pool.imap(_compile, work)


#: The column titles of `format_report`'s rows.
REPORT_HEADER = (f"{'kernel':<40}{'target':>7}{'registers':>10}{'shared B':>10}{'local B':>9}{'stack B':>9}"
                 f"{'FLOPs/row':>11}{'bytes/row':>10}")


def format_report(r: KernelReport) -> str:
    """One row of the table under `REPORT_HEADER`."""
    return (f"{r.kernel:<40}{r.target:>7}{r.registers:>10}{r.shared_bytes:>10}{r.local_bytes:>9}"
            f"{r.stack_bytes:>9}{r.flops_per_row:>11,}{r.bytes_per_row:>10,}")

"""The machine model: every fitted constant the planner and the code generators choose by, one
named dataclass per target, each saying what it was fitted on.

- `CpuBlas`: torch code on the CPU, whose pairwise products are matrix products (MKL);
- `CpuNative`: the CPU's native kernels (C, one loop over rows per run of row-local statements);
- `GpuTriton`: Triton kernels on an NVIDIA GPU.

`python -m benchmarks.calibrate` re-fits the CPU figures on the machine it runs on and writes a
JSON file of them; the planner reads `$FUSIONC_MACHINE` if set, else the shipped default
(`fusionc/machine.json`, fitted on the machine in its `fitted_on`). A field the file lacks keeps
its default here. Generated code depends on these figures, so the compile cache keys on them and
every generated file names the model it was planned with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

#: The model that ships with the package.
DEFAULT_PATH = Path(__file__).with_name("machine.json")


@dataclass(frozen=True)
class CpuBlas:
    """torch code on the CPU: each pairwise product one torch.mm / bmm / broadcast product.

    Times are in units of `flops_per_unit` multiply-adds of a large matrix product (about 0.08 ns
    where fitted); a batch of small products is dominated by its rows, each as slow as
    `min_columns` columns, plus `batch_call` units per matrix."""

    fitted_on: str = "2-core x86-64 (AVX-512), torch 2.13 CPU, MKL, 2 threads"
    #: rows assumed when choosing contraction orders and lowerings: any batch from a few hundred
    #: rows up chooses alike
    planning_rows: int = 1024
    #: what one torch call costs beyond its FLOPs, in FLOPs: about 10 µs at 100 GFLOP/s
    op_cost: float = 1_000_000
    #: cost per FLOP of a product batched over rows with something summed (per row, tiny matrices)
    #: relative to one whose rows fold into one large side: (32 × 3)·(3 × 5) per row at about
    #: 4 GFLOP/s against about 95 GFLOP/s for (2,000·5 × 32)·(32 × 32)
    batched_penalty: float = 16
    #: time of copying one element (a permuted view made contiguous), in time units
    copy: float = 6
    #: multiply-adds of one large matrix product per time unit (the unit's definition)
    flops_per_unit: float = 4
    #: a batched product's rows cost at least this many columns (a vector register's worth)
    min_columns: int = 16
    #: time per matrix of a batched product
    batch_call: float = 500
    #: FLOPs an element of a pairwise intermediate costs to write and read back (its memory traffic)
    element_cost: float = 1
    #: whether CG contractions run over the tables' non-zeros (`CpuNative.sparse_cg`); torch code
    #: contracts dense blocks
    sparse_cg: bool = False


@dataclass(frozen=True)
class CpuNative:
    """The CPU's native kernels (`fusionc.backends.native`)."""

    fitted_on: str = "2-core x86-64 (AVX-512), gcc 12.2 -O3 -fno-predictive-commoning / -O1 -march=native, OpenMP, 2 threads"
    #: as `CpuBlas.batched_penalty`, for products a native kernel runs within each row: fc_tp's
    #: (32 × 5)·(5 × 10) per row at about 30 GFLOP/s, against about 130 for its matrix products
    batched_penalty: float = 4
    #: elements of a shared operand (weights, a constant matrix), or of a shared tensor summed over
    #: rows (a weight gradient), beyond which a product is a matrix product for the BLAS: up to this
    #: (32 KiB in float32) it stays in L1 while every row reads or adds to it, and a native
    #: statement fused with its neighbours beats MKL on these short products (fc_tp's forward+
    #: backward 16% faster, mace_product's 46%)
    shared_native: int = 8192
    #: FLOPs an element of a pairwise intermediate costs (it stays in a per-row buffer, in cache)
    element_cost: float = 1
    #: labels at least this long are worth vectorising over
    vector_min: int = 4
    #: a statement summing into a vector of at most this many elements sums in registers first
    accumulator_max: int = 128
    #: contract CG tables channel by channel as loops over their non-zeros (`sparse_cg`), rather than
    #: factorized into dense pairwise products
    sparse_cg: bool = True
    #: programs of at most this many C statements (about a line each as first written) compile at
    #: -O3 (`runtime.native.O3_FLAGS`), longer ones at -O1 with the
    #: vectoriser (gcc's time grows faster than linearly with a function's length at -O3): -O3's full
    #: unrolling of the short loops over CG components keeps a statement's vector sums in registers
    #: (fc_tp's programs 10-20% faster than at -O1); it takes 4x as long to compile the largest
    o3_lines: int = 2500
    #: a loop over a CG table's non-zeros counts as this many lines per non-zero towards o3_lines:
    #: gcc -O3 spends its time on them (alias walking, PRE): fusion_block_3's gradient, 2,246 lines
    #: with 1,285 non-zeros, took 29 s to compile at -O3 and 2 s at -O1, and ran faster at -O1
    sparse_weight: float = 2
    #: a kernel whose channel loops are all this short or shorter (one AVX-512 vector of float32)
    #: counts `narrow_weight` times towards o3_lines: its loops vanish into single vector operations,
    #: gcc -O3 unrolls whole nests of component loops around them into straight-line code and then
    #: spends 6-8 ms per C statement (alias walking) against 1.2-1.6 where channels are 32 or 64:
    #: cormorant_message's second derivative, 2,421 statements, 19 s at -O3 and 2.3 s at -O1
    narrow_channels: int = 16
    narrow_weight: float = 5
    #: a program's kernels compile as translation units of about this many C statements each, at
    #: most one per CPU, in parallel (-O1 compiles about 1,000 a second here)
    unit_lines: int = 1000
    #: C statements a statement counts as towards o3_lines, where the schedule pass decides which
    #: kernels to write as tables (too long for -O3: their statements one table, run by one loop)
    #: before any C is written (about what the C has per statement)
    statement_lines: float = 4


@dataclass(frozen=True)
class GpuTriton:
    """Triton kernels on an NVIDIA GPU (sm_80, sm_90), float32.

    A derivative program's statement is a product of register tiles (`fusionc.runtime.table_kernel`);
    its temporaries live in global memory, so a pairwise intermediate costs its bytes as well as its
    FLOPs, and products batched over rows cost no more per FLOP than any other (no BLAS to lose)."""

    fitted_on: str = "not timed: register and spill figures from ptxas for sm_80 and sm_90"
    #: products batched over rows cost this many FLOPs per FLOP
    batched_penalty: float = 1
    #: contract CG tables over their non-zeros: not yet, derivative kernels contract dense blocks
    sparse_cg: bool = False
    #: FLOPs one element written to and read back from global memory costs (an H100 does about
    #: 60 FLOPs per byte of DRAM bandwidth in float32; an element is written once and read once)
    element_cost: float = 16
    #: rows per program instance of the table kernel (derivative programs)
    block_z: int = 16
    #: columns per step of a gather or a scatter
    chunk: int = 128
    warps: int = 8
    #: registers a thread may use (`.maxnreg`): without it ptxas may stop at 128 and spill
    max_registers: int = 255


@dataclass(frozen=True)
class Machine:
    cpu_blas: CpuBlas = CpuBlas()
    cpu_native: CpuNative = CpuNative()
    gpu_triton: GpuTriton = GpuTriton()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def digest(self) -> str:
        """A short hash of every figure: generated code names the model it was planned with."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _section(kind: type, data: dict):
    known = {f.name for f in fields(kind)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields in the machine model: {', '.join(sorted(unknown))}")
    return kind(**data)


def parse(text: str) -> Machine:
    """A machine model from its JSON text."""
    data = json.loads(text)
    return Machine(*(_section(f.type if isinstance(f.type, type) else globals()[f.type], data.get(f.name, {}))
                     for f in fields(Machine)))


def path() -> Path:
    """Where the planner reads its model: `$FUSIONC_MACHINE`, else the shipped default."""
    return Path(os.environ.get("FUSIONC_MACHINE") or DEFAULT_PATH)


@functools.lru_cache(maxsize=4)
def _load(location: str, stamp: float) -> Machine:
    return parse(Path(location).read_text())


def cpus() -> int:
    """The CPUs this process may run on (compilers run one per CPU)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def current() -> Machine:
    """The model the planner uses now (re-read when its file changes)."""
    where = path()
    try:
        return _load(str(where), where.stat().st_mtime)
    except FileNotFoundError:
        raise ValueError(f"machine model {where} does not exist (FUSIONC_MACHINE)") from None

"""The `schedule` pass: which native kernels run their statements from a table, and in those the
statements of one form next to each other, so that the code grows with the kinds of statement in
a program rather than with their number, and the table loop calls one form's function many times
in a row.

Two statements have one form when their code differs only in values a back end reads from a table:
in native kernels (`fusionc.backends.native`) too long for -O3, where the operands are, the
coefficient and the mask bits; a CG table's non-zeros, looped over, are the same code for every
table. Statements
move only as what each reads and writes allows (`fusionc.analysis.program.scheduled`); a native
kernel's statements stay within it. (Triton programs need no schedule: one kernel, written once,
interprets each program's table of statements; `fusionc.runtime.table_kernel`.)
"""

from __future__ import annotations

from dataclasses import replace

from fusionc.algebra.cg import cg_entries
from fusionc.analysis.program import Einsum, Kernel, Program, View, cg_degrees, scheduled, sparse_cg
from fusionc.machine import CpuNative


def native(p: Program, model: CpuNative) -> Program:
    """p (segmented) with the statements of one form together in each kernel too long for -O3
    (`CpuNative.o3_lines`, its statements counted at `statement_lines` each and its loops over CG
    tables at `sparse_weight` per non-zero, as the compile rule counts the C): those kernels are
    `tabled`. Shorter ones stay as they are: -O3 compiles them written out, and reordered they
    ran slower (fusion_block's forward, 25%: its temporaries further from where they are read)."""
    def size(k: Kernel) -> float:
        total = 0.0
        for s in k.statements:
            table = sparse_cg(p, s)
            nonzeros = len(cg_entries(*cg_degrees(s.operands[table].tensor))) if table is not None else 0
            total += model.statement_lines + model.sparse_weight * nonzeros
        return total

    def form(s: Einsum) -> tuple:
        table = sparse_cg(p, s)
        loose = set(s.operands[table].labels) if table is not None else set()

        def shape(v: View) -> tuple:
            return v.labels, tuple(n for c, n in zip(v.labels, v.shape) if c not in loose)

        operands = tuple((*shape(v), p.tensors[v.tensor].rows,
                          v.tensor if p.tensors[v.tensor].kind == "const" and k != table else "")
                         for k, v in enumerate(s.operands))
        return s.when is None, s.coeff == 1.0, shape(s.out), operands

    return replace(p, statements=tuple(
        replace(s, statements=scheduled(p, list(s.statements), form), tabled=True)
        if isinstance(s, Kernel) and size(s) > model.o3_lines else s for s in p.statements))


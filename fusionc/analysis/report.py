"""What runs: a program set's programs as the generated code executes them (`check --explain`).

The plan (`fusionc.analysis.plan`) counts FLOPs over CG non-zeros, to compare ways of sharing
couplings; the code that runs contracts dense blocks (CG tables, zeros included, as matrix
products or native loops). This report reads the programs the back end renders, after every
pass, and counts what they do.
"""

from __future__ import annotations

from math import prod

from fusionc.analysis.program import DiagramPrograms, Einsum, Gather, Kernel, Program, Statement, pretty_view


def flops(p: Program, s: Einsum) -> tuple[int, int]:
    """(FLOPs per row, FLOPs per call) of a statement as run: a multiply-add per element of its
    index space (a copy: one per element). Statements with no row operand run once per call."""
    sizes: dict[str, int] = {}
    for v in (s.out, *s.operands):
        sizes.update(zip(v.labels.replace("z", ""), v.shape))
    count = (2 if len(s.operands) > 1 else 1) * prod(sizes.values())
    rows = any(p.tensors[v.tensor].rows for v in (s.out, *s.operands))
    return (count, 0) if rows else (0, count)


def _kind(s: Statement) -> str:
    if isinstance(s, Gather):
        return "gather"
    if not isinstance(s, Einsum):
        return "scatter"
    return "torch" if len(s.operands) > 1 else "copy"


def _line(p: Program, s: Statement, kind: str) -> str:
    per_row, per_call = flops(p, s) if isinstance(s, Einsum) else (0, 0)
    what = " · ".join(pretty_view(p, v) for v in p.reads(s))
    cost = f"{per_row:>10,}" if per_call == 0 else f"{per_call:>9,}*"
    return f"    {kind:<16}{cost}  {pretty_view(p, s.out)} += {what}"


def totals(p: Program) -> tuple[int, int, int, int]:
    """(statements, native kernels, FLOPs per row, FLOPs per call) of p as run."""
    statements = kernels = per_row = per_call = 0
    for s in p.statements:
        inner = s.statements if isinstance(s, Kernel) else (s,)
        kernels += isinstance(s, Kernel)
        for t in inner:
            statements += 1
            if isinstance(t, Einsum):
                r, c = flops(p, t)
                per_row, per_call = per_row + r, per_call + c
    return statements, kernels, per_row, per_call


def explain_run(d: DiagramPrograms) -> str:
    """The forward program as the CPU runs it, statement by statement, and every program's totals."""
    forward = d.forward.native or d.forward.torch
    lines = ["  as it runs on the CPU (torch code, and native kernels where a run of statements is row-local);",
             "  FLOPs as run: dense blocks, CG zeros included; * once per call (weights and constants only)"]
    if forward is not None:
        lines.append(f"  forward {forward.name}:")
        lines.append(f"    {'runs as':<16}{'FLOPs/row':>10}  statement")
        for s in forward.statements:
            if isinstance(s, Kernel):
                for t in s.statements:
                    lines.append(_line(forward, t, f"native {s.name.rsplit('__', 1)[1]}"))
            else:
                lines.append(_line(forward, s, _kind(s)))
    lines.append(f"  {'program':<40}{'statements':>11}{'native kernels':>15}{'FLOPs/row':>12}{'FLOPs/call':>12}")
    for v in d.all():
        p = v.native or v.torch
        if p is not None:
            n, k, r, c = totals(p)
            lines.append(f"  {p.name:<40}{n:>11,}{k:>15,}{r:>12,}{c:>12,}")
    return "\n".join(lines)

"""The `segment` pass: a program as the CPU runs it, torch statements and native kernels.

Every run of consecutive row-local statements becomes one `Kernel` (one C function, one loop over
rows): products within a row, with per-row or small shared operands (`CpuNative.shared_native`),
and sums over rows into small shared tensors. Matrix products against larger shared weights or
constants and sums over rows into larger shared tensors (torch.mm), gathers and scatters stay
torch statements.

A row tensor that only native code writes is one flat (n, size) tensor the kernels accumulate
into, in place: a matrix product into it is written to a temporary in the product's own layout
(`_mm<k>`), which a native statement then adds in; no pieces to sum, no concatenation, no permuted
copies. Temporaries written and read only within one kernel live in per-row buffers. A row operand
that a matrix product would copy (a block of x in (u, i) order read as ((rows, i), u), say) is
copied once by a native statement (`_copy<k>`), in an order the product reads as it is.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations
from math import prod

from fusionc.analysis.layout import matrix_copies, plan_pair, row_view
from fusionc.analysis.program import (PLANNING_ROWS, Einsum, Gather, Kernel, Program, Scatter, Statement, Tensor,
                                      View, group, row_space, scheduled, view_layout)
from fusionc.machine import CpuBlas, CpuNative


class _Segmenter:
    def __init__(self, p: Program, model: CpuNative, blas: CpuBlas) -> None:
        self.p = replace(p, tensors=dict(p.tensors))  # copies and products' temporaries are added
        self.model, self.blas = model, blas
        self.out: list[Statement | Kernel] = []
        self.segment: list[tuple[float, Einsum]] = []
        self.written_at: dict[str, list[float]] = {}
        self.read_at: dict[str, list[float]] = {}
        for k, s in enumerate(p.statements):
            self.written_at.setdefault(s.out.tensor, []).append(k)
            for v in p.reads(s):
                self.read_at.setdefault(v.tensor, []).append(k)
        self.natives = {k for k, s in enumerate(p.statements) if self.row_local(s) or self.added_in(s)}
        self.owned = {t for t, ks in self.written_at.items() if all(k in self.natives for k in ks)}
        self.allocated: set[str] = set()
        self.relayouts: dict[tuple[View, str, int | None], View] = {}  # (view, label order, when) -> its copy

    def row_local(self, s: Statement) -> bool:
        """Whether s runs row by row: a gather or scatter of rows by an index into another space
        (`in_place`), or an einsum with no shared operand beyond `shared_native`, and either no sum
        over rows or a sum over rows into a shared tensor of at most `shared_native` elements (a
        weight gradient: each thread sums its rows, then the threads' sums are added in order)."""
        if isinstance(s, (Gather, Scatter)):
            return s.sets == 0
        if not isinstance(s, Einsum):
            return False
        summed = set("".join(v.labels for v in s.operands)) - set(s.out.labels)
        shared = [v for v in s.operands if not self.p.tensors[v.tensor].rows]
        if not all(v.numel <= self.model.shared_native for v in shared):
            return False
        if s.out.labels.startswith("z"):
            return "z" not in summed
        return "z" in summed and self.p.tensors[s.out.tensor].size <= self.model.shared_native

    def added_in(self, s: Statement) -> bool:
        """Whether s is a matrix product into a row tensor that others write too, or an output:
        written to a temporary in the product's layout, and added in by a native statement."""
        if not isinstance(s, Einsum) or len(s.operands) != 2 or not s.out.labels.startswith("z"):
            return False
        t = s.out.tensor
        if self.p.tensors[t].kind != "output" and len(self.written_at[t]) == 1:
            return False
        plan = plan_pair(*(view_layout(v, self.p.tensors[v.tensor]) for v in s.operands), s.out.labels, self.blas)
        return plan is not None and plan.natural.startswith("z")

    def run(self) -> Program:
        for position, s in enumerate(self.p.statements):
            self.statement(position, s)
        self.flush()
        return replace(self.p, statements=tuple(self.out))

    def statement(self, position: int, s: Statement) -> None:
        if position not in self.natives:
            if isinstance(s, Einsum):
                s = self.relaid(s, position)
            touched = {v.tensor for _, t in self.segment for v in (t.out, *t.operands)}
            if any(v.tensor in touched for v in (s.out, *self.p.reads(s))):
                self.flush()  # it depends on the segment, or the segment on it; else it runs first
            self.out.append(s)
            return
        if not self.row_local(s):  # the product into a temporary, then added in natively
            s = self.relaid(s, position)
            self.flush()
            plan = plan_pair(*(view_layout(v, self.p.tensors[v.tensor]) for v in s.operands), s.out.labels, self.blas)
            sizes = dict(zip(s.out.labels.replace("z", ""), s.out.shape))
            shape = tuple(sizes[c] for c in plan.natural if c != "z")
            name = self.fresh("_mm")
            self.p.tensors[name] = Tensor(name, "temp", prod(shape), True, space=row_space(self.p, s))
            product = View(name, 0, shape, plan.natural)
            self.out.append(replace(s, out=product))
            s = Einsum(s.out, (product,), note="", when=s.when)
        self.enqueue(position, in_place(s))

    def fresh(self, prefix: str) -> str:
        """A tensor name the program does not use."""
        k = 0
        while f"{prefix}{k}" in self.p.tensors:
            k += 1
        return f"{prefix}{k}"

    def enqueue(self, position: float, s: Einsum) -> None:
        inside = {k for k, _ in self.segment}
        statements = [t for _, t in self.segment]
        summing = {t.out.tensor for t in statements if not self.p.tensors[t.out.tensor].rows}
        scattered = {t.out.tensor: t.out.index for t in statements if t.out.index}
        written = {t.out.tensor for t in statements}
        read = {v.tensor for t in statements for v in t.operands}
        if (any(v.tensor in summing or v.tensor in scattered for v in s.operands)  # complete after its kernel
                or any(v.index and v.tensor in written for v in s.operands)  # a gather reads complete rows
                or s.out.index and (s.out.tensor in read or any(i != s.out.index for i in scattered.values()))
                or statements and row_space(self.p, s) != row_space(self.p, statements[0])):
            self.flush()
            inside = set()
        for v in s.operands:  # a tensor partly written outside the segment is read as torch assembles it
            writers = self.written_at.get(v.tensor, [])
            if v.tensor not in self.owned and any(k in inside for k in writers) and not all(
                    k in inside for k in writers):
                self.flush()
                break
        self.segment.append((position, s))

    def relaid(self, s: Einsum, position: int) -> Einsum:
        """s with each row operand that its matrix product would copy replaced by a copy a native
        statement makes, in an order the product reads as it is; a copy serves every product of
        the program that needs it."""
        if len(s.operands) != 2:
            return s
        layouts = [view_layout(v, self.p.tensors[v.tensor]) for v in s.operands]
        plan = plan_pair(*layouts, s.out.labels, self.blas)
        if plan is None or not plan.copies:
            return s
        operands = list(s.operands)
        for k, v in enumerate(s.operands):
            groups = (plan.batch, plan.left, plan.summed) if k == 0 else (plan.batch, plan.summed, plan.right)
            if not self.p.tensors[v.tensor].rows or not matrix_copies(layouts[k], *groups):
                continue
            sizes = dict(zip(v.labels.replace("z", ""), v.shape))
            best = None  # the row-first order whose product is fastest without copying this operand
            for order in ["z" + "".join(q) for q in permutations(v.labels.replace("z", ""))]:
                trial = list(layouts)
                trial[k] = row_view(order, (PLANNING_ROWS, *(sizes[c] for c in order[1:])))
                again = plan_pair(*trial, s.out.labels, self.blas)
                mine = (again.batch, again.left, again.summed) if k == 0 else (again.batch, again.summed, again.right)
                if not matrix_copies(trial[k], *mine) and (best is None or again.time < best[0]):
                    best = (again.time, order)
            if best is None or best[0] >= plan.time:
                continue
            key = (v, best[1], s.when)  # a copy runs when its products do
            if key not in self.relayouts:
                order = best[1]
                shape = tuple(sizes[c] for c in order[1:])
                name = self.fresh("_copy")
                self.p.tensors[name] = Tensor(name, "temp", prod(shape), True, space=row_space(self.p, s))
                self.written_at[name] = [position - 0.5]
                self.owned.add(name)
                self.relayouts[key] = View(name, 0, shape, order)
                self.enqueue(position - 0.5, Einsum(self.relayouts[key], (v,), note="", when=s.when))
            self.read_at.setdefault(self.relayouts[key].tensor, []).append(position)
            operands[k] = self.relayouts[key]
            layouts[k] = view_layout(operands[k], self.p.tensors[operands[k].tensor])
        return replace(s, operands=tuple(operands))

    def flush(self) -> None:
        if not self.segment:
            return
        original, self.segment = self.segment, []
        inside = {k for k, _ in original}
        segment = _fused(original, self.p, self.written_at, self.read_at)
        last = max(inside)
        p = self.p
        homes: dict[str, str] = {}
        ready = []
        for _, s in segment:
            t = s.out.tensor
            if t in homes:
                continue
            if t not in self.owned:
                homes[t] = "piece"
            elif (t in p.outputs or t in self.allocated or not p.tensors[t].rows
                  or any(k not in inside for k in self.written_at[t])
                  or any(k not in inside for k in self.read_at.get(t, []))):
                homes[t] = "add" if t in self.allocated else "new"  # the first kernel zeroes each row
                self.allocated.add(t)
                if max(self.written_at[t]) <= last:
                    ready.append(t)
            else:
                homes[t] = "local"
        count = sum(isinstance(s, Kernel) for s in self.out)
        statements = tuple(s for _, s in segment)
        by = next((s.out.index for s in statements if s.out.index), None)
        self.out.append(Kernel(f"{p.name}__s{count}", statements, tuple(homes.items()), tuple(ready),
                               space=row_space(p, statements[0]), by=by))


def in_place(s: Statement) -> Einsum:
    """A gather or scatter of rows by an index as a native statement: a copy whose source (gather)
    or output (scatter) is read or written at row `index[z]`; an einsum as it is."""
    if isinstance(s, Gather):
        return Einsum(s.out, (replace(s.source, index=s.index),), note=s.note, when=s.when)
    if isinstance(s, Scatter):
        return Einsum(replace(s.out, index=s.index), (s.source,), note=s.note, when=s.when)
    return s


def _fused(segment: list[tuple[float, Einsum]], p: Program, written_at: dict[str, list[float]],
           read_at: dict[str, list[float]]) -> list[tuple[float, Einsum]]:
    """A kernel's statements with its gathers and scatters done in place: a temporary that a gather
    fills (`x[src]`) and only the kernel reads is read where the gather reads it, row `src[z]` of
    x; one that only the kernel writes and only a scatter reads (the messages `m[dst] += …` sums)
    is written where the scatter adds it, row `dst[z]` of m. Per-edge rows then exist only as the
    operands of each statement, never in memory."""
    inside = {k for k, _ in segment}
    moved: dict[str, tuple[str, str]] = {}  # temporary -> (the tensor it stands for, the index)
    dropped = set()
    for k, s in segment:
        whole = len(s.operands) == 1 and s.out.labels == s.operands[0].labels == "zp" and s.out.start == 0
        if not whole or s.operands[0].start or s.out.numel != p.tensors[s.out.tensor].size:
            continue  # only a copy of whole rows (as `in_place` makes of one) stands for its tensor
        (source,) = s.operands
        if source.index and not s.out.index:  # a gather
            temp, target = s.out.tensor, source
            alone = written_at[temp] == [k] and all(j in inside for j in read_at.get(temp, []))
        elif s.out.index and not source.index:  # a scatter
            temp, target = source.tensor, s.out
            alone = read_at.get(temp) == [k] and all(j in inside for j in written_at[temp])
        else:
            continue
        if alone and p.tensors[temp].kind == "temp" and temp not in moved:
            moved[temp] = (target.tensor, target.index)
            dropped.add(k)

    def placed(v: View) -> View:
        if v.tensor not in moved:
            return v
        tensor, index = moved[v.tensor]
        return replace(v, tensor=tensor, index=index)

    return [(k, replace(s, out=placed(s.out), operands=tuple(map(placed, s.operands))))
            for k, s in segment if k not in dropped]


def channels_inner(p: Program) -> Program:
    """p with every temporary that only native kernels touch laid out channels last: each of its
    views (rows, channels, components) becomes (rows, components, channels), the same elements in
    another order, so that the kernels' loops over channels — innermost, vectorised — read and
    write it contiguously, with no per-row copy (it is their own memory: torch code never sees it).
    A temporary viewed any other way keeps its layout."""
    views: dict[str, set[View]] = {}
    outside: set[str] = set()
    for s in p.statements:
        inner = s.statements if isinstance(s, Kernel) else (s,)
        for t in inner:
            for v in (t.out, *p.reads(t)):
                if isinstance(s, Kernel):
                    views.setdefault(v.tensor, set()).add(v)
                else:
                    outside.add(v.tensor)
    moved = set()
    for tensor, seen in views.items():
        if (tensor in outside or p.tensors[tensor].kind != "temp" or not p.tensors[tensor].rows
                or any(v.index for v in seen)):
            continue
        shapes = {(v.start, v.shape) for v in seen}
        if all(len(v.labels) == 3 and v.labels[0] == "z" and v.shape[0] > v.shape[1] for v in seen) and len(
                {start for start, _ in shapes}) == len(shapes):
            moved.add(tensor)

    def turned(v: View) -> View:
        if v.tensor not in moved:
            return v
        return replace(v, labels="z" + v.labels[2] + v.labels[1], shape=(v.shape[1], v.shape[0]))

    def statement(t: Einsum) -> Einsum:
        return replace(t, out=turned(t.out), operands=tuple(map(turned, t.operands)))

    return replace(p, statements=tuple(replace(s, statements=tuple(map(statement, s.statements)))
                                       if isinstance(s, Kernel) else s for s in p.statements))


def _traffic(p: Program) -> tuple[int, int]:
    """What a segmented program moves through memory per row, roughly: the elements its kernels
    write to row tensors (rather than per-row buffers), then its count of kernels."""
    kernels = [s for s in p.statements if isinstance(s, Kernel)]
    return (sum(p.tensors[t].size for k in kernels for t, how in k.homes if how != "local" and p.tensors[t].rows),
            len(kernels))


def by_space(p: Program, masks: bool = False) -> Program:
    """p with the statements of each index space together as far as what each reads and writes
    allows (with `masks`, those of each space and mask bits): a kernel or launch runs the rows of
    one space, so per-node statements between per-edge ones would cut the edges' run in two. A
    program without spaces as it is."""
    if not any(t.space for t in p.tensors.values()):
        return p

    def space(s: Statement) -> str | None:
        if isinstance(s, Einsum):
            return row_space(p, s)
        return p.tensors[s.source.tensor if isinstance(s, Scatter) else s.out.tensor].space

    key = (lambda s: (space(s), s.when)) if masks else space
    return replace(p, statements=scheduled(p, list(p.statements), key))


def segment(p: Program, model: CpuNative, blas: CpuBlas) -> Program | None:
    """p as the CPU runs it: its row-local runs as `Kernel`s (by `model`), the rest torch code whose
    matrix products `blas` lays out, the kernels' own temporaries channels last (`channels_inner`);
    None when it has no kernel (torch code alone runs it). A masked program is cut with the
    statements of each mask bits together (`group`) and as it is, whichever moves less through memory
    (together where they tie): together, a masked call skips whole kernels and runs long stretches
    of each; as it is, more temporaries may stay in per-row buffers (mace_product's second
    derivative: 5,000 elements per row to memory against 24,000 grouped, 13 ms against 28). In a
    program with index spaces, the statements of each space are kept together first (a kernel's
    rows are those of one space: per-node statements between per-edge ones would cut the edges'
    kernel in two, and hold what passes between the halves in memory per edge)."""
    if any(t.space for t in p.tensors.values()):
        candidates = (by_space(p, masks=True), by_space(p))
    else:
        candidates = (group(p), p) if p.keys else (p,)
    cut = min((_Segmenter(q, model, blas).run() for q in candidates), key=_traffic)
    if not any(isinstance(s, Kernel) for s in cut.statements):
        return None
    return channels_inner(cut) if model.sparse_cg else cut

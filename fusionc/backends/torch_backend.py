"""The torch back end: emits a readable, deterministic Python module, one nn.Module per diagram.

Each diagram becomes programs of labelled contractions (`fusionc.analysis.program`): the forward,
its vector-Jacobian product per output, and per input that product's own; each is written as
straight-line torch code — pairwise contractions over rows z, channels u/v/w and components
i/j/k in the order the CPU cost model chooses, each one torch.mm / torch.bmm on operands laid out
so that their views copy least (`fusionc.analysis.layout`), products with a summed size of 1 as
broadcast products; CG tables and stacked CG matrices as buffers, weights as views of a flat
vector laid out as e3nn lays it out; every intermediate freed after its last read — and
registered as a custom op whose autograd runs the next programs' ops.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import replace
from itertools import permutations
from typing import Callable

from math import prod

from fusionc.analysis.layout import matrix_copies, plan_pair, row_view
from fusionc.backends import native
from fusionc.analysis.plan import DiagramPlan, plan_diagram
from fusionc.analysis.program import (NATIVE_PENALTY, PLANNING_ROWS, Einsum, Gather, Program, Statement, Tensor,
                                      View, derivative, factorize, lower, prune, view_layout)
from fusionc.ir.diagram import CouplingVertex, Diagram
from fusionc.version import __version__


class CodeWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str = "") -> None:
        self.lines.append(("    " * self.depth + line) if line else "")

    def indent(self) -> None:
        self.depth += 1

    def dedent(self) -> None:
        self.depth -= 1


def _weight_inputs(d: Diagram) -> dict[str, CouplingVertex]:
    return {t.weight_source: t for t in d.vertices if t.weight_source is not None}


def _emit_class(w: CodeWriter, d: Diagram, forward: Program) -> None:
    irreps_inputs = [i for i in d.inputs if i.kind == "irreps"]
    weight_inputs = _weight_inputs(d)
    outputs = d.outputs
    w(f"class {d.name}(rt.FusionModule):")
    w.indent()
    w('"""' + "; ".join(f"{v.name} = {' + '.join(t.text for t in v.terms)}" for v in outputs))
    w()
    for i in d.inputs:
        kind = {"irreps": str(i.irreps), "index": f"index({i.size})"}.get(
            i.kind, f"weights ({weight_inputs[i.name].weight_numel} per row)" if i.kind == "weights" else "")
        w(f"in  {i.name} : {kind}")
    for v in d.values:
        w(f"{'out' if v.is_output else 'let'} {v.name} : {v.irreps}")
    w('"""')
    w()
    w(f"irreps_in = {tuple(str(i.irreps) for i in irreps_inputs)!r}")
    w(f"irreps_out = {tuple(str(v.irreps) for v in outputs)!r}")
    w(f"weight_numel = {d.internal_weight_numel}")
    w(f"input_weight_numel = { {k: t.weight_numel for k, t in weight_inputs.items()}!r}")
    tables = tuple(tuple(int(x) for x in c[3:].split("_")) for c in forward.constants if c.startswith("cg_"))
    w(f"cg_tables = {tables!r}")
    names = [c for c in forward.constants if not c.startswith("cg_")]
    if names:
        w("matrices = {  # constant matrices as sparse (row, column, value): recouplings (exact 6j), stacked CG tables")
        w.indent()
        for name in names:
            w(f'"{name}": ({forward.tensors[name].shape!r}, (')
            w.indent()
            entries = [f"({i}, {j}, {v!r})," for i, j, v in forward.matrices[name]]
            for start in range(0, len(entries), 4):
                w(" ".join(entries[start:start + 4]))
            w.dedent()
            w(")),")
        w.dedent()
        w("}")
    w()
    w("def __init__(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:")
    w.indent()
    w("super().__init__()")
    w("dtype = dtype or torch.get_default_dtype()")
    if d.internal_weight_numel:
        w("# internal weights: per term (and per index value, for 'per'), one block per path in path order;")
        w("# initialised as e3nn does")
        w(f"self.weight = torch.nn.Parameter(torch.randn({d.internal_weight_numel}, dtype=dtype, device=device))")
    else:
        w('self.register_buffer("weight", torch.zeros(0, dtype=dtype, device=device), persistent=False)')
    w("self._register_constants(dtype, device)")
    w.dedent()
    w()
    args = ", ".join(f"{i.name}: torch.Tensor" for i in d.inputs)
    ret = "torch.Tensor" if len(outputs) == 1 else f"tuple[{', '.join(['torch.Tensor'] * len(outputs))}]"
    w(f"def forward(self, {args}) -> {ret}:")
    w.indent()
    specs = ", ".join(f'"{i.name}": ({i.name}, {i.irreps.dim})' for i in irreps_inputs)
    wspecs = ", ".join(f'"{k}": ({k}, {t.weight_numel})' for k, t in weight_inputs.items())
    # the method's own locals start with '_': an input may be named `batch`
    w(f"_batch = rt.batch_shape(self.weight, {{{specs}}}, {{{wspecs}}})")
    rows = []
    for i in d.inputs:
        if i.kind == "irreps":
            rows.append(f"rt.rows({i.name}, _batch, {i.irreps.dim})")
        elif i.kind == "weights":
            rows.append(f"rt.weight_rows({i.name}, _batch, {weight_inputs[i.name].weight_numel})")
        else:
            rows.append(f'rt.index_rows({i.name}, _batch, "{i.name}", self.weight)')
    w(f'_outputs = _ops["{d.name}"]([')
    w.indent()
    for r in rows:
        w(f"{r},")
    w.dedent()
    w("], self.weight, self.constants())")
    w(f"return {', '.join(f'_outputs[{k}].reshape(*_batch, {v.irreps.dim})' for k, v in enumerate(outputs))}")
    w.dedent()
    w.dedent()


def _slice(t: Tensor, v: View, source: str) -> str:
    """A view of a flat tensor as its shape: (n, *shape) for row tensors, else shape."""
    shape = ", ".join(map(str, v.shape))
    if t.rows:
        part = source if (v.start, v.numel) == (0, t.size) else f"{source}[:, {v.start}:{v.start + v.numel}]"
        return f"{part}.reshape(n, {shape})"
    part = source if (v.start, v.numel) == (0, t.size) else f"{source}[{v.start}:{v.start + v.numel}]"
    return part if v.shape in ((t.size,), t.shape) else f"{part}.view({shape})"


#: Terms of a sum written on one line.
SUM_TERMS = 32


class _ProgramWriter:
    """Writes a program as straight-line torch code. Each statement is one product (or gather /
    scatter) bound to a local; the pieces of a tensor are summed per segment and concatenated when
    the tensor is first read, or at the end for outputs."""

    def __init__(self, w: CodeWriter, p: Program) -> None:
        self.w, self.p = w, p
        self.pieces: dict[str, dict[tuple[int, tuple[int, ...]], list[str]]] = {}
        self.ready: dict[str, tuple[str, tuple[int, ...]]] = {}  # tensor -> (local, shape of the local)
        self.aliases: set[str] = set()  # locals that are inputs, or views of them (a custom op may not return one)
        self.writers: dict[str, int] = {}
        for s in p.statements:
            self.writers[s.out.tensor] = self.writers.get(s.out.tensor, 0) + 1
        self.locals = 0

    def read(self, v: View) -> str:
        t = self.p.tensors[v.tensor]
        if t.kind not in ("temp", "output"):
            return _slice(t, v, v.tensor)
        local, shape = self.materialize(v.tensor)
        if shape == v.shape:
            return local
        # sizes spelled out: with no rows, -1 would be ambiguous
        flat = local if len(shape) == 1 else f"{local}.reshape(n, {t.size})" if t.rows else f"{local}.reshape({t.size})"
        return _slice(t, v, flat)

    def add(self, s: Statement, expression: str, alias: bool = False) -> None:
        t = self.p.tensors[s.out.tensor]
        whole = (s.out.start, s.out.numel) == (0, t.size)
        if t.kind == "temp" and self.writers[s.out.tensor] == 1 and whole:
            self.w(f"{s.out.tensor} = {expression}")
            self.ready[s.out.tensor] = (s.out.tensor, s.out.shape)
            if alias:
                self.aliases.add(s.out.tensor)
            return
        local = self.piece(s.out.tensor)
        if alias:
            self.aliases.add(local)
        self.w(f"{local} = {expression}")
        self.pieces.setdefault(s.out.tensor, {}).setdefault((s.out.start, s.out.shape), []).append(local)

    def piece(self, tensor: str) -> str:
        """A fresh local for a piece of `tensor`: `_piece` is no prefix of a source or tensor name."""
        self.locals += 1
        return f"_piece{self.locals - 1}_{tensor.lstrip('_')}"

    def summed(self, names: list[str]) -> str:
        """An expression for the sum of `names`; a long sum is added up over several lines first
        (Python's parser recurses once per '+': 3,000 terms overflowed its stack)."""
        if len(names) <= SUM_TERMS:
            return " + ".join(names)
        local = self.piece("sum")
        self.w(f"{local} = {' + '.join(names[:SUM_TERMS])}")
        for start in range(SUM_TERMS, len(names), SUM_TERMS):
            self.w(f"{local} = {local} + {' + '.join(names[start:start + SUM_TERMS])}")
        return local

    def materialize(self, name: str) -> tuple[str, tuple[int, ...]]:
        if name in self.ready:
            return self.ready[name]
        t = self.p.tensors[name]
        pieces = self.pieces.pop(name, {})
        lead = "n, " if t.rows else ""
        if len(pieces) == 1 and next(iter(pieces))[0] == 0 and prod(next(iter(pieces))[1]) == t.size:
            (_, shape), names = next(iter(pieces.items()))
            self.w(f"{name} = {self.summed(names)}")
            if names == [names[0]] and names[0] in self.aliases:
                self.aliases.add(name)
            self.ready[name] = (name, shape)
            return self.ready[name]
        segments = sorted(pieces.items())
        ends = [start + prod(shape) for (start, shape), _ in segments]
        disjoint = all(ends[k] <= segments[k + 1][0][0] for k in range(len(segments) - 1))
        parts, position = [], 0
        if disjoint:
            for (start, shape), names in segments:
                if start > position:
                    parts.append(f"weight.new_zeros({lead}{start - position})")
                total = self.summed(names)
                parts.append(f"({total}).reshape({lead}{prod(shape)})" if len(names) > 1 else
                             f"{total}.reshape({lead}{prod(shape)})")
                position = start + prod(shape)
        if not disjoint or not parts:
            self.w(f"{name} = weight.new_zeros({lead}{t.size})")
            for (start, shape), names in segments:
                where = f"[:, {start}:{start + prod(shape)}]" if t.rows else f"[{start}:{start + prod(shape)}]"
                self.w(f"{name}{where} += ({self.summed(names)}).reshape({lead}{prod(shape)})")
        else:
            if position < t.size:
                parts.append(f"weight.new_zeros({lead}{t.size - position})")
            if len(parts) == 1:
                self.w(f"{name} = {parts[0]}")
            else:
                self.w(f"{name} = torch.cat([")
                self.w.indent()
                for part in parts:
                    self.w(f"{part},")
                self.w.dedent()
                self.w("], dim=-1)")
        self.ready[name] = (name, (t.size,))
        return self.ready[name]

    def _matrix_product(self, s: Einsum, operands: list[str]) -> str | None:
        """A pairwise contraction as one torch.mm / torch.bmm, its operands viewed as matrices in
        the layout `plan_pair` chooses (None where it is not one matrix product)."""
        if len(operands) != 2:
            return None
        a, b = s.operands
        plan = plan_pair(*(view_layout(v, self.p.tensors[v.tensor]) for v in (a, b)), s.out.labels)
        if plan is None:
            return None
        sizes = {"z": "n"}
        for v in s.operands:
            sizes.update(zip(v.labels.replace("z", ""), map(str, v.shape)))

        def size(group: str) -> str:
            constant = prod(int(sizes[c]) for c in group if c != "z")
            return ("n" if constant == 1 else f"n * {constant}") if "z" in group else str(constant)

        def matrix(expression: str, v: View, groups: tuple[str, ...]) -> str:
            order = [v.labels.index(c) for c in "".join(groups)]
            if order != list(range(len(order))):
                expression += f".permute({', '.join(map(str, order))})"
            dims = [size(g) for g in groups]
            if order == list(range(len(order))) and dims == [sizes[c] for c in v.labels]:
                return expression  # read already has this shape
            return f"{expression}.reshape({', '.join(dims)})"

        batch = (plan.batch,) if plan.batch else ()
        left = matrix(operands[0], a, (*batch, plan.left, plan.summed))
        right = matrix(operands[1], b, (*batch, plan.summed, plan.right))
        t = ".transpose(1, 2)" if batch else ".t()"
        product = (f"torch.{'bmm' if batch else 'mm'}({right}{t}, {left}{t})" if plan.swap else
                   f"torch.{'bmm' if batch else 'mm'}({left}, {right})")
        natural = plan.natural
        product += f".view({', '.join(sizes[c] for c in natural)})"
        order = [natural.index(c) for c in s.out.labels]
        if order != list(range(len(order))):
            product += f".permute({', '.join(map(str, order))})"
        return product

    def _numel(self, v: View) -> int:
        return v.numel * (PLANNING_ROWS if self.p.tensors[v.tensor].rows else 1)

    def statement(self, s: Statement) -> None:
        if s.note:
            self.w(f"# {s.note}")
        alias = False
        if isinstance(s, Einsum):
            operands = [self.read(v) for v in s.operands]
            if len(operands) == 1 and s.operands[0].labels == s.out.labels:
                expression = operands[0] + ("" if s.coeff == 1.0 else f" * {s.coeff!r}")
                alias = s.coeff == 1.0 and (self.p.tensors[s.operands[0].tensor].kind not in ("temp", "output")
                                            or s.operands[0].tensor in self.aliases)
            else:
                if s.coeff != 1.0:  # scale the smallest operand: fewest multiplications
                    k = min(range(len(operands)), key=lambda k: (self._numel(s.operands[k]), k))
                    operands[k] = f"({operands[k]} * {s.coeff!r})"
                equation = f'{",".join(v.labels for v in s.operands)}->{s.out.labels}'
                expression = _broadcast_product(s, operands)
                if expression is None:
                    product = self._matrix_product(s, operands)
                    expression = (f"{product}  # {equation}" if product else
                                  f'torch.einsum("{equation}", {", ".join(operands)})')
        elif isinstance(s, Gather):
            expression = f"{self.read(s.source)}.reshape({s.sets}, {s.out.numel})[{s.index}]"
        else:
            numel = s.source.numel
            expression = (f"weight.new_zeros({s.sets}, {numel}).index_add(0, {s.index}, "
                          f"{self.read(s.source)}.reshape(n, {numel})).reshape({s.out.numel})")
        self.add(s, expression, alias)


def _broadcast_product(s: Einsum, operands: list[str]) -> str | None:
    """Two operands whose product is elementwise per row, but for a small sum: their summed labels
    have size 1 or (with at most 4 output elements per pair of matrices) at most 8. Broadcast
    multiplication (and a sum), which torch runs far faster than a batch of tiny matrix products:
    conv_tp's per-row weights made batches of 64,000 (1 × 1)·(1 × 1) products, 2.5 ms each where
    the multiplication takes 0.05 ms. None where that does not apply (reductions over rows are
    matrix products)."""
    if len(operands) != 2:
        return None
    sizes = {}
    for v in (*s.operands, s.out):
        sizes.update(zip(v.labels.replace("z", ""), v.shape))
    a, b = (v.labels for v in s.operands)
    out = s.out.labels
    summed = "".join(sorted(set(a + b) - set(out)))
    if "z" in summed or "z" not in out or set(out) - set(a + b) or (set(a) ^ set(b)) - set(out):
        return None
    inner = prod(sizes[c] for c in summed)
    outer = prod(sizes[c] for c in out if c != "z" and not (c in a and c in b))
    if inner > 1 and (inner > 8 or outer > 4):
        return None
    kept = out + "".join(c for c in summed if sizes[c] > 1)  # axes of the product; size-1 sums drop out
    shaped = []
    for v, expression in zip(s.operands, operands):
        order = [v.labels.index(c) for c in out + summed if c in v.labels]
        if order != sorted(order):
            expression += f".permute({', '.join(map(str, order))})"
        dims = ", ".join(("n" if c == "z" else str(sizes[c])) if c in v.labels else "1" for c in kept)
        shaped.append(f"{expression}.reshape({dims})")
    product = " * ".join(shaped)
    if kept == out:
        return product
    return f"({product}).sum(({', '.join(str(k) for k in range(len(out), len(kept)))},))"


#: Elements of a shared operand (weights, a constant matrix), or of a shared tensor summed over
#: rows (a weight gradient), beyond which a product is a matrix product for the BLAS, not a
#: statement for native code. Up to this (32 KiB in float32) it stays in L1 while every row
#: reads or adds to it, and a native statement, fused with the statements around it, beats MKL
#: on these short products. fc_tp's (5 × 32)·(32 × 64) per row: forward+backward 16% and double
#: backward 17% faster than with torch.mm for them (float64: 22% and 30%), mace_product's 46%;
#: its weight gradients summed natively, 7% and 9% more (fusion_block's 24% and 21%).
SHARED_NATIVE = 8192


class _NativeWriter(_ProgramWriter):
    """Writes a program as torch code in which every run of consecutive row-local statements is
    one call of a native kernel (`fusionc.backends.native`): products within a row, with per-row
    or small shared operands (`SHARED_NATIVE`), and sums over rows into small shared tensors.
    Matrix products against larger shared weights or constants and sums over rows into larger
    shared tensors (torch.mm), gathers and scatters stay torch code.

    A row tensor that only native code writes (a matrix product into it is written to a temporary
    in the product's own layout, which a native statement then adds in) is one flat (n, size)
    tensor the kernels accumulate into, in place: no pieces to sum, no concatenation, no permuted
    copies. Temporaries written and read only within one kernel live in per-row buffers."""

    def __init__(self, w: CodeWriter, p: Program, kernels: dict[str, tuple[str, str]]) -> None:
        super().__init__(w, replace(p, tensors=dict(p.tensors)))  # products' temporaries are added
        self.kernels = kernels  # C function name -> (source, argument kinds)
        self.segment: list[tuple[int, Einsum]] = []
        self.position = 0
        self.written_at: dict[str, list[int]] = {}
        self.read_at: dict[str, list[int]] = {}
        for k, s in enumerate(p.statements):
            self.written_at.setdefault(s.out.tensor, []).append(k)
            for v in p.reads(s):
                self.read_at.setdefault(v.tensor, []).append(k)
        self.natives = {k for k, s in enumerate(p.statements) if self.row_local(s) or self.added_in(s)}
        self.owned = {t for t, ks in self.written_at.items() if all(k in self.natives for k in ks)}
        self.allocated: set[str] = set()
        self.relayouts: dict[tuple[View, str], View] = {}  # (view, label order) -> its native copy

    def row_local(self, s: Statement) -> bool:
        """Whether s runs row by row: no shared operand beyond SHARED_NATIVE, and either no sum
        over rows or a sum over rows into a shared tensor of at most SHARED_NATIVE elements (a
        weight gradient: each thread sums its rows, then the threads' sums are added in order)."""
        if not isinstance(s, Einsum):
            return False
        summed = set("".join(v.labels for v in s.operands)) - set(s.out.labels)
        shared = [v for v in s.operands if not self.p.tensors[v.tensor].rows]
        if not all(v.numel <= SHARED_NATIVE for v in shared):
            return False
        if s.out.labels.startswith("z"):
            return "z" not in summed
        return "z" in summed and self.p.tensors[s.out.tensor].size <= SHARED_NATIVE

    def added_in(self, s: Statement) -> bool:
        """Whether s is a matrix product into a row tensor that others write too, or an output:
        written to a temporary in the product's layout, and added in by a native statement."""
        if not isinstance(s, Einsum) or len(s.operands) != 2 or not s.out.labels.startswith("z"):
            return False
        t = s.out.tensor
        if self.p.tensors[t].kind != "output" and len(self.written_at[t]) == 1:
            return False
        plan = plan_pair(*(view_layout(v, self.p.tensors[v.tensor]) for v in s.operands), s.out.labels)
        return plan is not None and plan.natural.startswith("z")

    def statement(self, s: Statement) -> None:
        position, self.position = self.position, self.position + 1
        if position not in self.natives:
            if isinstance(s, Einsum):
                s = self.relaid(s, position)
            touched = {v.tensor for _, t in self.segment for v in (t.out, *t.operands)}
            if any(v.tensor in touched for v in (s.out, *self.p.reads(s))):
                self.flush()  # it depends on the segment, or the segment on it; else it runs first
            super().statement(s)
            return
        if not self.row_local(s):  # the product into a temporary, then added in natively
            s = self.relaid(s, position)
            self.flush()
            plan = plan_pair(*(view_layout(v, self.p.tensors[v.tensor]) for v in s.operands), s.out.labels)
            sizes = dict(zip(s.out.labels.replace("z", ""), s.out.shape))
            shape = tuple(sizes[c] for c in plan.natural if c != "z")
            name = self.fresh("_mm")
            self.p.tensors[name] = Tensor(name, "temp", prod(shape), True)
            self.writers[name] = 1
            product = View(name, 0, shape, plan.natural)
            super().statement(replace(s, out=product))
            s = Einsum(s.out, (product,), note="")
        self.enqueue(position, s)

    def fresh(self, prefix: str) -> str:
        """A tensor name the program does not use."""
        k = 0
        while f"{prefix}{k}" in self.p.tensors:
            k += 1
        return f"{prefix}{k}"

    def enqueue(self, position: float, s: Einsum) -> None:
        inside = {k for k, _ in self.segment}
        summing = {t.out.tensor for _, t in self.segment if not self.p.tensors[t.out.tensor].rows}
        if any(v.tensor in summing for v in s.operands):  # a sum over rows is complete after its kernel
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
        """s with each row operand that its matrix product would copy (a block of x in (u, i)
        order read as ((rows, i), u), say) replaced by a copy a native statement makes, in an order
        the product reads as it is; a copy serves every product of the program that needs it."""
        if len(s.operands) != 2:
            return s
        layouts = [view_layout(v, self.p.tensors[v.tensor]) for v in s.operands]
        plan = plan_pair(*layouts, s.out.labels)
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
                again = plan_pair(*trial, s.out.labels)
                mine = (again.batch, again.left, again.summed) if k == 0 else (again.batch, again.summed, again.right)
                if not matrix_copies(trial[k], *mine) and (best is None or again.time < best[0]):
                    best = (again.time, order)
            if best is None or best[0] >= plan.time:
                continue
            key = (v, best[1])
            if key not in self.relayouts:
                order = best[1]
                shape = tuple(sizes[c] for c in order[1:])
                name = self.fresh("_copy")
                self.p.tensors[name] = Tensor(name, "temp", prod(shape), True)
                self.writers[name] = 1
                self.written_at[name] = [position - 0.5]
                self.owned.add(name)
                self.relayouts[key] = View(name, 0, shape, order)
                self.enqueue(position - 0.5, Einsum(self.relayouts[key], (v,), note=""))
            self.read_at.setdefault(self.relayouts[key].tensor, []).append(position)
            operands[k] = self.relayouts[key]
            layouts[k] = view_layout(operands[k], self.p.tensors[operands[k].tensor])
        return replace(s, operands=tuple(operands))

    def flush(self) -> None:
        if not self.segment:
            return
        segment, self.segment = self.segment, []
        inside = {k for k, _ in segment}
        last = max(inside)
        p = self.p
        name = f"{p.name}__s{sum(1 for k in self.kernels if native.program_of(k) == p.name)}"
        arguments: list[native.Argument] = []
        expressions: list[str] = []
        locals_: dict[str, int] = {}  # C buffer -> elements per row
        home: dict[str, str] = {}  # tensor written here, whole -> its C buffer (per-row local or accumulator)

        def argument(expression: str, rows: bool, numel: int, kind: str) -> str:
            arg = f"a{len(arguments)}"
            arguments.append(native.Argument(arg, rows, numel, kind))
            expressions.append(expression)
            return arg

        for _, s in segment:
            t = s.out.tensor
            if t in home or t not in self.owned:
                continue
            if (t in p.outputs or t in self.allocated or not p.tensors[t].rows
                    or any(k not in inside for k in self.written_at[t])
                    or any(k not in inside for k in self.read_at.get(t, []))):
                first = t not in self.allocated  # its first kernel zeroes each row, the others add in
                rows = p.tensors[t].rows
                if first:
                    self.w(f"{t} = weight.new_empty({'n, ' if rows else ''}{p.tensors[t].size})")
                    self.allocated.add(t)
                kind = "o" if first else "a"
                home[t] = argument(t, rows, p.tensors[t].size, kind if rows else kind.upper())
                if max(self.written_at[t]) <= last:
                    self.ready[t] = (t, (p.tensors[t].size,))
            else:
                home[t] = f"l{len(locals_)}"
                locals_[home[t]] = p.tensors[t].size
        reads: dict[View, str] = {}
        pieces: dict[tuple[str, int, tuple[int, ...]], str] = {}
        body = native.SegmentWriter()
        written = {s.out.tensor for _, s in segment}
        for _, s in segment:
            operands = []
            for v in s.operands:
                labels = v.labels.replace("z", "")
                if v.tensor in home or v.tensor in self.allocated:  # complete: its writers come before
                    rows = p.tensors[v.tensor].rows
                    if v.tensor not in home:
                        home[v.tensor] = argument(v.tensor, rows, p.tensors[v.tensor].size, "r" if rows else "s")
                    buffer = native.Buffer(f"({home[v.tensor]} + {v.start})", labels, v.shape, not rows)
                    operands.append((buffer, v.tensor not in written))
                    continue
                if v not in reads:
                    expression = self.read(v)
                    if "z" in v.labels[1:]:  # kernels take rows first
                        order = [v.labels.index("z")] + [k for k, c in enumerate(v.labels) if c != "z"]
                        expression += f".permute({', '.join(map(str, order))})"
                    reads[v] = argument(expression, p.tensors[v.tensor].rows, v.numel, "r" if
                                        p.tensors[v.tensor].rows else "s")
                operands.append((native.Buffer(reads[v], labels, v.shape, not p.tensors[v.tensor].rows), True))
            o = s.out
            if o.tensor in home:
                base = f"({home[o.tensor]} + {o.start})"
            else:  # a piece of a tensor torch code writes too
                key = (o.tensor, o.start, o.shape)
                if key not in pieces:
                    local = self.piece(o.tensor)
                    self.locals += 1
                    rows = p.tensors[o.tensor].rows
                    self.w(f"{local} = weight.new_empty({'n, ' if rows else ''}{', '.join(map(str, o.shape))})")
                    self.pieces.setdefault(o.tensor, {}).setdefault((o.start, o.shape), []).append(local)
                    pieces[key] = argument(local, rows, o.numel, "o" if rows else "O")
                base = pieces[key]
            body.statement(s, native.Buffer(base, o.labels.replace("z", ""), o.shape), operands)
            if s.note:
                self.w(f"# {s.note}")
        kinds = "".join(a.kind for a in arguments)
        self.kernels[name] = (native.segment_function(name, arguments, locals_, body), kinds)
        self.w(f"_native.run({name!r}, n, {', '.join(expressions)})")


def _emit_program(w: CodeWriter, p: Program, kernels: dict[str, tuple[str, str]] | None = None) -> None:
    """A program as a plain function of tensors on rows: the body of its custom op; with `kernels`,
    its CPU version, whose row-local statements run as native kernels (collected there)."""
    names = list(p.inputs) + ["weight"] + list(p.constants)
    w(f"def _{p.name}{'__cpu' if kernels is not None else ''}(")
    w.indent()
    for start in range(0, len(names), 4):
        w(" ".join(f"{name}: torch.Tensor," for name in names[start:start + 4]))
    w.dedent()
    w(") -> list[torch.Tensor]:")
    w.indent()

    def shape(name: str) -> str:
        t = p.tensors[name]
        return f"{name} (n, {t.size})" if t.rows and t.kind != "index" else (f"{name} (n,)" if t.rows else
                                                                              f"{name} ({t.size},)")

    summary = f"{', '.join(shape(i) for i in p.inputs)} -> {', '.join(shape(o) for o in p.outputs)}"
    w(f'"""{p.doc or p.name + " on rows"}: {summary}."""')
    first = next(i for i in p.inputs if p.tensors[i].rows)
    w(f"n = {first}.shape[0]")
    writer = _ProgramWriter(w, p) if kernels is None else _NativeWriter(w, p, kernels)
    for s in p.statements:
        writer.statement(s)
    if isinstance(writer, _NativeWriter):
        writer.flush()
    results = []
    for o in p.outputs:
        local, shape = writer.materialize(o)
        t = p.tensors[o]
        result = local if shape == (t.size,) else f"{local}.reshape({'n, ' if t.rows else ''}{t.size})"
        results.append(f"{result}.clone()" if local in writer.aliases or local in p.inputs else result)
    w(f"return [{', '.join(results)}]")
    w.dedent()


def _free_dead_locals(lines: list[str]) -> list[str]:
    """A straight-line function with `del` after the statement that last reads each local it
    assigns: an intermediate's memory is freed as soon as nothing needs it, not at return (fc_tp's
    forward+backward peak: 35 MiB with every local live to the end)."""
    function = ast.parse("\n".join(lines)).body[0]
    body = function.body
    last: dict[str, int] = {}
    assigned: set[str] = set()
    for position, statement in enumerate(body):
        for node in ast.walk(statement):
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Store):
                    assigned.add(node.id)
                else:
                    last[node.id] = position
    freed: dict[int, list[str]] = {}
    for name, position in last.items():
        if name in assigned and name != "n" and not isinstance(body[position], ast.Return):
            freed.setdefault(position, []).append(name)
    out, done = [], 0
    for position, statement in enumerate(body):
        out.extend(lines[done:statement.end_lineno])  # with the comments before it
        done = statement.end_lineno
        if position in freed:
            first = lines[statement.lineno - 1]
            out.append(f"{first[:len(first) - len(first.lstrip())]}del {', '.join(sorted(freed[position]))}")
    return out + lines[done:]


Lowering = Callable[[Diagram, DiagramPlan], tuple[list[str], str]]
ProgramLowering = Callable[[Program], tuple[list[str], str]]


def programs(d: Diagram, plan: DiagramPlan) -> tuple[Program, list[Program], list[list[Program]]]:
    """The diagram's forward program; per output its vector-Jacobian product; per output of each of
    those, the product's own. Splitting by cotangent lets autograd skip the work of a cotangent
    that is absent (in force training, only the positions' gradient carries one)."""
    forward = lower(d, plan)
    firsts = [derivative(forward, f"{d.name}__d" + (f"_{o}" if len(forward.outputs) > 1 else ""), o)
              for o in forward.outputs]
    seconds = [[derivative(first, f"{first.name}__d2_{o.removeprefix('d_')}", o, prefix="d2_") for o in first.outputs]
               for first in firsts]
    return forward, firsts, seconds


def partials(first: Program) -> dict[tuple[int, ...], Program]:
    """Versions of a vector-Jacobian product that compute only some of its gradients, keyed by
    their positions in its outputs: each gradient alone, and all but the weight's. Autograd often
    needs only those: `torch.autograd.grad(energy, positions)` for the forces never asks for the
    weights' gradient, and an input that does not require grad needs none. A version that would
    leave out no work, or that computes only an empty gradient, is not made."""
    n = len(first.outputs)
    wanted = [(k,) for k in range(n)] + ([tuple(range(n - 1))] if n > 2 else [])
    versions = {}
    for keep in wanted:
        outputs = tuple(first.outputs[k] for k in keep)
        if not any(first.tensors[o].size for o in outputs):
            continue
        names = ", ".join(outputs)
        p = prune(replace(first, name=f"{first.name}__only_{'_'.join(o.removeprefix('d_') for o in outputs)}",
                          outputs=outputs, doc=f"{first.doc}, {names} only"))
        if len(p.statements) < len(first.statements):
            versions[keep] = p
    return versions


def _signature(p: Program) -> str:
    outputs = tuple((p.tensors[o].size, p.tensors[o].rows) for o in p.outputs)
    ranges = {k: (i, p.tensors[i].size) for k, i in enumerate(p.inputs) if p.tensors[i].kind == "index"}
    return f"outputs={outputs!r}, index_ranges={ranges!r}"


def emit_module(diagrams: tuple[Diagram, ...], source: str, filename: str, backend: str,
                imports: tuple[str, ...] = (), lowering: Lowering | None = None,
                program_lowering: ProgramLowering | None = None) -> str:
    """A generated module: per diagram its forward, backward and double-backward programs as torch
    functions, registered as custom ops (each op's autograd is the next program's op), and an
    nn.Module calling the forward op. With `lowering` (another back end), the forward op runs the
    code it returns (lines, and the function to call); with `program_lowering`, so do the
    derivative programs' ops, and the last ones' own derivative goes through their torch code."""
    w = CodeWriter()
    w(f"# Generated by fusionc {__version__} ({backend} back end) from {filename} — do not edit.")
    w(f"# Source sha256: {hashlib.sha256(source.encode()).hexdigest()}")
    w(f'"""fusionc {backend} ops compiled from {filename}: {", ".join(d.name for d in diagrams)}.')
    w()
    w("Per diagram: `_<name>` (forward), `_<name>__d` (its vector-Jacobian product) and `_<name>__d__d2_<input>`")
    w("(the product's own, per cotangent), each a program of labelled contractions compiled from the diagram.")
    if not program_lowering:
        w("`_<name>__d__only_<inputs>` computes only those inputs' gradients, for when autograd needs no others.")
    w('"""')
    w()
    w("from __future__ import annotations")
    w()
    w("import torch")
    for line in imports:
        w(line)
    w()
    w("from fusionc.runtime import torch_ops as rt")
    w()
    w(f"__all__ = {[d.name for d in diagrams]!r}")
    plans = {d.name: plan_diagram(d) for d in diagrams}
    functions = []
    # native CPU kernels for the torch code's row-local statements (not with another back end's kernels)
    kernels: dict[str, tuple[str, str]] | None = None if lowering else {}
    cpu: dict[str, str] = {}  # program -> its CPU version
    for d in diagrams:
        forward, firsts, seconds = programs(d, plans[d.name])
        # versions of the first derivatives that leave out gradients nobody asked for (torch code)
        partial = [{} if program_lowering else partials(first) for first in firsts]
        chain = [forward, *firsts, *(p for group in seconds for p in group),
                 *(p for versions in partial for p in versions.values())]
        blocks, runners = [], {}
        for position, p in enumerate(chain):
            factorized = factorize(p)
            if program_lowering and position:
                lines, runners[p.name] = program_lowering(factorized)
                blocks.append(lines)
            # torch code where it runs: a program no other lowering replaces, and the last programs
            # (autograd differentiates their torch code for a third derivative)
            replaced = bool(lowering) if position == 0 else bool(program_lowering) and position <= len(firsts)
            if not replaced:
                f = CodeWriter()
                _emit_program(f, factorized)
                blocks.append(_free_dead_locals(f.lines))
                if kernels is not None:
                    count = len(kernels)
                    f = CodeWriter()
                    _emit_program(f, factorize(p, penalty=NATIVE_PENALTY, ahead=True), kernels)
                    if len(kernels) > count:  # it has row-local statements
                        blocks.append(_free_dead_locals(f.lines))
                        cpu[p.name] = f"_{p.name}__cpu"
        lowered = lowering(d, plans[d.name]) if lowering else ([], None)
        functions.append((d, (forward, firsts, seconds, partial), blocks, lowered, runners))
    # ops are named by a hash of their code, native kernels included: the same name always means
    # the same computation
    code = "\n".join([*(line for _, _, blocks, (extra, _), _ in functions for lines in blocks + [extra]
                        for line in lines), *(source for source, _ in (kernels or {}).values())])
    w()
    w(f'_ops = rt.OpNamespace("fusionc_{hashlib.sha256(code.encode()).hexdigest()[:16]}")')
    for d, (forward, firsts, seconds, partial), blocks, (extra, runner), runners in functions:
        for block in blocks + [extra]:
            if block:
                w()
                w()
                w.lines.extend(block)
        w()
        w()
        w(f"# {d.name}: an op's autograd runs, per cotangent present, the op of its derivative program;")
        w("# the last ones differentiate through their own torch code")
        for first, group in zip(firsts, seconds):
            for second in group:
                run = runners.get(second.name)
                reference = f", reference=_{second.name}" if run else ""
                w(f'_ops.register("{second.name}", {run or "_" + second.name}, {_signature(second)}{reference}'
                  f'{_native_impl(cpu, second)})')
            backward = ", ".join(f'_ops["{s.name}"]' for s in group)
            w(f'_ops.register("{first.name}", {runners.get(first.name, "_" + first.name)}, {_signature(first)}, '
              f'backward=[{backward}]{_native_impl(cpu, first)})')
        for first, group, versions in zip(firsts, seconds, partial):
            for keep, p in versions.items():
                backward = ", ".join(f'_ops["{group[k].name}"]' for k in keep)
                w(f'_ops.register("{p.name}", _{p.name}, {_signature(p)}, backward=[{backward}]{_native_impl(cpu, p)})')
        backward = ", ".join(f'_ops["{f.name}"]' for f in firsts)
        versions = ""
        if any(partial):
            versions = ", partial=[" + ", ".join(
                "{" + ", ".join(f'{keep!r}: _ops["{p.name}"]' for keep, p in v.items()) + "}" for v in partial) + "]"
        w(f'_ops.register("{d.name}", {runner or "_" + d.name}, {_signature(forward)}, '
          f'backward=[{backward}]{versions}, check_indices=True{_native_impl(cpu, forward)})')
    for d, (forward, *_), _, _, _ in functions:
        w()
        w()
        _emit_class(w, d, forward)
    if kernels:
        w()
        w()
        w("# the CPU versions' native kernels: C per program, compiled on first use (fusionc.runtime.native)")
        w("_native = rt.NativeKernels(")
        w.indent()
        w("{")
        by_program: dict[str, list[str]] = {}
        for name, (source, _) in kernels.items():
            by_program.setdefault(native.program_of(name), []).append(source)
        for program, sources in by_program.items():
            w(f'"{program}": """\\')
            w.lines.extend("\n\n".join(sources).split("\n"))
            w('""",')
        w("},")
        w("{")
        w.indent()
        for name, (_, kinds) in kernels.items():
            w(f"{name!r}: {kinds!r},")
        w.dedent()
        w("},")
        w.dedent()
        w(")")
        w("_ops.kernels = _native")
    return "\n".join(w.lines) + "\n"


def _native_impl(cpu: dict[str, str], p: Program) -> str:
    return f", cpu={cpu[p.name]}" if p.name in cpu else ""


def emit(diagrams: tuple[Diagram, ...], source: str, filename: str) -> str:
    """The generated torch module for `diagrams`; same input, same bytes."""
    return emit_module(diagrams, source, filename, "torch")

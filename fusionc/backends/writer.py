"""The Python both back ends write: a module's header, its programs as torch code, the
registration of each diagram's programs as custom ops, and one nn.Module per diagram.

A program becomes straight-line torch code — pairwise contractions over rows z, channels u/v/w and
components i/j/k in the order the pipeline factorized them, each one torch.mm / torch.bmm on
operands laid out so that their views copy least (`fusionc.analysis.layout`), products with a
summed size of 1 as broadcast products; CG tables and constant matrices as buffers, weights as
views of a flat vector laid out as e3nn lays it out; every temporary freed where `liveness` says.
A back end adds its own kernels through `emit_module`'s hooks; this module imports none.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Protocol

from math import prod

from fusionc.analysis.layout import plan_pair
from fusionc.analysis.plan import DiagramPlan
from fusionc.algebra.cg import cg_entries
from fusionc.analysis.program import (PLANNING_ROWS, Einsum, Gather, Kernel, Program, ProgramSet, Statement, Tensor, View,
                                      Versions, cg_degrees, view_layout)
from fusionc.ir.diagram import CouplingVertex, Diagram
from fusionc.machine import CpuBlas
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


def _four_a_line(w: CodeWriter, entries: list[str]) -> None:
    w.indent()
    for start in range(0, len(entries), 4):
        w(" ".join(entries[start:start + 4]))
    w.dedent()


def emit_class(w: CodeWriter, d: Diagram, forward: Program, namespace: str) -> None:
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

    tables = [cg_degrees(c) for c in forward.constants if c.startswith("cg_")]
    if tables:
        w(f"cg_tables = {{ls: _CG_TABLES[ls] for ls in {tuple(tables)!r}}}")
    names = [c for c in forward.constants if not c.startswith("cg_")]
    if names:
        w("matrices = {  # constant matrices as sparse (row, column, value): recouplings (exact 6j), stacked CG tables")
        w.indent()
        for name in names:
            w(f'"{name}": ({forward.tensors[name].shape!r}, (')
            _four_a_line(w, [f"({i}, {j}, {v!r})," for i, j, v in forward.matrices[name]])
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
    _scripted_forward(w, d, forward, namespace)
    if d.spaces:
        _graph_forward(w, d)
        return
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


def _scripted_forward(w: CodeWriter, d: Diagram, forward: Program, namespace: str) -> None:
    """What `torch.jit.script` compiles of the forward (it skips the rest: the eager path's checks
    are Python): the op by its qualified name, the constants by attribute, inputs of a diagram
    without spaces broadcast as the eager path broadcasts them (to the feature inputs' leading
    shapes); unchecked beyond the op's own and torch's."""
    weight_inputs = _weight_inputs(d)
    # in `FusionModule.constants()`'s order: the CG tables, then the matrices
    ordered = sorted(forward.constants, key=lambda c: not c.startswith("cg_"))
    constants = [f"self.{c}," for c in ordered]
    w("if torch.jit.is_scripting():  # TorchScript")
    w.indent()
    if d.spaces:
        inputs = [f"{i.name}.to(torch.int64)" if i.kind == "index" else i.name for i in d.inputs]
        _op_call(w, f"torch.ops.{namespace}.{d.name}", inputs, constants)
        w(f"return {', '.join(f'_outputs[{k}]' for k in range(len(d.outputs)))}")
    else:
        features = [i.name for i in d.inputs if i.kind == "irreps"] or [i.name for i in d.inputs if i.kind != "index"][:1]
        w(f"_lead = {features[0]}.shape[:-1]")
        for name in features[1:]:  # TorchScript's broadcast_shapes takes two
            w(f"_lead = torch.broadcast_shapes(_lead, {name}.shape[:-1])")
        inputs = []
        for i in d.inputs:
            size = i.irreps.dim if i.kind == "irreps" else weight_inputs[i.name].weight_numel if i.kind == "weights" else None
            inputs.append(f"{i.name}.expand(_lead).reshape(-1).to(torch.int64)" if size is None
                          else f"{i.name}.expand(_lead + [{size}]).reshape(-1, {size})")
        _op_call(w, f"torch.ops.{namespace}.{d.name}", inputs, constants)
        w(f"return {', '.join(f'_outputs[{k}].reshape(_lead + [{v.irreps.dim}])' for k, v in enumerate(d.outputs))}")
    w.dedent()


def _op_call(w: CodeWriter, op: str, inputs: list[str], constants: list[str]) -> None:
    w(f"_outputs = {op}([")
    w.indent()
    for i in inputs:
        w(f"{i},")
    w.dedent()
    if not constants:
        w("], self.weight, [])")
        return
    w("], self.weight, [")
    _four_a_line(w, constants)
    w("])")


def _graph_forward(w: CodeWriter, d: Diagram) -> None:
    """The forward of a diagram with index spaces: every input (rows of its space, size), index
    inputs (rows,) of integers; `rt.graph_rows` checks them."""
    weight_inputs = _weight_inputs(d)
    features = ", ".join(
        f'"{i.name}": ({i.name}, {i.irreps.dim if i.kind == "irreps" else weight_inputs[i.name].weight_numel}, '
        f'"{i.space}")' for i in d.inputs if i.kind != "index")
    indices = ", ".join(f'"{i.name}": ({i.name}, "{i.space}", {i.points!r})' for i in d.inputs if i.kind == "index")
    w(f"rt.graph_rows(self.weight, {{{features}}}, {{{indices}}})")
    w(f'_outputs = _ops["{d.name}"]([')
    w.indent()
    for i in d.inputs:
        w(f"{i.name}.to(torch.int64)," if i.kind == "index" else f"{i.name},")
    w.dedent()
    w("], self.weight, self.constants())")
    w(f"return {', '.join(f'_outputs[{k}]' for k in range(len(d.outputs)))}")
    w.dedent()
    w.dedent()


def rows_of(t: Tensor | None) -> str:
    """The local holding the number of rows of a tensor's space: `n`, or per index space `n_<space>`."""
    return space_rows(t.space if t is not None else None)


def space_rows(space: str | None) -> str:
    """The local holding the number of rows of an index space (`n` for a diagram's one implicit space)."""
    return f"n_{space}" if space else "n"


def _slice(t: Tensor, v: View, source: str) -> str:
    """A view of a flat tensor as its shape: (n, *shape) for row tensors, else shape."""
    shape = ", ".join(map(str, v.shape))
    if t.rows:
        part = source if (v.start, v.numel) == (0, t.size) else f"{source}[:, {v.start}:{v.start + v.numel}]"
        return f"{part}.reshape({rows_of(t)}, {shape})"
    part = source if (v.start, v.numel) == (0, t.size) else f"{source}[{v.start}:{v.start + v.numel}]"
    return part if v.shape in ((t.size,), t.shape) else f"{part}.view({shape})"


#: Terms of a sum written on one line.
SUM_TERMS = 32


class ProgramWriter:
    """Writes a program as straight-line torch code. Each statement is one product (or gather /
    scatter) bound to a local; the pieces of a tensor are summed per segment and concatenated when
    the tensor is first read, or at the end for outputs."""

    def __init__(self, w: CodeWriter, p: Program, blas: CpuBlas) -> None:
        self.w, self.p, self.blas = w, p, blas
        self.pieces: dict[str, dict[tuple[int, tuple[int, ...]], list[str]]] = {}
        self.ready: dict[str, tuple[str, tuple[int, ...]]] = {}  # tensor -> (local, shape of the local)
        self.aliases: set[str] = set()  # locals that are inputs, or views of them (a custom op may not return one)
        self.freed: set[str] = set()  # locals deleted
        self.maybe: set[str] = set()  # locals of statements that run for some mask bits only: None otherwise
        self.writers: dict[str, int] = {}
        for s in p.statements:
            for t in (s.statements if isinstance(s, Kernel) else (s,)):
                self.writers[t.out.tensor] = self.writers.get(t.out.tensor, 0) + 1
        self.locals = 0

    def read(self, v: View) -> str:
        t = self.p.tensors[v.tensor]
        if t.kind not in ("temp", "output"):
            return _slice(t, v, v.tensor)
        local, shape = self.materialize(v.tensor)
        if shape == v.shape:
            return local
        # sizes spelled out: with no rows, -1 would be ambiguous
        flat = (local if len(shape) == 1 else f"{local}.reshape({rows_of(t)}, {t.size})" if t.rows
                else f"{local}.reshape({t.size})")
        return _slice(t, v, flat)

    def add(self, s: Statement, expression: str, alias: bool = False) -> None:
        t = self.p.tensors[s.out.tensor]
        whole = (s.out.start, s.out.numel) == (0, t.size)
        single = t.kind == "temp" and self.writers[s.out.tensor] == 1 and whole
        local = s.out.tensor if single else self.piece(s.out.tensor)
        if s.when is None:
            self.w(f"{local} = {expression}")
        else:  # runs for some mask bits only
            code, _, comment = expression.partition("  # ")
            self.w(f"{local} = {code} if _mask & {s.when} else None" + (f"  # {comment}" if comment else ""))
            self.maybe.add(local)
        if alias:
            self.aliases.add(local)
        if single:
            self.ready[s.out.tensor] = (local, s.out.shape)
        else:
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
        self.free_locals(names[:SUM_TERMS])
        for start in range(SUM_TERMS, len(names), SUM_TERMS):
            self.w(f"{local} = {local} + {' + '.join(names[start:start + SUM_TERMS])}")
            self.free_locals(names[start:start + SUM_TERMS])
        return local

    def free(self, tensors: tuple[str, ...]) -> None:
        """Free the locals of tensors nothing reads any more (`liveness`)."""
        self.free_locals([self.ready[t][0] for t in tensors if t in self.ready])

    def free_locals(self, names: list[str]) -> None:
        names = sorted(set(names) - self.freed)
        if names:
            self.w(f"del {', '.join(names)}")
            self.freed.update(names)

    def materialize(self, name: str) -> tuple[str, tuple[int, ...]]:
        if name in self.ready:
            return self.ready[name]
        pieces = self.pieces.pop(name, {})
        locals_ = self.locals
        self.assemble(name, pieces)
        summed = [f"_piece{k}_sum" for k in range(locals_, self.locals)]  # the sums `summed` wrote
        self.free_locals([n for names in pieces.values() for n in names] + summed)
        return self.ready[name]

    def assemble(self, name: str, pieces: dict[tuple[int, tuple[int, ...]], list[str]]) -> None:
        """name = the sum of its pieces, each at its place in the tensor (zeros where none is)."""
        t = self.p.tensors[name]
        lead = f"{rows_of(t)}, " if t.rows else ""
        if any(piece in self.maybe for names in pieces.values() for piece in names):
            # pieces of statements that may not run: the runtime sums those that did (None if none did)
            parts = ", ".join(f"({start}, {prod(shape)}, [{', '.join(names)}])" for (start, shape), names in
                              sorted(pieces.items()))
            self.w(f"{name} = rt.assemble(weight, {rows_of(t) if t.rows else 'None'}, {t.size}, [{parts}])")
            if all(piece in self.maybe for names in pieces.values() for piece in names):
                self.maybe.add(name)
            if any(piece in self.aliases for names in pieces.values() for piece in names):
                self.aliases.add(name)
            self.ready[name] = (name, (t.size,))
            return
        if len(pieces) == 1 and next(iter(pieces))[0] == 0 and prod(next(iter(pieces))[1]) == t.size:
            (_, shape), names = next(iter(pieces.items()))
            self.w(f"{name} = {self.summed(names)}")
            if names == [names[0]] and names[0] in self.aliases:
                self.aliases.add(name)
            self.ready[name] = (name, shape)
            return
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

    def _matrix_product(self, s: Einsum, operands: list[str]) -> str | None:
        """A pairwise contraction as one torch.mm / torch.bmm, its operands viewed as matrices in
        the layout `plan_pair` chooses (None where it is not one matrix product)."""
        if len(operands) != 2:
            return None
        a, b = s.operands
        plan = plan_pair(*(view_layout(v, self.p.tensors[v.tensor]) for v in (a, b)), s.out.labels, self.blas)
        if plan is None:
            return None
        n = rows_of(self.row_tensor(s))
        sizes = {"z": n}
        for v in s.operands:
            sizes.update(zip(v.labels.replace("z", ""), map(str, v.shape)))

        def size(group: str) -> str:
            constant = prod(int(sizes[c]) for c in group if c != "z")
            return (n if constant == 1 else f"{n} * {constant}") if "z" in group else str(constant)

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

    def row_tensor(self, s: Einsum) -> Tensor | None:
        """A tensor with rows that the statement reads or writes (its rows are the statement's)."""
        return next((self.p.tensors[v.tensor] for v in (s.out, *s.operands) if self.p.tensors[v.tensor].rows), None)

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
                expression = _broadcast_product(s, operands, rows_of(self.row_tensor(s)))
                if expression is None:
                    product = self._matrix_product(s, operands)
                    expression = (f"{product}  # {equation}" if product else
                                  f'torch.einsum("{equation}", {", ".join(operands)})')
        elif isinstance(s, Gather):  # by an index: the source's rows (sets 0) or its weight sets
            if s.sets:
                expression = f"{self.read(s.source)}.reshape({s.sets}, {s.out.numel})[{s.index}]"
            else:
                expression = f"{self.read(s.source)}.index_select(0, {s.index})"
        else:
            numel, source = s.source.numel, self.p.tensors[s.source.tensor]
            if s.sets:
                expression = (f"weight.new_zeros({s.sets}, {numel}).index_add(0, {s.index}, "
                              f"{self.read(s.source)}.reshape({rows_of(source)}, {numel})).reshape({s.out.numel})")
            else:
                out = self.p.tensors[s.out.tensor]
                expression = (f"weight.new_zeros({rows_of(out)}, {numel}).index_add(0, {s.index}, "
                              f"{self.read(s.source)}.reshape({rows_of(source)}, {numel}))")
        self.add(s, expression, alias)


def _broadcast_product(s: Einsum, operands: list[str], n: str = "n") -> str | None:
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
        dims = ", ".join((n if c == "z" else str(sizes[c])) if c in v.labels else "1" for c in kept)
        shaped.append(f"{expression}.reshape({dims})")
    product = " * ".join(shaped)
    if kept == out:
        return product
    return f"({product}).sum(({', '.join(str(k) for k in range(len(out), len(kept)))},))"


def emit_program(w: CodeWriter, p: Program, writer: "ProgramWriter", suffix: str = "") -> None:
    """A program as a plain function of tensors on rows, `_<name><suffix>`: the body of its custom op,
    its statements written by `writer` (a `ProgramWriter` of w and p, or a back end's own)."""
    names = list(p.inputs) + ["weight"] + list(p.constants)
    w(f"def _{p.name}{suffix}(")
    w.indent()
    for start in range(0, len(names), 4):
        w(" ".join(f"{name}: torch.Tensor," for name in names[start:start + 4]))
    if p.keys:
        w(f"_mask: int = -1,  # bit k: {', '.join(p.keys)}[k] " + ("present" if p.keys[0] in p.inputs else "wanted"))
    w.dedent()
    w(") -> list[torch.Tensor]:")
    w.indent()

    def shape(name: str) -> str:
        t = p.tensors[name]
        return (f"{name} ({rows_of(t)}, {t.size})" if t.rows and t.kind != "index" else
                f"{name} ({rows_of(t)},)" if t.rows else f"{name} ({t.size},)")

    summary = f"{', '.join(shape(i) for i in p.inputs)} -> {', '.join(shape(o) for o in p.outputs)}"
    w(f'"""{p.doc or p.name + " on rows"}: {summary}."""')
    counted = set()
    for i in p.inputs:  # the rows of each space, from its first input
        t = p.tensors[i]
        if t.rows and rows_of(t) not in counted:
            counted.add(rows_of(t))
            w(f"{rows_of(t)} = {i}.shape[0]")
    for k, s in enumerate(p.statements):
        writer.statement(s)
        writer.free(p.frees[k] if p.frees else ())
    results = []
    for o in p.outputs:
        local, shape = writer.materialize(o)
        t = p.tensors[o]
        lead = f"{rows_of(t)}, " if t.rows else ""
        result = local if shape == (t.size,) else f"{local}.reshape({lead}{t.size})"
        result = f"{result}.clone()" if local in writer.aliases or local in p.inputs else result
        if local in writer.maybe:  # a gradient the mask did not ask for
            result = f"{result} if {local} is not None else weight.new_zeros({lead}{t.size})"
        results.append(result)
    w(f"return [{', '.join(results)}]")
    w.dedent()


#: Another back end's fused forward kernel of a diagram: (lines, the function to call).
ForwardKernel = Callable[[Diagram, DiagramPlan], tuple[list[str], str]]
#: Another back end's kernels of a program: (lines, the function to call).
ProgramKernel = Callable[[Program], tuple[list[str], str]]


def _signature(p: Program) -> str:
    """The op's outputs, (size, rows) each: rows True for those of its first input, else (in a
    diagram with index spaces) the position of the first input in the output's space, or False;
    and its index inputs of K values, by position (those into another space's rows the module's
    forward checks)."""
    def rows(t: Tensor) -> bool | int:
        if not t.rows or not t.space:
            return t.rows
        return next(k for k, i in enumerate(p.inputs) if p.tensors[i].rows and p.tensors[i].space == t.space)

    outputs = tuple((p.tensors[o].size, rows(p.tensors[o])) for o in p.outputs)
    ranges = {k: (i, p.tensors[i].size) for k, i in enumerate(p.inputs)
              if p.tensors[i].kind == "index" and not p.tensors[i].points}
    return f"outputs={outputs!r}, index_ranges={ranges!r}"


class CpuVersions(Protocol):
    """A back end's own CPU versions of programs (the torch back end's native kernels): the
    function of each program's `native` version, the code that names the ops, and what the module
    ends with."""

    def function(self, p: Program) -> list[str]: ...

    def code(self) -> list[str]: ...

    def write(self, w: CodeWriter) -> None: ...


def emit_module(ps: ProgramSet, imports: tuple[str, ...] = (), forward_kernel: ForwardKernel | None = None,
                program_kernel: ProgramKernel | None = None, cpu_versions: CpuVersions | None = None) -> str:
    """A generated module: per diagram its programs as torch functions (each as `ps` has them for
    torch code, and for native kernels on the CPU), registered as custom ops (each op's autograd is
    the next programs' ops), and an nn.Module calling the forward op. With `forward_kernel`
    (another back end), the forward op runs the code it returns; with `program_kernel`, so do the
    derivative programs' ops, and the last ones' own derivative differentiates the forward's torch
    code twice (`rt.second_order`)."""
    backend, source, filename, diagrams = ps.backend, ps.source, ps.filename, ps.diagrams
    w = CodeWriter()
    w(f"# Generated by fusionc {__version__} ({backend} back end) from {filename} — do not edit.")
    w(f"# Source sha256: {hashlib.sha256(source.encode()).hexdigest()}")
    w(f"# Machine model {ps.machine.digest()} (fusionc.machine; cpu_blas fitted on {ps.machine.cpu_blas.fitted_on})")
    w(f'"""fusionc {backend} ops compiled from {filename}: {", ".join(d.name for d in diagrams)}.')
    w()
    w("Per diagram: `_<name>`, its forward program (labelled contractions compiled from the diagram) as torch")
    w("code; ops for it, its vector-Jacobian product (`<name>__d`) and the product's own (`<name>__d__d2`), which")
    w("run the versions below (`__cpu`: native kernels on the CPU; `__triton`: GPU kernels) and elsewhere")
    w("differentiate the forward's torch code. A product's `mask` says which gradients to compute (which")
    w("cotangents are present): statements no bit needs do not run.")
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
    functions = []
    cpu: dict[str, str] = {}  # program -> its CPU version
    for dp in ps.programs:
        blocks, runners = [], {}
        for v in dp.all():
            if v.triton is not None and program_kernel:
                lines, runners[v.name] = program_kernel(v.triton)
                blocks.append(lines)
            if v.torch is not None:
                f = CodeWriter()
                emit_program(f, v.torch, ProgramWriter(f, v.torch, ps.machine.cpu_blas))
                blocks.append(f.lines)
            if v.native is not None and cpu_versions is not None:
                blocks.append(cpu_versions.function(v.native))
                cpu[v.name] = f"_{v.name}__cpu"
        lowered = forward_kernel(dp.diagram, dp.plan) if forward_kernel else ([], None)
        functions.append((dp, blocks, lowered, runners))
    # ops are named by a hash of their code, native kernels included: the same name always means
    # the same computation
    code = "\n".join([*(line for _, blocks, (extra, _), _ in functions for lines in blocks + [extra]
                        for line in lines), *(cpu_versions.code() if cpu_versions else ())])
    w()
    namespace = f"fusionc_{hashlib.sha256(code.encode()).hexdigest()[:16]}"
    w(f'_ops = rt.OpNamespace("{namespace}")')
    for dp, blocks, (extra, runner), runners in functions:
        d = dp.diagram
        forward = dp.forward.program
        for block in blocks + [extra]:
            if block:
                w()
                w()
                w.lines.extend(block)
        w()
        w()
        w(f"# {d.name}: an op's autograd runs the op of its derivative program, masked to the gradients")
        w("# used (the cotangents present); the last ones' own derivative differentiates torch code: the")
        w("# forward's (or theirs, where they have some)")
        for k, (first, second) in enumerate(zip(dp.firsts, dp.seconds)):
            differentiated = f"(_{d.name}, {k}, {len(forward.inputs)})"  # the forward's torch code, output k
            run = runners.get(second.name)
            # a kernel autograd cannot see through: its derivative differentiates the forward's torch code
            reference = f", reference=rt.second_order{differentiated}" if run else ""
            w(f'_ops.register("{second.name}", {_runner(second, runners, "rt.second_order" + differentiated)}, '
              f'{_signature(second.program)}, masked=True{reference}{_native_impl(cpu, second.name)})')
            w(f'_ops.register("{first.name}", {_runner(first, runners, "rt.first_order" + differentiated)}, '
              f'{_signature(first.program)}, backward_all=_ops["{second.name}"], masked=True'
              f'{_native_impl(cpu, first.name)})')
        backward = ", ".join(f'_ops["{f.name}"]' for f in dp.firsts)
        w(f'_ops.register("{d.name}", {runner or runners.get(forward.name) or "_" + d.name}, {_signature(forward)}, '
          f'backward=[{backward}], check_indices=True{_native_impl(cpu, d.name)})')
    # the CG tables' float64 values, written to round-trip exactly: loading the module needs no sympy
    tables = sorted({cg_degrees(c) for dp in ps.programs for c in dp.forward.program.constants if c.startswith("cg_")})
    w()
    w()
    w("_CG_TABLES = {  # real-basis CG tables C[i, j, k] by (l1, l2, l3), as sparse (i, j, k, value)")
    w.indent()
    for ls in tables:
        w(f"{ls!r}: (")
        _four_a_line(w, [f"({i}, {j}, {k}, {v!r})," for i, j, k, v in cg_entries(*ls)])
        w("),")
    w.dedent()
    w("}")
    for dp in ps.programs:
        w()
        w()
        emit_class(w, dp.diagram, dp.forward.program, namespace)
    if cpu_versions is not None:
        cpu_versions.write(w)
    return "\n".join(w.lines) + "\n"


def _runner(v: Versions, runners: dict[str, str], differentiated: str) -> str:
    """What a derivative program's op runs (its native version aside): a kernel (`runners`), its
    torch code, or else the forward's torch code `differentiated`."""
    if v.name in runners:
        return runners[v.name]
    return f"_{v.name}" if v.torch is not None else differentiated


def _native_impl(cpu: dict[str, str], name: str) -> str:
    return f", cpu={cpu[name]}" if name in cpu else ""

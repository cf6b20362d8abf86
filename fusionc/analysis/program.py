"""Diagrams as programs of labelled contractions, and their derivatives as programs of the same kind.

A `Program` is what a back end runs for one diagram: flat tensors (rows × size, or size alone)
cut into segments, and statements that each add one labelled contraction to a segment —
`out[zwk] += c · Σ x[zui] y[zvj] cg[ijk] W[uvw]` — or gather/scatter one weight set per row.
It is the fusion diagram with its channel and component indices written out: every path, every
coupling of a planned fusion tree, every weighted sum is one statement, and intermediate nodes
of the plan are temporaries shared by the statements that read them.

The derivative of a program is again a program (DESIGN.md: the input's leg becomes the output,
the output's cotangent becomes an input). For a statement out += c · Π operands, the gradient
with respect to one operand is the same contraction with that operand's labels as output and the
cotangent of `out` in its place; labels the operand lacks (rows `z` for shared weights) are summed,
so weight gradients reduce over rows by construction. Gathers and scatters are each other's
adjoints. The derivative program recomputes the forward temporaries it needs, so the derivative
of the derivative (double backward, forces in training) is built by the same function; built for
one cotangent at a time, it leaves out all the work only an absent cotangent would need.

Two choices are made with a CPU cost model: a product whose second operand has one channel per
block (spherical harmonics) is lowered in batches — all its CG tables stacked in one constant
matrix, paths grouped by (input block, output block) — when that beats one chain per path; and
`factorize` splits every contraction into pairwise ones in the cheapest order, sharing pairwise
intermediates between statements.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from math import prod

from fusionc.algebra.cg import wigner_3j
from fusionc.analysis.cost import pair_orders, path_equation
from fusionc.analysis.layout import Strided, natural_orders, plan_pair, row_view
from fusionc.analysis.plan import Contribution, Couple, DiagramPlan, Leaf, WeightedSum
from fusionc.ir.diagram import CouplingVertex, Diagram, path_label
from fusionc.ir.irreps import Irreps
from fusionc.machine import CpuBlas, CpuNative, GpuTriton, Machine

#: Rows assumed when laying out views (`view_layout`): the layouts chosen depend on how rows
#: compare with channel and component sizes, and any batch from a few hundred rows up chooses alike.
PLANNING_ROWS = CpuBlas.planning_rows


@dataclass(frozen=True)
class Tensor:
    """A flat tensor: (n, size) when `rows`, else (size,). Kinds: input (rows of features, weights
    or cotangents, or a non-row cotangent), index (an (n,) integer column), param (the module's
    flat weight vector), const (a CG table or recoupling matrix), temp, output."""

    name: str
    kind: str
    size: int
    rows: bool
    shape: tuple[int, ...] = ()  # constants: their table shape
    space: str | None = None  # the index space of its rows (None: a diagram's one implicit space)
    points: str | None = None  # an index into rows of another space: that space

    @property
    def differentiable(self) -> bool:
        return self.kind in ("input", "param", "temp", "output")


@dataclass(frozen=True)
class View:
    """Elements [start, start + prod(shape)) of a tensor's last axis, as `shape`, with einsum
    labels (a leading `z` for the rows axis of a row tensor)."""

    tensor: str
    start: int
    shape: tuple[int, ...]
    labels: str
    #: in a native kernel (`fusionc.analysis.segment`): the row `index[z]` of the tensor (in the space
    #: the index points into) rather than row z, a gather read in place or a scatter written in place
    index: str | None = None

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class Einsum:
    """out += coeff · einsum(operands -> out.labels)."""

    out: View
    operands: tuple[View, ...]
    coeff: float = 1.0
    note: str = ""
    #: the program's keys (bits) it runs for, None for all (`mask`)
    when: int | None = None


@dataclass(frozen=True)
class Gather:
    """out (rows) += sets[index[z]], `source` viewed as (sets, out.numel); a source with rows (of
    the space the index points into: `sets` 0) has its rows as the sets."""

    out: View
    source: View
    index: str
    sets: int
    note: str = ""
    when: int | None = None


@dataclass(frozen=True)
class Scatter:
    """out (sets × numel, no rows) += Σ_z over rows with index[z] = s of source[z] into set s; an
    out with rows (of the space the index points into: `sets` 0) has its rows as the sets."""

    out: View
    source: View
    index: str
    sets: int
    note: str = ""
    when: int | None = None


Statement = Einsum | Gather | Scatter


@dataclass(frozen=True)
class Kernel:
    """A run of row-local statements that one native function runs, row by row (`segment`).

    `homes` says where each tensor the statements write lives: `local`, a per-row buffer of the
    function (written and read only here); `new`, a tensor this function allocates and writes
    whole, `add`, one an earlier kernel allocated, which this one adds to; `piece`, a part of a
    tensor that torch code writes too (a fresh piece, summed with the others where it is read).
    `ready` names the tensors complete after it."""

    name: str
    statements: tuple[Einsum, ...]
    homes: tuple[tuple[str, str], ...]
    ready: tuple[str, ...]
    #: its runs of statements of one form loop over tables (`fusionc.analysis.schedule.native`)
    tabled: bool = False
    #: the index space its rows are (None: a diagram's one implicit space)
    space: str | None = None
    #: the index it scatters by, if any: it runs rows grouped by that index's value (edges by
    #: receiver), each group by one thread, in row order, so that every sum lands the same way
    by: str | None = None


@dataclass(frozen=True)
class Program:
    """`inputs` are the op's positional row arguments, then `weight` (the param) and `constants`."""

    name: str
    tensors: dict[str, Tensor]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    constants: tuple[str, ...]
    statements: tuple[Statement, ...]
    doc: str = ""
    #: constant matrices other than CG tables, as sparse entries (row, column, value)
    matrices: dict[str, tuple[tuple[int, int, float], ...]] = field(default_factory=dict)
    #: per statement, the temporaries nothing after it reads (`liveness`; empty before that pass)
    frees: tuple[tuple[str, ...], ...] = ()
    #: what a call's mask bits stand for (`mask`): bit k, keys[k] — an output wanted (a vector-Jacobian
    #: product) or a cotangent input present (its own); a statement runs when its `when` meets the mask
    keys: tuple[str, ...] = ()

    def reads(self, s: Statement | Kernel) -> tuple[View, ...]:
        if isinstance(s, Kernel):
            return tuple(v for t in s.statements for v in t.operands)
        return s.operands if isinstance(s, Einsum) else (s.source,)

    def pretty(self) -> str:
        """A printable form: the tensors, then one line per statement (`--dump-ir`)."""
        lines = [f"program {self.name}" + (f"  ({self.doc})" if self.doc else "")]
        roles = {**{t: "in" for t in self.inputs}, **{t: "out" for t in self.outputs}}
        for name, t in self.tensors.items():
            rows = f"n_{t.space}, " if t.space else "n, "
            shape = (rows if t.rows else "") + ", ".join(map(str, t.shape or (t.size,)))
            lines.append(f"  {roles.get(name, t.kind):<6}{name} ({shape})")
        for k, s in enumerate(self.statements):
            lines.append("  " + pretty_statement(self, s))
            if self.frees and self.frees[k]:
                lines.append(f"    free {', '.join(self.frees[k])}")
        return "\n".join(lines)

    @property
    def differentiable_inputs(self) -> tuple[str, ...]:
        return tuple(i for i in self.inputs if self.tensors[i].kind == "input")


def row_space(p: Program, s: Einsum) -> str | None:
    """The index space of the rows an einsum runs over (its row tensors share one; a view read or
    written at `index[z]` is in the space the index points into)."""
    return next((p.tensors[v.tensor].space for v in (s.out, *s.operands) if p.tensors[v.tensor].rows and not v.index),
                None)


def pretty_view(p: Program, v: View) -> str:
    """`x[16:64]:zui(16,3)`: the elements of the tensor, its labels and shape."""
    whole = (v.start, v.numel) == (0, p.tensors[v.tensor].size)
    part = "" if whole else f"[{v.start}:{v.start + v.numel}]"
    at = f"@{v.index}" if v.index else ""
    return f"{v.tensor}{at}{part}:{v.labels}({','.join(map(str, v.shape))})"


def pretty_statement(p: Program, s: Statement | Kernel) -> str:
    if isinstance(s, Kernel):
        homes = ", ".join(f"{t} {how}" for t, how in s.homes)
        rows = (f", rows of {s.space}" if s.space else "") + (f" grouped by {s.by}" if s.by else "")
        head = f"native {s.name} ({homes}){', tabled' if s.tabled else ''}{rows}:"
        return "\n    ".join([head] + [pretty_statement(p, t) for t in s.statements])
    note = f"  # {s.note}" if s.note else ""
    if s.when is not None:
        note += f"  [when {', '.join(k for b, k in enumerate(p.keys) if s.when >> b & 1)}]"
    if isinstance(s, Einsum):
        coeff = "" if s.coeff == 1.0 else f"{s.coeff:.6g} · "
        return f"{pretty_view(p, s.out)} += {coeff}{' · '.join(pretty_view(p, v) for v in s.operands)}{note}"
    what = "gather" if isinstance(s, Gather) else "scatter"
    sets = f"{s.sets} sets" if s.sets else f"rows of {p.tensors[s.index].points}"
    return f"{pretty_view(p, s.out)} += {what}({pretty_view(p, s.source)}, by {s.index}, {sets}){note}"


def _cg(la: int, lb: int, lk: int, labels: str = "ijk") -> View:
    return View(f"cg_{la}_{lb}_{lk}", 0, (2 * la + 1, 2 * lb + 1, 2 * lk + 1), labels)


def cg_degrees(name: str) -> tuple[int, int, int]:
    """(l1, l2, l3) of the CG table constant `cg_<l1>_<l2>_<l3>` (`_cg`)."""
    l1, l2, l3 = map(int, name[3:].split("_"))
    return l1, l2, l3


def _constant_order(name: str) -> tuple:
    """CG tables by (l1, l2, l3), then the other constant matrices by name."""
    if name.startswith("cg_"):
        return (0, cg_degrees(name), "")
    return (1, (), name)


def recoupling_name(t: CouplingVertex) -> str:
    return "recouple_" + t.stem


class _Lowering:
    """Builds the forward program of one diagram from its plan."""

    def __init__(self, d: Diagram, plan: DiagramPlan, model: CpuBlas) -> None:
        self.d, self.plan, self.model = d, plan, model
        self.tensors: dict[str, Tensor] = {"weight": Tensor("weight", "param", d.internal_weight_numel, False)}
        self.statements: list[Statement] = []
        self.constants: dict[str, Tensor] = {}
        self.matrices: dict[str, tuple[tuple[int, int, float], ...]] = {}
        self.nodes: dict[str, View] = {}  # plan node -> where it lives
        self.bases: dict[str, int] = {}  # term -> offset of its weights in the tensor holding them
        weight_inputs = {t.weight_source: t.weight_numel for t in d.vertices if t.weight_source is not None}
        for i in d.inputs:
            if i.kind == "irreps":
                self.tensors[i.name] = Tensor(i.name, "input", i.irreps.dim, True, space=i.space)
            elif i.kind == "weights":
                self.tensors[i.name] = Tensor(i.name, "input", weight_inputs[i.name], True, space=i.space)
            else:  # size: the number of values (0 for an index into another space's rows)
                self.tensors[i.name] = Tensor(i.name, "index", i.size or 0, True, space=i.space, points=i.points)
        for v in d.values:
            self.tensors[v.name] = Tensor(v.name, "output" if v.is_output else "temp", v.irreps.dim, True,
                                          space=v.space)
        self.gathered: dict[str, str] = {}  # `x[i]` -> the temporary holding the rows it reads
        self.sums: dict[str, Irreps] = {}  # the temporary of each `y[i] += …`, rows before the scatter
        self.space: str | None = None  # the space of the rows of the term being lowered

    def block(self, name: str, index: int, labels: str, split: tuple[int, ...] | None = None) -> View:
        """Block `index` of a value or operand; of `x[i]` (`CouplingVertex.keys`), of the rows of x
        that i picks, gathered once for the diagram."""
        base = name.partition("[")[0]
        irreps = self.sums[base] if base in self.sums else self.d.irreps_of(base)
        start, _ = irreps.slices()[index]
        b = irreps[index]
        return View(self.tensor_of(name), start, (*(split or (b.mul,)), b.ir.dim), labels)

    def tensor_of(self, key: str) -> str:
        """The tensor an operand reads: itself, or for `x[i]` the rows of x that i picks."""
        base, _, by = key.rstrip("]").partition("[")
        return self.gather(base, by) if by else key

    def gather(self, name: str, index: str) -> str:
        key = f"{name}[{index}]"
        if key not in self.gathered:
            size = self.d.irreps_of(name).dim
            temp = self.gathered[key] = f"_x_{name}__{index}"  # source names have no '__': no clash
            self.tensors[temp] = Tensor(temp, "temp", size, True, space=self.tensors[index].space)
            self.statements.append(Gather(View(temp, 0, (size,), "zp"), View(name, 0, (size,), "zp"), index, 0,
                                          note=f"{key}: the row of {name} each row of {self.tensors[index].space} reads"))
        return self.gathered[key]

    def const(self, view: View) -> View:
        if view.tensor not in self.constants:
            self.constants[view.tensor] = Tensor(view.tensor, "const", view.numel, False, view.shape)
        return view

    def temp(self, name: str, shape: tuple[int, ...], rows: bool = True) -> str:
        self.tensors[name] = Tensor(name, "temp", prod(shape), rows, space=self.space if rows else None)
        return name

    def weights(self, t: CouplingVertex, offset: int) -> str | None:
        """The tensor holding the term's (one set of) weights: the param, a `by` input, the gathered
        per-index set, or (recoupled) their image under the recoupling matrix."""
        if not t.has_weights:
            return None
        if t.weight_source is not None:
            source, base = t.weight_source, 0
        elif t.per is not None:
            source, base = self.temp("_w_" + t.stem, (t.weight_numel,)), 0
            self.statements.append(Gather(View(source, 0, (t.weight_numel,), "zp"),
                                          View("weight", offset, (t.weight_sets * t.weight_numel,), "p"),
                                          t.per, t.weight_sets, note=f"one weight set per row, chosen by {t.per}"))
        else:
            source, base = "weight", offset
        self.bases[t.id] = base
        if t.recoupled is None:
            return source
        rows = self.tensors[source].rows
        mul = t.paths[0].weight_shape[0]
        shape = (len(t.recoupled.paths), mul)
        name = self.temp("_r_" + t.stem, shape, rows)
        z = "z" if rows else ""
        matrix = self.const(View(recoupling_name(t), 0, (len(t.paths), len(t.recoupled.paths)), "pq"))
        self.matrices[matrix.tensor] = t.recoupled.matrix
        self.statements.append(Einsum(View(name, 0, shape, z + "qu"),
                                      (View(source, base, (len(t.paths), mul), z + "pu"), matrix),
                                      note="recoupled weights: same function, cheaper shape"))
        self.bases[t.id] = 0
        return name

    def weight_view(self, t: CouplingVertex, source: str, start: int, shape: tuple[int, ...], labels: str) -> View:
        rows = self.tensors[source].rows
        return View(source, self.bases[t.id] + start, shape, ("z" if rows else "") + labels)

    def run(self) -> Program:
        d = self.d
        offset = 0
        for v in d.values:
            value = v.name
            if v.scatter is not None:  # its terms' rows, then each added into the row the index picks
                value = "_s_" + v.name
                self.tensors[value] = Tensor(value, "temp", v.irreps.dim, True, space=v.terms[0].space)
                self.sums[value] = v.irreps
            for t in v.terms:
                self.space = t.space
                source = self.weights(t, offset)
                offset += t.parameter_numel
                if t.is_tree:
                    self.tree(value, t, source)
                elif not self.batched(value, t, source):
                    self.paths(value, t, source)
            if v.scatter is not None:
                size = v.irreps.dim
                self.statements.append(Scatter(View(v.name, 0, (size,), "zp"), View(value, 0, (size,), "zp"),
                                               v.scatter, 0, note=f"{v.name}[{v.scatter}] += each row's sum"))
        inputs = tuple(i.name for i in d.inputs)
        tensors = {**self.tensors, **self.constants}
        constants = tuple(sorted(self.constants, key=_constant_order))
        return Program(d.name, tensors, inputs, tuple(v.name for v in d.outputs), constants, tuple(self.statements),
                       matrices=self.matrices)

    def batched(self, value: str, t: CouplingVertex, source: str | None) -> bool:
        """A product x ⊗ y whose second operand has one channel per block (spherical harmonics) and
        whose weights mix or scale channels (uvw, uvu): lowered to a few large products instead of
        one chain per path, when the cost model says so. Every path's CG table, scaled by its
        normalisation, goes into one constant matrix G, so that y · G gives, per row, every path's
        (i, k) map at once (columns ordered i, k, path: each group's map is then a (k·path) matrix
        per row without a copy); per group of paths (x block, output block): x contracted with its
        part of that (a product per row), then with the group's weights stacked (one matrix product).
        Returns False (nothing emitted) where this does not apply or costs more."""
        if len(t.operands) != 2 or t.mode not in ("uvw", "uvu") or any(b.mul != 1 for b in t.irreps_in[1]):
            return False
        if not t.paths:
            return False
        groups: dict[tuple[int, int], list] = {}
        for p in t.paths:
            groups.setdefault((p.operand_blocks[0], p.out_block), []).append(p)
        x_irreps, y_irreps, out_irreps = t.irreps_in[0], t.irreps_in[1], t.irreps_out
        rows, penalty = self.model.planning_rows, self.model.batched_penalty
        batched_cost = per_path_cost = 0.0
        for (b, o), ps in groups.items():
            mul, d_b, d_o, n_p = x_irreps[b].mul, x_irreps[b].ir.dim, out_irreps[o].ir.dim, len(ps)
            # y · G is one large matrix product (zeros included): counted as the per-path y · CG
            # products it replaces, not by its dense FLOPs, which grow with all of y and tipped the
            # choice to per-path chains from l_max = 4 (fc_tp forward+backward, 1,000 rows, l_max = 4:
            # 212 ms per path against 45 ms batched)
            batched_cost += sum(2 * rows * y_irreps[p.operand_blocks[1]].ir.dim * d_b * d_o for p in ps)
            batched_cost += pair_cost("zui", "zipk", "zupk", {"z": rows, "u": mul, "i": d_b, "p": n_p, "k": d_o},
                                      penalty)
            w_mul = out_irreps[o].mul
            batched_cost += 2 * rows * mul * n_p * d_o * (w_mul if t.mode == "uvw" else 1)
            for p in ps:
                d_j = y_irreps[p.operand_blocks[1]].ir.dim
                per_path_cost += 2 * rows * d_j * d_b * d_o  # y · CG
                per_path_cost += pair_cost("zui", "zik", "zuk", {"z": rows, "u": mul, "i": d_b, "k": d_o}, penalty)
                per_path_cost += 2 * rows * mul * d_o * (w_mul if t.mode == "uvw" else 1)
        batched_cost += self.model.op_cost * (1 + 2 * len(groups))
        per_path_cost += self.model.op_cost * 3 * len(t.paths)
        if batched_cost > per_path_cost:
            return False
        y_slices = y_irreps.slices()
        name = "_g_" + t.stem
        entries: list[tuple[int, int, float]] = []
        column = 0
        layout = []
        for (b, o), ps in sorted(groups.items()):
            d_b, d_o, n_p = x_irreps[b].ir.dim, out_irreps[o].ir.dim, len(ps)
            for q, p in enumerate(ps):
                table = wigner_3j(x_irreps[b].ir.l, y_irreps[p.operand_blocks[1]].ir.l, out_irreps[o].ir.l)
                y_start = y_slices[p.operand_blocks[1]][0]
                for i, j, k in zip(*table.nonzero()):
                    entries.append((y_start + int(j), column + (int(i) * d_o + int(k)) * n_p + q,
                                    float(table[i, j, k]) * p.normalization))
            layout.append(((b, o), ps, column))
            column += d_b * n_p * d_o
        matrix = self.const(View(name, 0, (y_irreps.dim, column), "jc"))
        self.matrices[name] = tuple(sorted(entries))
        maps = self.temp("_m_" + t.stem, (column,))
        self.statements.append(Einsum(View(maps, 0, (column,), "zc"),
                                      (View(self.tensor_of(t.keys[1]), 0, (y_irreps.dim,), "zj"), matrix),
                                      note=f"every path's (i, k) map at once: {t.operands[1]} · G"))
        rows_w = self.tensors[source].rows
        z = "z" if rows_w else ""
        one, stacked_labels = ("uw", "puw") if t.mode == "uvw" else ("u", "pu")  # one path's weights, a group's
        for (b, o), ps, start in layout:
            mul, d_b, d_o, n_p = x_irreps[b].mul, x_irreps[b].ir.dim, out_irreps[o].ir.dim, len(ps)
            w_mul = out_irreps[o].mul
            group = f"{t.stem}_{b}_{o}"
            shape = (mul, w_mul) if t.mode == "uvw" else (mul,)
            numel = prod(shape)
            offsets = [self.bases[t.id] + p.weight_offset for p in ps]
            if offsets == list(range(offsets[0], offsets[0] + numel * n_p, numel)):  # adjacent: read in place
                stacked = View(source, offsets[0], (n_p, *shape), z + stacked_labels)
            else:  # gather the group's weights into one block
                packed = self.temp(f"_w_{group}", (n_p, *shape), rows_w)
                for q, offset in enumerate(offsets):
                    self.statements.append(Einsum(View(packed, q * numel, shape, z + one),
                                                  (View(source, offset, shape, z + one),)))
                stacked = View(packed, 0, (n_p, *shape), z + stacked_labels)
            out = self.block(value, t.placement[o], "zwk" if t.mode == "uvw" else "zuk")
            note = f"{len(ps)} paths {x_irreps[b]} ⊗ {t.operands[1]} -> {out_irreps[o]}"
            pair = (self.block(t.keys[0], b, "zui"), View(maps, start, (d_b, d_o, n_p), "zikp"))
            if rows_w:  # per-row weights: x with the maps first, then an elementwise weighting
                products = View(self.temp(f"_t_{group}", (mul, n_p, d_o)), 0, (mul, n_p, d_o), "zupk")
                self.statements.append(Einsum(products, pair, note=note))
                self.statements.append(Einsum(out, (products, stacked)))
            else:  # shared weights: one statement, which `factorize` orders (and its derivatives their own way)
                self.statements.append(Einsum(out, (*pair, stacked), note=note))
        return True

    def paths(self, value: str, t: CouplingVertex, source: str | None) -> None:
        equation = path_equation(t.mode, len(t.operands), t.per_row_weights)
        ins, out = equation.split("->")
        labels = ins.split(",")
        for p in t.paths:
            operands = []
            for op, b, lab in zip(t.keys, p.operand_blocks, labels):
                operands.append(self.block(op, b, lab))
            rest = labels[len(t.operands):]
            if len(t.operands) == 2:
                ls = [irreps[b].ir.l for irreps, b in zip(t.irreps_in, p.operand_blocks)]
                operands.append(self.const(_cg(ls[0], ls[1], t.irreps_out[p.out_block].ir.l, rest[0])))
                rest = rest[1:]
            if p.weight_shape:
                operands.append(self.weight_view(t, source, p.weight_offset, p.weight_shape, rest[0].lstrip("z")))
            ob = t.placement[p.out_block]
            split = None
            if t.mode == "uvuv":
                split = (t.irreps_in[0][p.operand_blocks[0]].mul, t.irreps_in[1][p.operand_blocks[1]].mul)
            self.statements.append(Einsum(self.block(value, ob, out, split), tuple(operands), p.normalization,
                                          note=path_label(t, p)))

    def tree(self, value: str, t: CouplingVertex, source: str | None) -> None:
        """The plan's steps for one tree term; nodes shared with earlier terms are reused."""

        def scaled(name: str, start: int | None, mul: int, coeff: float, out: View) -> Einsum:
            operands = (self.nodes[name],)
            if start is not None:
                operands += (self.weight_view(t, source, start, (mul,), "u"),)
            return Einsum(out, operands, coeff)

        for step in self.plan.vertex_steps[t.id]:
            if isinstance(step, Leaf):  # operand blocks are read in place
                self.nodes[step.name] = self.block(step.operand, step.block, "zui")
            elif isinstance(step, Couple):
                shape = (step.mul, step.k.dim)
                out = View(self.temp("_" + step.name, shape), 0, shape, "zuk")
                a, b = self.nodes[step.a], self.nodes[step.b]
                self.statements.append(Einsum(out, (a, replace(b, labels="zuj"),
                                                    self.const(_cg(step.la, step.lb, step.k.l))),
                                              note=f"{step.name} = ({step.a} ⊗ {step.b}) -> {step.mul}x{step.k}"))
                self.nodes[step.name] = replace(out, labels="zui")
            elif isinstance(step, WeightedSum):
                shape = (step.mul, step.ir.dim)
                out = View(self.temp("_" + step.name, shape), 0, shape, "zui")
                for part, start, coeff in step.parts:
                    self.statements.append(scaled(part, start, step.mul, coeff, out))
                self.nodes[step.name] = out
            elif isinstance(step, Contribution):
                self.statements.append(scaled(step.node, step.start, step.mul, step.coeff,
                                              self.block(value, step.block, "zui")))


def lower(d: Diagram, plan: DiagramPlan, model: CpuBlas = CpuBlas()) -> Program:
    """The forward program of a diagram, following its plan (and choosing lowerings by `model`)."""
    return _Lowering(d, plan, model).run()


def derivative(p: Program, name: str, output: str | None = None, prefix: str = "d_") -> Program:
    """The vector-Jacobian product of `p` as a program named `name`: its inputs are p's inputs, then
    the cotangent of `output` (of every output, when None), named prefix + output; its outputs are
    the gradients of p's differentiable inputs, then of the param. With one output's cotangent
    only, everything that only the others' would reach is left out."""
    taken = set(p.tensors)

    def grad_name(name: str) -> str:
        g = prefix + name
        while g in taken:
            g = "d" + g
        taken.add(g)
        return g

    seeded = p.outputs if output is None else (output,)
    grads: dict[str, str] = {}
    tensors = dict(p.tensors)
    for tensor, t in p.tensors.items():
        if t.differentiable and (t.kind != "output" or tensor in seeded):
            grads[tensor] = grad_name(tensor)
            kind = "input" if t.kind == "output" else ("output" if t.kind in ("input", "param") else "temp")
            tensors[grads[tensor]] = Tensor(grads[tensor], kind, t.size, t.rows, space=t.space)
    statements: list[Statement] = [s for s in p.statements if p.tensors[s.out.tensor].kind == "temp"]
    for s in reversed(p.statements):
        if s.out.tensor not in grads:  # an output without a cotangent
            continue
        g_out = replace(s.out, tensor=grads[s.out.tensor])
        if isinstance(s, Einsum):
            for k, x in enumerate(s.operands):
                if not p.tensors[x.tensor].differentiable:
                    continue
                others = s.operands[:k] + s.operands[k + 1:]
                statements.append(Einsum(replace(x, tensor=grads[x.tensor]), (g_out,) + others, s.coeff,
                                         note=f"∂/∂{x.tensor}: {s.note}" if s.note else ""))
        elif isinstance(s, Gather):
            statements.append(Scatter(replace(s.source, tensor=grads[s.source.tensor]), g_out, s.index, s.sets,
                                      note="weight gradient per index value"))
        else:
            statements.append(Gather(replace(s.source, tensor=grads[s.source.tensor]), g_out, s.index, s.sets))
    outputs = tuple(grads[i] for i in p.differentiable_inputs) + (grads["weight"],)
    inputs = p.inputs + tuple(grads[o] for o in seeded)
    what = "" if output is None or len(p.outputs) == 1 else f" for the cotangent of {output}"
    return prune(Program(name, tensors, inputs, outputs, p.constants, tuple(statements),
                         doc=f"the vector-Jacobian product of {p.name}{what}", matrices=p.matrices))


def prune(p: Program) -> Program:
    """Drop statements that read a zero (a temporary nothing writes) or whose results no output
    needs (`_active`), and tensors no statement touches."""
    statements = [p.statements[k] for k in sorted(_active(p, set(), p.outputs))]
    used = ({v.tensor for s in statements for v in p.reads(s)} | set(p.outputs) | set(p.inputs) | set(p.constants)
            | {s.index for s in statements if not isinstance(s, Einsum)} | {"weight"})
    return replace(p, tensors={k: v for k, v in p.tensors.items() if k in used}, statements=tuple(statements))


def pair_cost(a: str, b: str, kept: str, sizes: dict[str, int], penalty: float, element: float = 1) -> float:
    """Cost of forming `kept` from operands labelled `a` and `b`: FLOPs, weighted by how well the
    target runs that kind of product (`penalty` for products batched over rows), plus the elements
    written (each `element` FLOPs)."""
    labels = set(a) | set(b)
    flops = 2 * prod(sizes[c] for c in labels)
    batched = "z" in a and "z" in b and "z" in kept and labels - set(kept)
    return flops * (penalty if batched else 1) + element * prod(sizes[c] for c in kept)


def view_layout(v: View, t: Tensor, rows: int = PLANNING_ROWS) -> Strided:
    """The layout a back end reads view v of tensor t in: a slice of (rows × size) for a row
    tensor, contiguous within the row; a temporary as its product wrote it, in label order
    (`factorize` lays intermediates out that way)."""
    return row_view(v.labels, (rows, *v.shape) if t.rows else v.shape, t.size if t.rows else None)


def factorize(p: Program, model: CpuBlas | CpuNative | GpuTriton = CpuBlas(), ahead: bool = False,
              blas: CpuBlas = CpuBlas()) -> Program:
    """Split every contraction of three or more operands into pairwise ones, in the order of least
    `pair_cost` on the target `model` describes (matrix products laid out by `blas`); a channel by
    channel CG contraction stays whole where the target runs it over the table's non-zeros
    (`sparse_cg`); a pairwise intermediate that several statements form (the cotangent with the
    weights, shared by the gradients of both operands) is formed once, and costs nothing the
    second time, so orders that share are preferred. Each intermediate's labels are ordered as
    its matrix product writes them and, if it can be, as the product reading it needs them
    (`fusionc.analysis.layout`), so that neither copies it. With `ahead`, a pair that later
    statements could share too costs its share only: for fc_tp's gradients, cotangent·weights,
    shared by those of x and of y's map, rather than cotangent·map, which ties with it for x's
    alone (three matrix products per group of paths become two)."""
    rows, penalty = blas.planning_rows, model.batched_penalty
    element, sparse = model.element_cost, model.sparse_cg
    tensors = dict(p.tensors)
    formed: dict[tuple, View] = {}
    formers: dict[tuple, int] = {}  # position in `statements` of the statement forming each
    statements: list[Statement] = []

    def strided(v: View) -> Strided:
        return view_layout(v, tensors[v.tensor], rows)

    def layout(a: View, b: View, kept: str, rest: list[View], out: View, sizes: dict[str, int]) -> str:
        """The order of an intermediate's labels: one its product writes without a copy and, where
        the statement's last product reads it, one that product reads without a copy if it can."""
        candidates = natural_orders(strided(a), strided(b), kept)
        if len(rest) != 1:
            return candidates[0]

        def copies(order: str) -> int:
            reader = plan_pair(strided(rest[0]), row_view(order, tuple(sizes[c] for c in order)), out.labels, blas)
            return reader.copies if reader is not None else 0

        return min(candidates, key=copies)

    for position, s in enumerate(p.statements):
        if not isinstance(s, Einsum) or len(s.operands) < 3 or (sparse and sparse_cg(p, s) is not None):
            statements.append(s)
            continue
        upcoming = ([t.operands for t in p.statements[position:] if isinstance(t, Einsum) and len(t.operands) >= 3]
                    if ahead else [])
        sizes = {"z": rows}
        for v in s.operands:
            sizes.update(zip(v.labels.replace("z", ""), v.shape))

        note = s.note

        def run(order, build: bool) -> tuple[float, list[View]]:
            nonlocal note
            operands, total = list(s.operands), 0.0
            for step, pair in enumerate(order):
                a, b = (operands[k] for k in pair)
                if step == len(order) - 1:  # the statement itself: out = a · b
                    total += pair_cost(a.labels, b.labels, s.out.labels, sizes, penalty, element)
                    break
                for k in sorted(pair, reverse=True):
                    operands.pop(k)
                later = set(s.out.labels).union(*(v.labels for v in operands))
                kept = "".join(sorted(set(a.labels + b.labels) & later, key=lambda c: (c != "z", c)))
                found = (tuple(sorted((a, b), key=repr)), kept)  # formed once, whatever its layout
                if found in formed and build:  # it runs whenever a statement reading it does
                    at = formers[found]
                    statements[at] = replace(statements[at], when=union(statements[at].when, s.when))
                if found not in formed:
                    sharers = max(sum(1 for ops in upcoming if a in ops and b in ops), 1)
                    total += pair_cost(a.labels, b.labels, kept, sizes, penalty, element) / sharers
                    if not build:
                        operands.append(View("?", 0, tuple(sizes[c] for c in kept if c != "z"), kept))
                        continue
                    ordered = layout(a, b, kept, operands, s.out, sizes)
                    shape = tuple(sizes[c] for c in ordered if c != "z")
                    name = f"_c{len(formed)}"
                    tensors[name] = Tensor(name, "temp", prod(shape), "z" in kept,
                                           space=row_space(p, s) if "z" in kept else None)
                    formed[found] = View(name, 0, shape, ordered)
                    formers[found] = len(statements)
                    statements.append(Einsum(formed[found], (a, b), note=note, when=s.when))
                    note = ""
                operands.append(formed[found])
            return total, operands

        best = min(pair_orders(len(s.operands)), key=lambda order: run(order, build=False)[0])
        _, operands = run(best, build=True)
        statements.append(replace(s, operands=tuple(operands), note=note))
    return replace(p, tensors=tensors, statements=tuple(statements))


def differentiate(forward: Program) -> tuple[tuple[Program, ...], tuple[Program, ...]]:
    """Per output of the forward program its vector-Jacobian product; per product, the product's
    own, for all its cotangents at once (`mask` lets a call run only what the cotangents present
    need: in force training, only the positions' gradient carries one)."""
    firsts = tuple(derivative(forward, f"{forward.name}__d" + (f"_{o}" if len(forward.outputs) > 1 else ""), o)
                   for o in forward.outputs)
    seconds = tuple(derivative(first, f"{first.name}__d2", prefix="d2_") for first in firsts)
    return firsts, seconds


def union(a: int | None, b: int | None) -> int | None:
    """The keys of a statement that runs for a's keys and for b's (None: for all)."""
    return None if a is None or b is None else a | b


def _active(p: Program, zero: set[str], outputs: tuple[str, ...]) -> set[int]:
    """Positions of the statements that compute `outputs` when the inputs in `zero` are zero: those
    left after dropping every statement that reads a zero (until none is left), then every one whose
    result no output needs."""
    kept = list(range(len(p.statements)))
    while True:
        written = {p.statements[k].out.tensor for k in kept}
        zeros = zero | {t for t, x in p.tensors.items() if x.kind == "temp" and t not in written}
        fewer = [k for k in kept if not any(v.tensor in zeros for v in p.reads(p.statements[k]))]
        if fewer == kept:
            break
        kept = fewer
    needed, active = set(outputs), set()
    for k in reversed(kept):
        s = p.statements[k]
        if s.out.tensor in needed:
            active.add(k)
            needed.update(v.tensor for v in p.reads(s))
    return active


def mask(p: Program, cotangents: tuple[str, ...] = ()) -> Program:
    """p with keys, and per statement the keys it runs for. A vector-Jacobian product's keys are its
    outputs: a call computes only the gradients autograd will use (`torch.autograd.grad(energy,
    positions)` for the forces never asks for the weights'); its own product's keys are its
    `cotangents` (inputs): a call computes only what the cotangents present reach, the absent ones
    passed as zeros. A statement runs for key k when the program with only key k (that output, or
    that cotangent with the others zero) needs it, so a call with any set of keys runs the union of
    what each needs alone, as its own pruned program would: no more work than one per key."""
    keys = cotangents or p.outputs
    actives = [_active(p, set(keys) - {key}, p.outputs) if cotangents else _active(p, set(), (key,)) for key in keys]
    everything = (1 << len(keys)) - 1
    statements = []
    for k, s in enumerate(p.statements):
        bits = sum(1 << b for b, active in enumerate(actives) if k in active)
        if bits:
            statements.append(replace(s, when=None if bits == everything else bits))
    return replace(p, statements=tuple(statements), keys=keys)


def group(p: Program) -> Program:
    """p with its statements in an order that keeps those of the same mask bits together, as far as
    what each reads and writes allows (the earliest first within a group), so that a masked call
    skips long stretches, or kernels, whole."""
    return replace(p, statements=scheduled(p, list(p.statements), lambda s: s.when)) if p.keys else p


def scheduled(p: Program, statements: list[Statement], key) -> tuple[Statement, ...]:
    """The statements in an order that keeps those of the same `key(statement)` together, as far
    as what each reads and writes allows (the earliest first within a key; writers of one tensor
    add up in any order)."""
    before: list[set[int]] = [set() for _ in statements]
    writers: dict[str, list[int]] = {}
    readers: dict[str, list[int]] = {}
    for k, s in enumerate(statements):
        for v in p.reads(s):
            before[k].update(writers.get(v.tensor, ()))
        before[k].update(readers.get(s.out.tensor, ()))  # writers of one tensor add up in any order
        for v in p.reads(s):
            readers.setdefault(v.tensor, []).append(k)
        writers.setdefault(s.out.tensor, []).append(k)
    after: list[list[int]] = [[] for _ in statements]
    for k, ks in enumerate(before):
        for j in ks:
            after[j].append(k)
    waiting = [len(ks) for ks in before]
    keys = [key(s) for s in statements]
    ready: dict[object, list[int]] = {}
    for k, n in enumerate(waiting):
        if not n:
            heapq.heappush(ready.setdefault(keys[k], []), k)
    order: list[int] = []
    group = keys[0] if statements else None
    while len(order) < len(statements):
        if not ready.get(group):
            group = min((g for g in ready if ready[g]), key=lambda g: ready[g][0])
        k = heapq.heappop(ready[group])
        order.append(k)
        for j in after[k]:
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready.setdefault(keys[j], []), j)
    return tuple(statements[k] for k in order)


def sparse_cg(p: Program, s: Statement) -> int | None:
    """The position of the CG table among s's operands when s contracts it channel by channel —
    `out[z,u,k] += c · a[z,u,i] · b[z,u,j] · CG[i,j,k] (· w[u])`, or a derivative of that: each of
    the table's three labels in exactly one other view, and every other label but the rows' in the
    output — so that it runs as a loop over the table's non-zeros, the channels innermost (native
    kernels). None for any other statement."""
    if not isinstance(s, Einsum) or len(s.operands) < 3:
        return None
    tables = [k for k, v in enumerate(s.operands) if v.tensor.startswith("cg_") and p.tensors[v.tensor].kind == "const"]
    if len(tables) != 1:
        return None
    cg = s.operands[tables[0]]
    others = [s.out] + [v for k, v in enumerate(s.operands) if k != tables[0]]
    if len(set(cg.labels)) != 3 or any(sum(c in v.labels for v in others) != 1 for c in cg.labels):
        return None
    dense = set("".join(v.labels for v in others)) - set(cg.labels) - {"z"}
    return tables[0] if dense <= set(s.out.labels) else None


def liveness(p: Program) -> Program:
    """p with `frees`: after each statement, the temporaries no later statement reads, which the
    code may free there (fc_tp's forward+backward peak: 35 MiB with every temporary live to the
    end of the function)."""
    last: dict[str, int] = {}
    for k, s in enumerate(p.statements):
        for v in p.reads(s):
            last[v.tensor] = k
    frees: list[list[str]] = [[] for _ in p.statements]
    for tensor, k in last.items():
        if p.tensors[tensor].kind == "temp":
            frees[k].append(tensor)
    return replace(p, frees=tuple(tuple(sorted(f)) for f in frees))


@dataclass(frozen=True)
class Versions:
    """One program as each target runs it: `program` as lowered or differentiated (the same for
    every target); `torch`, factorized for torch code (matrix products for the BLAS); `native`,
    factorized for the CPU's native kernels and cut into them (None where no statement runs
    natively); `triton`, factorized for the GPU."""

    program: Program
    torch: Program | None = None
    native: Program | None = None
    triton: Program | None = None

    @property
    def name(self) -> str:
        return self.program.name


@dataclass(frozen=True)
class DiagramPrograms:
    """A diagram's programs: the forward, per output its vector-Jacobian product (`firsts`), and
    per product its own (`seconds`), both masked (`mask`)."""

    diagram: Diagram
    plan: DiagramPlan
    forward: Versions
    firsts: tuple[Versions, ...]
    seconds: tuple[Versions, ...]

    def all(self) -> tuple[Versions, ...]:
        """Every program, in the order a module defines them."""
        return (self.forward, *self.firsts, *self.seconds)


@dataclass(frozen=True)
class ProgramSet:
    """What the pipeline hands a back end: the source, its diagrams and, per diagram, its programs
    as the back end's targets run them. Back ends render it; none changes it."""

    source: str
    filename: str
    backend: str | None
    diagrams: tuple[Diagram, ...]
    programs: tuple[DiagramPrograms, ...] = ()
    #: the machine model the programs were planned with (back ends lay matrix products out by it)
    machine: Machine = Machine()

"""Programs of labelled contractions (`fusionc.analysis.program`) as tables that one Triton kernel,
written once, interprets (`fusionc.runtime.table_kernel`): the derivative programs of a diagram
(backward and backward of backward, each masked: a statement that serves some mask bits only runs
when the call's mask meets them).

The back end writes no kernel code for them, so the generated code grows with the number of
statements, a row of integers each, and not with the code each would unroll into. Per program it
writes one `rt.TableProgram`: where each tensor lives (the runtime's `buf`: the constant 1, then
the tensors without rows the call passes, then a slot per program instance for those it writes,
then the tensors with rows as columns of an (n, R) block), the program's *forms* (a statement's
views, labels and sizes as text, `r.zab=r.zac*s.cb a16 b5 c3`, shared by the statements that
differ only in where their views start) and per statement its form, mask bits, coefficient and the
offsets of its views.

A tensor without rows is *full* (the same in every program instance: computed from weights and
constants alone) or *partial* (this instance's share of a sum over rows). Partial tensors are only
ever mapped linearly to outputs (a weight gradient through a recoupling matrix or a scatter); the
lowering checks that, and a full contribution to a partial tensor is added by instance 0 only.
"""

from __future__ import annotations

from dataclasses import replace
from math import prod

from fusionc.analysis.program import Einsum, Gather, Program, Scatter, View
from fusionc.backends.writer import CodeWriter
from fusionc.machine import GpuTriton

#: An einsum's labels in a form, renamed in order of appearance (rows stay `z`).
_NAMES = "abcdefghijklmnopqrstuvwxy"


class UnsupportedProgram(RuntimeError):
    """A program this lowering cannot run: a row sum used other than linearly, or a contraction of
    more than two operands. Factorized derivative programs never are; the check guards that."""


class _Layout:
    """Where each tensor of a program lives in the runtime's buffer, and which tensors without rows
    hold partial sums. Tensors with rows are columns of one (n, width) block per index space (one
    block for a diagram without spaces); `frame` numbers what a launch reads at run time from the
    runtime's frame: per space its block's start, width and rows, per index input where its
    values start and where its grouping (`fusionc.runtime.tables.groups`) starts."""

    def __init__(self, p: Program) -> None:
        self.p = p
        self.base: dict[str, int] = {}
        self.row_inputs = [i for i in p.inputs if p.tensors[i].rows and p.tensors[i].kind != "index"]
        self.flat_inputs = [t for t in ("weight", *p.inputs, *p.constants)
                            if not p.tensors[t].rows and p.tensors[t].kind not in ("index", "output")]
        self.indices = [i for i in p.inputs if p.tensors[i].kind == "index"]
        self.spaces = list(dict.fromkeys(p.tensors[i].space for i in p.inputs if p.tensors[i].rows))
        self.widths = {space: 0 for space in self.spaces}
        self.flat = 1  # element 0 of the flat part: the constant 1
        for t in self.row_inputs:
            self._place_row(t)
        for t in self.flat_inputs:
            self.flat = self._place(t, self.flat)
        end = self.flat
        for name, t in p.tensors.items():
            if name not in self.base and t.kind in ("temp", "output"):
                if t.rows:
                    self._place_row(name)
                else:
                    end = self._place(name, end)
        self.slots = end - self.flat
        self.partial = self._partial_tensors()

    def _place(self, name: str, end: int) -> int:
        self.base[name] = end
        return end + self.p.tensors[name].size

    def _place_row(self, name: str) -> None:
        space = self.p.tensors[name].space
        self.widths[space] = self._place(name, self.widths[space])

    def space(self, tensor: str) -> int:
        """The number of the space a row tensor's rows are in."""
        return self.spaces.index(self.p.tensors[tensor].space)

    def frame_space(self, tensor: str) -> int:
        """Where the frame holds the start, width and rows of a row tensor's block."""
        return 3 * self.space(tensor)

    def frame_index(self, index: str) -> int:
        """Where the frame holds the start of an index input's values (and after it, its grouping's)."""
        return 3 * len(self.spaces) + 2 * self.indices.index(index)

    def _partial_tensors(self) -> set[str]:
        """Tensors without rows that hold per-program partial sums: outputs, and whatever a
        statement reading rows or partial sums writes. Every read of one must be linear."""
        p = self.p
        partial = {o for o in p.outputs if not p.tensors[o].rows}
        changed = True
        while changed:
            changed = False
            for s in p.statements:
                if not p.tensors[s.out.tensor].rows and s.out.tensor not in partial and self.reads(s, partial):
                    partial.add(s.out.tensor)
                    changed = True
        for s in p.statements:
            reads = [v.tensor for v in p.reads(s)]
            partial_reads = [r for r in reads if r in partial]
            if partial_reads and (p.tensors[s.out.tensor].rows or len(partial_reads) > 1
                                  or any(p.tensors[r].rows for r in reads)):
                raise UnsupportedProgram(
                    f"{p.name}: '{s.out.tensor}' would need the complete row sum '{partial_reads[0]}'")
        return partial

    def reads(self, s, partial: set[str]) -> bool:
        """Whether statement s reads rows or one of the `partial` tensors."""
        return any(self.p.tensors[v.tensor].rows or v.tensor in partial for v in self.p.reads(s))

    def home(self, v: View) -> str:
        """Where view v is: `r` rows, `s` the shared part, `p` the instance's slot."""
        t = self.p.tensors[v.tensor]
        if ("z" in v.labels) != t.rows:
            raise ValueError(f"{self.p.name}: view {v} does not match its tensor's rows")
        return "r" if t.rows else "p" if self.base[v.tensor] >= self.flat else "s"


def _squeezed(s: Einsum) -> Einsum:
    """s without its labels of size 1 (a scalar irrep's component), which index nothing."""
    def one(v: View) -> View:
        kept = [(c, size) for c, size in zip(v.labels.replace("z", ""), v.shape) if size > 1]
        return replace(v, labels=("z" if "z" in v.labels else "") + "".join(c for c, _ in kept),
                       shape=tuple(size for _, size in kept))

    return replace(s, out=one(s.out), operands=tuple(map(one, s.operands)))


def _statement(layout: _Layout, s) -> tuple[str, list[int]]:
    """A statement's form (text) and the offsets of its views."""
    p = layout.p
    if isinstance(s, Einsum):
        s = _squeezed(s)
        if len(s.operands) > 2:
            raise UnsupportedProgram(f"{p.name}: a contraction of {len(s.operands)} operands (factorize first)")
        views = (s.out, *s.operands)
        sizes: dict[str, int] = {}
        for v in views:
            sizes.update(zip(v.labels.replace("z", ""), v.shape))
        names = dict(zip(sizes, _NAMES), z="z")
        first_only = s.out.tensor in layout.partial and not layout.reads(s, layout.partial)
        text = "*".join(f"{layout.home(v)}.{''.join(names[c] for c in v.labels)}" for v in s.operands)
        form = (("!" if first_only else "") + f"{layout.home(s.out)}.{''.join(names[c] for c in s.out.labels)}="
                + text + "".join(f" {names[c]}{n}" for c, n in sizes.items()))
        return form, [layout.base[v.tensor] + v.start for v in views] + [0] * (3 - len(views))
    kind = "gather" if isinstance(s, Gather) else "scatter"
    numel = s.out.numel if isinstance(s, Gather) else s.source.numel
    # a gather of another space's rows reads its block, a scatter into one adds to it: where the frame has it
    other = "" if s.sets else f" {layout.frame_space(s.source.tensor if isinstance(s, Gather) else s.out.tensor)}"
    if isinstance(s, Scatter) and not s.sets:  # and the block of the rows it reads
        other += f" {layout.frame_space(s.source.tensor)}"
    return f"{kind}{'' if s.sets else '-rows'} {layout.frame_index(s.index)} {numel}{other}", [
        layout.base[s.out.tensor] + s.out.start, layout.base[s.source.tensor] + s.source.start, 0]


def phases(layout: _Layout, statements) -> list[tuple[int, int, int]]:
    """The program's launches: (space, first statement, count) per run of statements over the rows
    of one space; a scatter of rows into another space's is a launch of its own (over the rows it
    reads, or, grouped, over those it writes: `fusionc.runtime.tables`), and a gather of rows that
    the launch writes starts another, so that every launch sees the complete rows of those before it."""
    p = layout.p
    out: list[list[int]] = []
    written: set[str] = set()  # by the launch being cut
    for k, s in enumerate(statements):
        if isinstance(s, Einsum):
            rows = next((v.tensor for v in (s.out, *s.operands) if p.tensors[v.tensor].rows), None)
        else:  # a gather's rows are its output's, a scatter's its source's
            rows = s.source.tensor if isinstance(s, Scatter) else s.out.tensor
        space = layout.space(rows) if rows is not None else 0
        alone = isinstance(s, Scatter) and not s.sets
        gathers_written = isinstance(s, Gather) and not s.sets and s.source.tensor in written
        if out and out[-1][0] == space and not alone and not out[-1][3] and not gathers_written:
            out[-1][2] += 1
        else:
            out.append([space, k, 1, alone])
            written = set()
        written.add(s.out.tensor)
    return [(space, first, count) for space, first, count, _ in out]


def _constants(values: list, per_line: int) -> list[str]:
    items = [repr(v) for v in values]
    return ["    " + ", ".join(items[k:k + per_line]) + "," for k in range(0, len(items), per_line)]


def lower_program(p: Program, model: GpuTriton) -> list[str]:
    """The program's `rt.TableProgram` (`_<name>__program`) and its launcher (`_<name>__triton`)."""
    layout = _Layout(p)
    position = {name: k for k, name in enumerate((*p.inputs, "weight", *p.constants))}
    forms: dict[str, int] = {}
    coefs: dict[float, int] = {}
    statements = []
    for s in p.statements:
        form, offsets = _statement(layout, s)
        coeff = float(s.coeff) if isinstance(s, Einsum) else 1.0
        statements.append([forms.setdefault(form, len(forms)), -1 if s.when is None else s.when,
                           coefs.setdefault(coeff, len(coefs)), *offsets])
    w = CodeWriter()
    w(f"_{p.name}__program = rt.TableProgram(")
    w.indent()
    w(f'"{p.name}", block_z={model.block_z}, warps={model.warps}, max_registers={model.max_registers}, '
      f"chunk={model.chunk},")
    rows_from = tuple(next(position[i] for i in p.inputs if p.tensors[i].rows and p.tensors[i].space == space)
                      for space in layout.spaces)
    w(f"widths={tuple(layout.widths.values())!r}, rows_from={rows_from!r}, flat={layout.flat}, "
      f"slots={layout.slots},")
    w(f"row_inputs={tuple((position[t], layout.space(t), layout.base[t], p.tensors[t].size) for t in layout.row_inputs)!r},")
    w(f"flat_inputs={tuple((position[t], layout.base[t], p.tensors[t].size) for t in layout.flat_inputs)!r},")
    w(f"outputs={tuple((layout.space(o) if p.tensors[o].rows else -1, layout.base[o], p.tensors[o].size) for o in p.outputs)!r},")
    w(f"indices={tuple((position[i], layout.space(i), layout.spaces.index(p.tensors[i].points) if p.tensors[i].points in layout.spaces else -1) for i in layout.indices)!r},")
    w(f"phases={tuple(phases(layout, p.statements))!r},")
    w("forms=(")
    w.lines += [f'        "{form}",' for form in forms]
    w("),")
    w("# per statement: its form, mask bits (-1: every call), coefficient, and where its views start")
    w("statements=(")
    w.lines += [f"        {', '.join(map(str, row))}," for row in statements]
    w("),")
    w("coefs=(")
    w.lines += ["    " + line for line in _constants(list(coefs), 4)]
    w("),")
    w.dedent()
    w(")")
    w()
    w()
    w(f"def _{p.name}__triton(*args: torch.Tensor, _mask: int = -1) -> list[torch.Tensor]:")
    w.indent()
    w(f'"""{p.doc or p.name}: {len(p.statements)} statements of {len(forms)} forms, run by the table kernel on '
      f'({", ".join(position)})."""')
    w(f"return _{p.name}__program(args, _mask)")
    w.dedent()
    return w.lines


def kernel_cost(p: Program) -> tuple[int, int]:
    """FLOPs per row (row statements, counted dense) and float32 bytes per row a program's
    statements move (row views read, outputs read and written)."""
    flops = traffic = 0
    for s in p.statements:
        views = p.reads(s) + (s.out,) * 2
        traffic += sum(4 * v.numel for v in views if p.tensors[v.tensor].rows)
        if isinstance(s, Einsum) and any(p.tensors[v.tensor].rows for v in views):
            sizes = {}
            for v in views:
                sizes.update(zip(v.labels.replace("z", ""), v.shape))
            flops += 2 * prod(sizes.values())
    return flops, traffic

"""The torch back end: a module whose ops run torch code anywhere and, on the CPU, native kernels.

Each program's `torch` version is written as torch code (`fusionc.backends.writer`); its `native`
version, which the `segment` pass cut into kernels, as torch code that calls one C function per
`Kernel` (`fusionc.backends.native` writes the C; the runtime compiles it at first use).
"""

from __future__ import annotations

from functools import reduce

from fusionc.analysis.program import Kernel, Program, ProgramSet, Statement, View, sparse_cg, union
from fusionc.backends import native
from fusionc.backends.writer import CodeWriter, ProgramWriter, emit_module, emit_program, rows_of, space_rows
from fusionc.machine import CpuBlas, CpuNative


class _NativeWriter(ProgramWriter):
    """Writes a segmented program (`fusionc.analysis.segment`) as torch code in which each `Kernel`
    is one call of a native function (`fusionc.backends.native`), collected in `kernels`."""

    def __init__(self, w: CodeWriter, p: Program, blas: CpuBlas, model: CpuNative,
                 kernels: dict[str, tuple[str, str]]) -> None:
        super().__init__(w, p, blas)
        self.model = model
        self.kernels = kernels  # C function name -> (source, argument kinds)
        self.allocated: set[str] = set()

    def statement(self, s: Statement | Kernel) -> None:
        if isinstance(s, Kernel):
            self.kernel(s)
        else:
            super().statement(s)

    def kernel(self, k: Kernel) -> None:
        p, name = self.p, k.name
        when = reduce(union, (s.when for s in k.statements))  # the mask bits any of its statements serves

        def skipped(value: str) -> str:
            """What a tensor the kernel writes holds where the mask skips the kernel whole."""
            return "" if when is None else f" if _mask & {when} else {value}"

        arguments: list[native.Argument] = []
        expressions: list[str] = []
        locals_: dict[str, tuple[int, int | None]] = {}  # C buffer -> (elements per row, mask bits of its writers)
        home: dict[str, str] = {}  # tensor written here, whole -> its C buffer (per-row local or accumulator)

        def argument(expression: str, rows: bool, numel: int, kind: str, index: str | None = None) -> str:
            arg = f"a{len(arguments)}"
            arguments.append(native.Argument(arg, rows, numel, kind, index))
            expressions.append(expression)
            return arg

        indices: dict[str, str] = {}  # index input -> its C argument

        def index(name: str) -> str:
            if name not in indices:
                indices[name] = argument(name, False, 0, "i")
            return indices[name]

        for t, how in k.homes:
            size, rows = p.tensors[t].size, p.tensors[t].rows
            scattered = rows and p.tensors[t].space != k.space  # written at row by[z]: zeros where none lands
            if how == "local":
                home[t] = f"l{len(locals_)}"
                locals_[home[t]] = (size, reduce(union, (s.when for s in k.statements if s.out.tensor == t)))
            elif how in ("new", "add"):  # the first kernel zeroes each row, the others add in
                if how == "new":
                    shape = f"{rows_of(p.tensors[t]) + ', ' if rows else ''}{size}"
                    allocate = "new_zeros" if scattered else "new_empty"
                    self.w(f"{t} = weight.{allocate}({shape})" + skipped(f"weight.new_zeros({shape})"))
                    self.allocated.add(t)
                kind = "o" if how == "new" and not scattered else "a"
                home[t] = argument(t, rows, size, kind if rows else kind.upper(), index(k.by) if scattered else None)
        for t in k.ready:
            self.ready[t] = (t, (p.tensors[t].size,))
        reads: dict[View, str] = {}
        pieces: dict[tuple[str, int, tuple[int, ...]], str] = {}
        body = native.SegmentWriter(self.model, k.tabled)
        written = {s.out.tensor for s in k.statements}
        for s in k.statements:
            operands = []
            table = sparse_cg(p, s)
            for position, v in enumerate(s.operands):
                labels = v.labels.replace("z", "")
                if position == table:  # its non-zeros are constants in the C source
                    operands.append((native.Buffer(v.tensor, labels, v.shape, True), True))
                    continue
                if v.index:  # rows of a complete tensor of another space, read in place at index[z]
                    key = View(v.tensor, 0, (), "", v.index)
                    if key not in reads:
                        whole = View(v.tensor, 0, (p.tensors[v.tensor].size,), "zp")
                        expression = self.read(whole) if v.tensor not in self.allocated else v.tensor
                        reads[key] = argument(expression, True, p.tensors[v.tensor].size, "r", index(v.index))
                    operands.append((native.Buffer(f"({reads[key]} + {v.start})", labels, v.shape), True))
                    continue
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
                    local = self.ready.get(v.tensor, (None,))[0]
                    if local in self.maybe:  # torch code the mask skipped: no statement that runs reads it
                        expression = f"({expression} if {local} is not None else None)"
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
                    shape = f"{rows_of(p.tensors[o.tensor]) + ', ' if rows else ''}{', '.join(map(str, o.shape))}"
                    self.w(f"{local} = weight.{'new_zeros' if o.index else 'new_empty'}({shape})" + skipped("None"))
                    if when is not None:
                        self.maybe.add(local)
                    self.pieces.setdefault(o.tensor, {}).setdefault((o.start, o.shape), []).append(local)
                    kind = "a" if o.index else "o" if rows else "O"
                    pieces[key] = argument(local, rows, o.numel, kind, index(o.index) if o.index else None)
                base = pieces[key]
            if table is None:
                body.statement(s, native.Buffer(base, o.labels.replace("z", ""), o.shape), operands)
            else:
                body.sparse(s, native.Buffer(base, o.labels.replace("z", ""), o.shape), operands, table)
        if k.by:  # rows grouped by the index scattered by: its groups are the rows of the space it points into
            argument(f"_native.groups({k.by}, {space_rows(p.tensors[k.by].points)})", False, 0, "g")
        kinds = "".join(a.kind for a in arguments)
        self.kernels[name] = (native.segment_function(name, arguments, locals_, body), kinds)
        call = f"_native.run({name!r}, {space_rows(k.space)}, {'_mask' if p.keys else -1}, {', '.join(expressions)})"
        if when is None:
            self.w(call)
        else:  # no statement of the kernel serves the call's mask bits: skipped whole
            self.w(f"if _mask & {when}:")
            self.w.indent()
            self.w(call)
            self.w.dedent()


class _NativeVersions:
    """The CPU versions (`writer.CpuVersions`): each program's native version as torch code calling its kernels, and the C
    of every kernel, per program, at the end of the module."""

    def __init__(self, blas: CpuBlas, model: CpuNative) -> None:
        self.blas, self.model = blas, model
        self.kernels: dict[str, tuple[str, str]] = {}  # C function -> (source, argument kinds)

    def function(self, p: Program) -> list[str]:
        w = CodeWriter()
        emit_program(w, p, _NativeWriter(w, p, self.blas, self.model, self.kernels), "__cpu")
        return w.lines

    def code(self) -> list[str]:
        return [source for source, _ in self.kernels.values()]

    def write(self, w: CodeWriter) -> None:
        if not self.kernels:
            return
        w()
        w()
        w("# the CPU versions' native kernels: C per program, compiled on first use after the CG tables they")
        w("# loop over (fusionc.runtime.native)")
        w("_native = rt.NativeKernels(")
        w.indent()
        w("{")
        by_program: dict[str, list[str]] = {}
        for name, (source, _) in self.kernels.items():
            by_program.setdefault(native.program_of(name), []).append(source)
        for program, sources in by_program.items():
            w(f'"{program}": """\\')
            w.lines.extend("\n\n".join(sources).split("\n"))
            w('""",')
        w("},")
        w("{")
        w.indent()
        for name, (_, kinds) in self.kernels.items():
            w(f"{name!r}: {kinds!r},")
        w.dedent()
        w("},")
        w("_CG_TABLES,")
        w.dedent()
        w(")")
        w("_ops.kernels = _native")


def render(ps: ProgramSet) -> str:
    """The generated torch module of a program set; same input, same bytes."""
    return emit_module(ps, cpu_versions=_NativeVersions(ps.machine.cpu_blas, ps.machine.cpu_native))

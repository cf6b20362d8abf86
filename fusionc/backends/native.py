"""Native CPU kernels: the row-local statements of a program as C, compiled at first use.

The torch back end runs products with large shared operands, and sums over rows into large shared
tensors, as torch.mm (the BLAS is as fast as it gets there), but most of a diagram's statements
are small contractions within one row, or with a small shared operand, or summed over rows into
a small shared tensor (a path group's weight gradient): x (32 × 3) with that row's
(3 × 5·paths) CG map, per-row weights times a CG product, a path group's (2 × 32 × 32) weights
times that, the adjoints of these. torch runs each as a batch of thousands of tiny matrix
products (`bmm`, 13 GFLOP/s), a chain of broadcast multiplications or a matrix product, with a
dispatch and a trip through memory per step. Here every run of consecutive row-local statements
becomes one C function: one loop over rows (split between threads), and per row each statement
as a loop nest with static sizes, its temporaries in per-row buffers that never leave the cache.

Per statement, the loop nest vectorises over one label (the largest; channels u/v/w when
present): the operands that carry it are copied, per row (a shared one once per call), to
buffers where it is the innermost axis, so the innermost loop is a contiguous multiply-add the C
compiler turns into SIMD (or, when the label is summed, a vector reduction).

The source is plain C99 + OpenMP, one function per segment, written for a `real` type the
runtime defines as float or double, after the includes it puts first (`fusionc.runtime.native.HEADER`:
the runtime owns what compiling needs, so that a generated module loads without this compiler).
This module writes text only (no torch, no compiler).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate, groupby
from math import prod

from fusionc.algebra.cg import cg_entries
from fusionc.analysis.program import Einsum, cg_degrees
from fusionc.machine import CpuNative

#: Every per-row buffer is declared 64-byte aligned (the runtime's header defines `ALIGNED` as
#: `__attribute__((aligned(64)))`). gcc 12's vectoriser at -O1/-O2 may raise a local array's
#: alignment for aligned vector stores after the stack frame is laid out, so the array sits 16
#: bytes off and the first aligned store faults (a random uvw product in float64 did); declared
#: alignment is honoured when the frame is laid out.
ALIGNED = "ALIGNED"

#: Scratch buffers live on the stack while one holds at most STACK_BUFFER elements and a function's
#: hold at most STACK_TOTAL (2 MiB of doubles: the standard library's largest function has 256,960,
#: well within a thread's 8 MiB stack); larger ones are allocated on the heap, once per thread or
#: per call, and a failed allocation is reported (a 40000x4e output's 1.8-million-element buffer
#: overflowed the stack: SIGSEGV).
STACK_BUFFER = 8192
STACK_TOTAL = 1 << 18


@dataclass(frozen=True)
class Buffer:
    """Where a view lives inside a segment's row loop: a C pointer expression to the row's first
    element of the view, contiguous in `labels` order (`shape` by label); `shared` when it is the
    same for every row (weights, constants)."""

    base: str
    labels: str
    shape: tuple[int, ...]
    shared: bool = False

    def squeezed(self) -> "Buffer":
        kept = [(c, s) for c, s in zip(self.labels, self.shape) if s > 1]
        return Buffer(self.base, "".join(c for c, _ in kept), tuple(s for _, s in kept), self.shared)


def _index(b: Buffer) -> str:
    """The offset of element (labels...) in b, from the loop variables `_<label>`."""
    terms, stride = [], 1
    for c, s in reversed(list(zip(b.labels, b.shape))):
        terms.append(f"_{c}" if stride == 1 else f"_{c} * {stride}")
        stride *= s
    return " + ".join(reversed(terms)) or "0"


def _loops(labels: str, sizes: dict[str, int], depth: int) -> tuple[list[str], int]:
    lines = []
    for c in labels:
        lines.append("    " * depth + f"for (int _{c} = 0; _{c} < {sizes[c]}; ++_{c})")
        depth += 1
    return lines, depth


@dataclass(frozen=True)
class Chunk:
    """One statement's C lines (per-row copies it makes, its loop nests, its work buffer added
    back), relative to the row loop; `_coef` in them stands for `coeff`."""

    when: int | None
    comment: str  # the statement's note, else its equation
    equation: str
    lines: tuple[str, ...]
    coeff: float


#: A pointer a statement's lines use: an argument or per-row buffer at an offset, `(a3 + 16)`, or
#: bare (`l2`, a copy `t5`, a work buffer `w7`)
_POINTER = re.compile(r"\(([alt]\d+) \+ (\d+)\)|\b([altw]\d+)\b")
#: A work buffer a statement declares on the stack: its own, renamed with the statement's form
_WORK = re.compile(r"^real (w\d+)\[", re.MULTILINE)


#: A CG table a sparse statement loops over, and its count of non-zeros
_CG = re.compile(r"\bcg_\d+_\d+_\d+\b")
_NONZEROS = re.compile(r"_e < (\d+);")


def _form(chunk: Chunk) -> tuple[str, tuple[tuple[str, str | int], ...]]:
    """A statement's lines with its pointers as `_B0`, `_B1`, … (in order of first use), its stack
    work buffers as `_w0`, … and the CG table it loops over as `_G` with `_ne` non-zeros: its form,
    shared by statements that differ only in where their operands are and which CG table they
    contract. Returns it and the values it leaves open, in order: (`pointer`, name) and
    (`offset`, elements) per `_B`, then (`cg`, table), (`count`, non-zeros) for `_G`."""
    text = "\n".join(chunk.lines)
    work = {name: f"_w{k}" for k, name in enumerate(_WORK.findall(text))}
    bases: dict[tuple[str, int], str] = {}

    def placeholder(m: re.Match) -> str:
        name, offset = (m.group(1), int(m.group(2))) if m.group(1) else (m.group(3), 0)
        if name in work:
            return work[name]
        return bases.setdefault((name, offset), f"_B{len(bases)}")

    text = _POINTER.sub(placeholder, text)
    values: list[tuple[str, str | int]] = [v for name, offset in bases
                                           for v in (("pointer", name), ("offset", offset))]
    tables = set(_CG.findall(text))
    if len(tables) == 1:
        (table,), (count,) = tables, set(_NONZEROS.findall(text))
        text = _NONZEROS.sub("_e < _ne;", _CG.sub("_G", text))
        values += [("cg", table), ("count", int(count))]
    return text, tuple(values)


#: Integers before a statement table row's operands: its form, its length, its mask bits, its coefficient
ROW_HEAD = 4


def _literal(lines: tuple[str, ...] | list[str], coeff: float) -> list[str]:
    return [line.replace("_coef", repr(coeff)) for line in lines]


class SegmentWriter:
    """The body of one segment's row loop, statement by statement."""

    def __init__(self, model: CpuNative = CpuNative(), tabled: bool = False) -> None:
        self.model = model  # vector_min: labels worth vectorising over; accumulator_max: sums kept in registers
        self.tabled = tabled  # runs of statements of one form loop over tables (`render`)
        self.prologue: list[str] = []
        self.scratch = 0
        self.copies: dict[tuple[str, str, int | None], Buffer] = {}  # (base, order, when) -> copy of a view
        self.stacked = 0  # elements of the function's buffers on the stack
        self.heap: dict[str, int] = {}  # per-row buffers on the heap (one per thread) -> elements
        self.shared_heap: dict[str, int] = {}  # once-per-call buffers on the heap -> elements
        self.declarations: list[str] = []  # per-row copies, declared at the top of the row loop
        self.when: int | None = None  # the mask bits the statement being written runs for (None: any)
        self.chunks: list[Chunk] = []  # the statements written, in order
        self.current: list[str] = []  # the lines of the statement being written
        self.comment = self.equation = ""
        self.coeff = 1.0

    def buffer(self, name: str, size: int, zero: bool, shared: bool = False) -> list[str]:
        """The lines declaring a scratch buffer where it is used: an array on the stack while small
        (STACK_BUFFER, STACK_TOTAL), else a heap buffer the function allocates; `zero` clears it."""
        if size <= STACK_BUFFER and self.stacked + size <= STACK_TOTAL:
            self.stacked += size
            return [f"real {name}[{size}] {ALIGNED}{' = {0}' if zero else ''};"]
        (self.shared_heap if shared else self.heap)[name] = size
        return [f"memset({name}, 0, sizeof(real) * {size});"] if zero else []

    def _emit(self, lines: list[str]) -> None:
        self.current.extend(lines)

    def _open(self, s: Einsum) -> None:
        """Start s's lines (`Chunk`), its coefficient written `_coef`."""
        self.when, self.coeff, self.current = s.when, s.coeff, []
        self.equation = f"{','.join(v.labels for v in s.operands)}->{s.out.labels}"
        self.comment = s.note or self.equation

    def _close(self) -> None:
        self.chunks.append(Chunk(self.when, self.comment, self.equation, tuple(self.current), self.coeff))
        self.when = None

    def _emit_once(self, lines: list[str]) -> None:
        """Lines run once per call, before the row loop (for what every row shares)."""
        self.prologue.extend("    " + line for line in lines)

    def _name(self, prefix: str) -> str:
        self.scratch += 1
        return f"{prefix}{self.scratch}"

    def _reordered(self, b: Buffer, order: str, read_only: bool) -> Buffer:
        """b copied to a per-row buffer whose labels are in `order`; a shared b, once per call."""
        if read_only:  # a copy made for any mask bits, or for the same ones as this statement's, has run
            for when in (None, self.when):
                if (b.base, order, when) in self.copies:
                    return self.copies[(b.base, order, when)]
        sizes = dict(zip(b.labels, b.shape))
        out = Buffer(self._name("t"), order, tuple(sizes[c] for c in order), b.shared)
        loops, depth = _loops(b.labels, sizes, 0)
        copy = [*loops, "    " * depth + f"{out.base}[{_index(out)}] = {b.base}[{_index(b)}];"]
        declared = self.buffer(out.base, prod(out.shape), False, b.shared)
        if b.shared:  # once per call, before the row loop (where the statement runs)
            guard = [] if self.when is None else [f"if (mask & {self.when})"]
            self._emit_once([*declared, *guard, *(("    " if guard else "") + line for line in copy)])
        else:  # declared where every later statement sees it
            self.declarations.extend(declared)
            self._emit(copy)
        if read_only:
            self.copies[(b.base, order, self.when)] = out
        return out

    def _innermost(self, ops: list[tuple[Buffer, bool]], out: Buffer, vector: str | None,
                   sizes: dict[str, int]) -> tuple[list[tuple[Buffer, bool]], Buffer]:
        """The operands with `vector` innermost (copied per row where it is not) and the buffer the
        statement sums into: out, or a zeroed one with `vector` innermost (`_add_back` adds it in)."""
        if vector is None:
            return ops, out
        ops = [(self._reordered(b, b.labels.replace(vector, "") + vector, ro)
                if vector in b.labels and b.labels[-1] != vector else b, ro) for b, ro in ops]
        if vector not in out.labels or out.labels[-1] == vector:
            return ops, out
        order = out.labels.replace(vector, "") + vector
        work = Buffer(self._name("w"), order, tuple(sizes[c] for c in order))
        self._emit(self.buffer(work.base, prod(work.shape), True))
        return ops, work

    def _add_back(self, out: Buffer, work: Buffer, sizes: dict[str, int]) -> None:
        if work is not out:
            loops, depth = _loops(out.labels, sizes, 0)
            self._emit([*loops, "    " * depth + f"{out.base}[{_index(out)}] += {work.base}[{_index(work)}];"])

    def sparse(self, s: Einsum, out: Buffer, operands: list[tuple[Buffer, bool]], table: int) -> None:
        """out += s.coeff · Π operands where operand `table` is a CG table contracted channel by
        channel (`fusionc.analysis.program.sparse_cg`): a loop over the table's non-zeros (`cg_tables`
        declares them), and within it the channels, innermost and contiguous (operands copied per
        row to that order where they are not, the output summed in such a buffer first)."""
        cg = s.operands[table]
        ls = cg_degrees(cg.tensor)
        out = out.squeezed()
        ops = [(b.squeezed(), ro) for k, (b, ro) in enumerate(operands) if k != table]
        sizes: dict[str, int] = {}
        for b in [out] + [b for b, _ in ops]:
            sizes.update(zip(b.labels, b.shape))
        dense = [c for c in out.labels if c not in cg.labels]
        long = [c for c in dense if sizes[c] >= self.model.vector_min]
        vector = max(long, key=lambda c: (sizes[c], c)) if long else None
        self._open(s)
        ops, work = self._innermost(ops, out, vector, sizes)
        name = cg_table(ls)
        fields = "".join(f" _{c} = {name}[_e].{f}," for c, f in zip(cg.labels, "ijk")).rstrip(",")
        coeff = "" if s.coeff == 1.0 else "_coef * "
        loops, depth = _loops("".join(c for c in work.labels if c != vector and c not in cg.labels) + (vector or ""),
                              sizes, 1)
        product = " * ".join(f"{b.base}[{_index(b)}]" for b, _ in ops)
        self._emit([f"for (int _e = 0; _e < {len(cg_entries(*ls))}; ++_e) {{",
                    f"    const int{fields};",
                    f"    const real _c = (real)({coeff}{name}[_e].c);",
                    *loops,
                    "    " * depth + f"{work.base}[{_index(work)}] += _c * {product};",
                    "}"])
        self._add_back(out, work, sizes)
        self._close()

    def statement(self, s: Einsum, out: Buffer, operands: list[tuple[Buffer, bool]]) -> None:
        """out += s.coeff · Π operands, summed over the labels out lacks. `operands` pairs each
        buffer with whether it is read-only within the segment (its copies can be shared)."""
        out = out.squeezed()
        ops = [(b.squeezed(), ro) for b, ro in operands]
        sizes: dict[str, int] = {}
        for b in [out] + [b for b, _ in ops]:
            sizes.update(zip(b.labels, b.shape))
        summed = "".join(sorted(set("".join(b.labels for b, _ in ops)) - set(out.labels)))
        long = [c for c in sizes if sizes[c] >= self.model.vector_min]
        vector = max(long, key=lambda c: (sizes[c], c in out.labels, c)) if long else None
        self._open(s)
        coeff = "" if s.coeff == 1.0 else "(real)_coef * "
        if len(ops) == 1 and not summed:  # a (scaled, reordered) copy: one pass in the output's order
            (a, _), = ops
            loops, depth = _loops(out.labels, sizes, 0)
            self._emit([*loops, "    " * depth + f"{out.base}[{_index(out)}] += {coeff}{a.base}[{_index(a)}];"])
            self._close()
            return
        ops, work = self._innermost(ops, out, vector, sizes)
        product = " * ".join(f"{b.base}[{_index(b)}]" for b, _ in ops) or "(real)1"
        if vector is not None and vector in summed:  # a vector reduction per output element
            loops, depth = _loops(work.labels, sizes, 0)
            inner, end = _loops(summed.replace(vector, "") + vector, sizes, depth + 1)
            self._emit([*loops, "    " * depth + "{", "    " * (depth + 1) + "real acc = 0;", *inner,
                        "    " * end + f"acc += {product};",
                        "    " * (depth + 1) + f"{work.base}[{_index(work)}] += {coeff}acc;", "    " * depth + "}"])
        elif vector is not None and summed and sizes[vector] <= self.model.accumulator_max:  # sums kept in registers
            loops, depth = _loops(work.labels.replace(vector, ""), sizes, 0)
            inner, end = _loops(summed + vector, sizes, depth + 1)
            (across,), _ = _loops(vector, sizes, depth + 1)
            self._emit([*loops, "    " * depth + "{",
                        "    " * (depth + 1) + f"real acc[{sizes[vector]}] {ALIGNED} = {{0}};", *inner,
                        "    " * end + f"acc[_{vector}] += {product};", across,
                        "    " * (depth + 2) + f"{work.base}[{_index(work)}] += {coeff}acc[_{vector}];",
                        "    " * depth + "}"])
        else:
            first = "".join(c for c in work.labels if c != vector) + summed
            loops, depth = _loops(first + (vector or ""), sizes, 0)
            self._emit([*loops, "    " * depth + f"{work.base}[{_index(work)}] += {coeff}{product};"])
        self._add_back(out, work, sizes)
        self._close()

    def render(self, function: str) -> tuple[list[str], list[list[str]], list[str]]:
        """The row loop's body as C. In a `tabled` kernel (too long for -O3: the `schedule` pass),
        the statements are one table, one row each (its form, what the form leaves open, its
        coefficient and mask bits), and the body one loop over it that calls each row's form
        (`_form`: one function per form, its pointers `restrict` parameters, so that gcc
        vectorises it as it does a statement written out). Elsewhere each statement is written out.
        Returns what goes before the function (forms and table, named after it), the body's lines
        (a block per statement, or the table loop) and the pointers the table indexes (`_P`,
        which the row loop declares first)."""
        if not self.tabled:  # consecutive statements for the same mask bits under one test
            return [], [_guarded([line for c in run for line in (f"/* {c.comment} */", *_literal(c.lines, c.coeff))],
                                 when) for when, run in groupby(self.chunks, key=lambda c: c.when)], []
        before: list[str] = []
        functions: dict[str, int] = {}  # form -> its function's number
        calls: list[str] = []  # per form, the call of its function from a table row `_t`
        indices: dict[str, dict] = {"pointer": {}, "cg": {}, "coefficient": {}}
        rows: list[list[int]] = []
        for c in self.chunks:
            template, values = _form(c)
            if template not in functions:
                number = functions[template] = len(functions)
                parameters, arguments = [], []
                for j, (kind, _) in enumerate(values, ROW_HEAD):
                    if kind == "pointer":
                        parameters.append(f"real *restrict _B{len(arguments)}")
                        arguments.append(f"_P[_t[{j}]] + _t[{j + 1}]")
                    elif kind == "cg":
                        parameters += ["const struct fusionc_cg *restrict _G", "const int _ne"]
                        arguments += [f"{function}_g[_t[{j}]]", f"_t[{j + 1}]"]
                signature = ", ".join(parameters + ["const double _coef"])
                before += [f"/* {c.equation} */", f"static inline void {function}_f{number}({signature})",
                           "{", *("    " + line for line in template.split("\n")), "}"]
                calls.append(f"{function}_f{number}({', '.join(arguments + [f'{function}_c[_t[3]]'])})")
            operands = [indices[kind].setdefault(v, len(indices[kind])) if kind in ("pointer", "cg") else v
                        for kind, v in values]
            coefficient = indices["coefficient"].setdefault(c.coeff, len(indices["coefficient"]))
            rows.append([functions[template], ROW_HEAD + len(operands), c.when or 0, coefficient, *operands])
        cgs, coefficients = indices["cg"], indices["coefficient"]
        if cgs:
            before.insert(0, f"static const struct fusionc_cg *const {function}_g[{len(cgs)}] = {{{', '.join(cgs)}}};")
        size = sum(map(len, rows))
        texts = [", ".join(map(str, row)) + "," for row in rows]
        before += [f"static const double {function}_c[{len(coefficients)}] = {{{', '.join(map(repr, coefficients))}}};",
                   "/* one row per statement: form, the row's length, mask bits (0: any), coefficient, then per "
                   "operand pointer and offset, per CG table its number and non-zeros */",
                   f"static const int {function}_t[{size}] = {{",
                   *("    " + "  ".join(texts[i:i + 4]) for i in range(0, len(texts), 4)), "};"]
        body = [f"/* {len(rows)} statements of {len(functions)} forms, from {function}_t */",
                f"for (const int *_t = {function}_t; _t < {function}_t + {size}; _t += _t[1]) {{",
                "    if (_t[2] && !(mask & _t[2])) continue;",
                "    switch (_t[0]) {",
                *(f"    case {k}: {call}; break;" for k, call in enumerate(calls)),
                "    }",
                "}"]
        return before, [_guarded(body, None)], list(indices["pointer"])


def _guarded(body: list[str], when: int | None) -> list[str]:
    """Lines of the row loop's body, run where the mask has one of the bits `when` (None: always)."""
    if when is None:
        return ["        " + line for line in body]
    return [f"        if (mask & {when}) {{", *("            " + line for line in body), "        }"]


def cg_table(ls: tuple[int, int, int]) -> str:
    return "cg_{}_{}_{}".format(*ls)


_FOR = re.compile(r"for \(.*\)$")


def _tidy(lines: list[str]) -> str:
    """The function's text as written: indented two spaces a level (its lines are built four), a
    nest of loops around one statement on one line above it (`for (...) for (...)`)."""
    def depth(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    out, k = [], 0
    while k < len(lines):
        nest = [lines[k]]
        while (k + len(nest) < len(lines) and _FOR.fullmatch(nest[-1].strip())
               and depth(lines[k + len(nest)]) == depth(nest[-1]) + 4):
            nest.append(lines[k + len(nest)])
        body = nest[-1]
        after = lines[k + len(nest)] if k + len(nest) < len(lines) else ""
        if (len(nest) > 2 and body.rstrip().endswith(";") and not _FOR.fullmatch(body.strip())
                and depth(after) <= depth(nest[0])):
            pad = " " * (depth(nest[0]) // 2)
            out += [pad + " ".join(line.strip() for line in nest[:-1]), pad + "  " + body.strip()]
        else:
            nest = nest[:1]
            out.append(" " * (depth(nest[0]) // 2) + nest[0].lstrip(" "))
        k += len(nest)
    return "\n".join(out)


#: The first line of a kernel's C (its forms and table, then its function): where the runtime may
#: cut a program into translation units compiled in parallel (`fusionc.runtime.native`).
KERNEL_MARK = "/* kernel {name} */"


def program_of(function: str) -> str:
    """The program a segment function belongs to: functions are named `<program>__s<k>`."""
    return function.rsplit("__s", 1)[0]


@dataclass(frozen=True)
class Argument:
    """A tensor the segment reads or writes: a C parameter named `name`; `rows` when it is (n, ...)
    with a row stride, `numel` the elements per row (or in all, for a shared one). `kind`: `r` read
    (rows), `s` read (shared), `o` written (zeroed per row first), `a` accumulated into; `O` (written)
    and `A` (added to): shared, the sum over rows of what the body adds to it; `i` an index (int64
    per row, `index`'s values); `g` the rows grouped by an index (`groups`). A row argument with an
    `index` (the C name of an `i` argument) is read or added to at row index[z] of its tensor."""

    name: str
    rows: bool
    numel: int
    kind: str
    index: str | None = None


def segment_function(name: str, arguments: list[Argument], locals_: dict[str, tuple[int, int | None]],
                     body: SegmentWriter) -> str:
    """A C function running `body` for every row: `int name(int64_t n, int threads, int64_t mask,
    void *const *ptr, const int64_t *stride)` (a statement that runs for some mask bits only tests
    them, and a tensor only such statements read may be NULL), the arguments' pointers and row
    strides in order (arrays: a segment may have more arguments than a C call or ctypes takes),
    after the body's prologue (once per call); it returns 0, or 1 when a heap buffer could not be
    allocated. Per-row buffers are zeroed per row where a statement writing them runs. Outputs `o` are zeroed
    per row before the body accumulates into them. Sums over rows (`O`, `A`) go to per-thread
    partial sums (each thread takes one block of rows), added up in thread order after the loop:
    the same result for the same thread count, run after run."""
    once = []
    setup = []
    sums = [a for a in arguments if a.kind in "OA"]
    offsets = dict(zip((a.name for a in sums), accumulate([0] + [a.numel for a in sums])))
    total = sum(a.numel for a in sums)
    grouped = next((k for k, a in enumerate(arguments) if a.kind == "g"), None)
    for k, a in enumerate(arguments):
        const = "" if a.kind in "oaOA" else "const "
        if a.kind == "i":
            once.append(f"    const int64_t *restrict {a.name} = ptr[{k}];")
        elif a.kind == "g":
            once += [f"    const int64_t *restrict _start = ptr[{k}], groups = stride[{k}];",
                     "    const int64_t *restrict _order = _start + groups + 1;"]
        elif a.rows:
            row = f"{a.index}[z]" if a.index else "z"
            setup.append(f"{const}real *restrict {a.name} = ({const}real *)ptr[{k}] + {row} * stride[{k}];")
        else:  # a sum over rows is added to what ptr points at after the loop (its rows sum elsewhere)
            once.append(f"    {const}real *restrict {a.name.upper() if a.kind in 'OA' else a.name} = ptr[{k}];")
        if a.kind == "o":
            setup.append(f"memset({a.name}, 0, sizeof(real) * {a.numel});")
    for local, (size, when) in locals_.items():  # zeroed per row where a statement writing it runs
        if when is None:
            setup.extend(body.buffer(local, size, zero=True))
        else:
            setup.extend(body.buffer(local, size, zero=False))
            setup.append(f"if (mask & {when}) memset({local}, 0, sizeof(real) * {size});")
    setup.extend(body.declarations)
    tables, blocks, pointers = body.render(name)
    if pointers:
        setup.append(f"real *const _P[{len(pointers)}] = {{{', '.join(f'(real *){p}' for p in pointers)}}};")
    lines = [KERNEL_MARK.format(name=name), *tables]
    statements = [line for block in blocks for line in block]
    lines += [f"int {name}(int64_t n, int threads, int64_t mask, void *const *ptr, const int64_t *stride)", "{", *once]
    owned = list(body.shared_heap)  # what the function frees before it returns
    for buffer, size in body.shared_heap.items():
        lines += [f"    real *restrict {buffer} = malloc(sizeof(real) * {size});",
                  f"    if (!{buffer}) {{{''.join(f' free({b});' for b in owned[:owned.index(buffer)])} return 1; }}"]
    lines += body.prologue
    if sums:
        lines += [f"    real *partial = calloc((size_t)threads * {total}, sizeof(real));",
                  f"    if (!partial) {{{''.join(f' free({b});' for b in owned)} return 1; }}"]
        owned.append("partial")
    if grouped is None:
        head = ["    for (int64_t z = 0; z < n; ++z) {"]
    else:  # a group's rows in order, each group by one thread: every sum into a group's row lands the same way
        head = ["    for (int64_t g = 0; g < groups; ++g)",
                "    for (int64_t _r = _start[g]; _r < _start[g + 1]; ++_r) {", "        const int64_t z = _order[_r];"]
    rest = [*("        " + line for line in setup), *statements, "    }"]
    loop = head + rest
    frees = [f"    free({b});" for b in owned]
    if not sums and not body.heap:
        lines += ["    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= 64)", *loop,
                  *frees, "    return 0;", "}"]
        return _tidy(lines)
    allocated = " && ".join(f"{b} != NULL" for b in body.heap) or "1"
    lines += ["    int failed = 0;",
              "    #pragma omp parallel num_threads(threads) if (n >= 64)",
              "    {",
              *(f"        real *restrict {a.name} = partial + (int64_t)omp_get_thread_num() * {total} + "
                f"{offsets[a.name]};" for a in sums),
              *(f"        real *restrict {b} = malloc(sizeof(real) * {size});" for b, size in body.heap.items()),
              f"        int ok = {allocated};",
              "        if (!ok) {",
              "            #pragma omp atomic write",
              "            failed = 1;",
              "        }",
              "        #pragma omp for schedule(static)",
              *("    " + line for line in head), "            if (!ok) continue;", *("    " + line for line in rest),
              *(f"        free({b});" for b in body.heap),
              "    }"]
    if sums:
        lines.append("    if (!failed) {")
        for a in sums:
            first = "0" if a.kind == "O" else f"{a.name.upper()}[i]"
            lines += [f"        for (int64_t i = 0; i < {a.numel}; ++i) {{",
                      f"            real sum = {first};",
                      "            for (int t = 0; t < threads; ++t)",
                      f"                sum += partial[(int64_t)t * {total} + {offsets[a.name]} + i];",
                      f"            {a.name.upper()}[i] = sum;",
                      "        }"]
        lines.append("    }")
    lines += [*frees, "    return failed;", "}"]
    return _tidy(lines)

"""Programs of labelled contractions (`fusionc.analysis.program`) as Triton kernels: the derivative
programs of a diagram (backward and backward of backward, each masked: a statement that serves
some mask bits only runs under `if mask & bits`, and the launcher skips a kernel none of whose
statements the mask needs).

One program instance takes BLOCK_Z rows and runs the program's statements in order:
- an einsum `out[...] += c · Π operands` is a broadcast product of N-dimensional tiles, one axis
  per label (rows `z`, channels, components), summed over the labels `out` lacks. Where the tile
  would exceed `TILE_BUDGET` elements, the largest labels are cut into chunks that loops step
  through (outer loops over output labels, inner ones over summed labels, accumulated in
  registers), so register use stays bounded however large the statement; pointers and masks that
  no loop changes are formed before the loops;
- a gather reads each row's weight set by its index; a scatter adds each row's values into its set
  one row after another (deterministic, no atomics).
Temporaries live in global scratch, not registers: a row temporary in an (n, ·) buffer, a
temporary without rows (recoupled weights, partial weight gradients) in a per-program slot; a
barrier after each statement makes its writes visible to the whole program instance. A program
longer than `SEGMENT` statements runs as several kernels in sequence, which bounds each kernel's
compile time and register pressure. Outputs without rows (weight gradients) sum over rows, so
each program instance writes its partial sum to its own slot and the launcher adds the slots:
the result does not depend on scheduling.

A tensor without rows is *full* (the same in every program instance: computed from weights and
constants alone) or *partial* (this instance's share of a sum over rows). Partial tensors are only
ever mapped linearly to outputs (a weight gradient through a recoupling matrix or a scatter); the
lowering checks that, and a full contribution to a partial tensor is added by instance 0 only.
CG tables and constant matrices are read from memory here (the forward kernel unrolls them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import reduce
from math import gcd, prod

from fusionc.analysis.program import Einsum, Gather, Program, Scatter, View
from fusionc.backends.writer import CodeWriter

#: Rows per program instance.
BLOCK_Z = 16
#: Most elements of one statement's product tile (BLOCK_Z rows included): 16 per thread of 8 warps.
TILE_BUDGET = 4096
#: Units per kernel (a statement, or a loop over a table of statements of one form): a program of
#: more runs as several kernels in sequence (its temporaries are in global memory anyway), which
#: keeps each kernel's compile time and register pressure bounded however long the program.
SEGMENT = 16
#: Consecutive statements of one form (`_form`), at least this many, run as one loop over a table
#: of the values their form leaves open: compiled once, rather than once per statement.
TABLE_MIN = 2
#: Columns per step of a gather, a scatter or an output's zero fill.
CHUNK = 128
WARPS = 8
#: Registers a thread may use (`.maxnreg`): without it ptxas may stop at 128 to fit two blocks per
#: SM and spill, where 255 fit without spilling.
MAX_REGISTERS = 255


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


class UnsupportedProgram(RuntimeError):
    """A program this lowering cannot run with per-program partial sums (a row sum used other than
    linearly). Derivative programs never are; the check guards the invariant."""


@dataclass(frozen=True)
class _Place:
    """Where a tensor lives in the kernel: a pointer argument, an offset in it, the row stride (0 for
    tensors without rows), and whether the slot is per program (`partial` buffer)."""

    pointer: str
    base: int
    stride: int
    per_program: bool = False


class _Writer:
    def __init__(self, p: Program) -> None:
        self.p = p
        self.w = CodeWriter()
        self.places: dict[str, _Place] = {}
        self.count: int | str = 0  # units written: locals are suffixed with it (`@` in a form)
        self.forms: list[tuple[str, tuple[int | float, ...]]] = []  # per statement (`_form`)
        self.table: list[int] = []  # what the table loops' forms leave open, row by row
        self.coefs: list[float] = []
        self.parts: list[list[list[int]]] | None = None  # `kernels`
        self.scratch = sum(t.size for t in p.tensors.values() if t.kind == "temp" and t.rows)  # per row
        self.slots = 0  # elements per program of the partial buffer
        base = 0
        for name, t in p.tensors.items():
            if t.kind == "temp" and t.rows:
                self.places[name] = _Place("scratch", base, self.scratch)
                base += t.size
            elif t.kind in ("temp", "output") and not t.rows:
                self.places[name] = _Place("partial", self.slots, 0, per_program=True)
                self.slots += t.size
            elif t.kind != "index":
                self.places[name] = _Place(f"{name}_ptr", 0, t.size if t.rows else 0)
        self.partial = self._partial_tensors()

    def _partial_tensors(self) -> set[str]:
        """Tensors without rows that hold per-program partial sums: outputs, and whatever a
        statement reading rows or partial sums writes. Every read of one must be linear."""
        p = self.p
        partial = {o for o in p.outputs if not p.tensors[o].rows}
        changed = True
        while changed:
            changed = False
            for s in p.statements:
                if not p.tensors[s.out.tensor].rows and s.out.tensor not in partial and self._reads(s, partial):
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

    def _reads(self, s, partial: set[str]) -> bool:
        """Whether statement s reads rows or one of the `partial` tensors."""
        return any(self.p.tensors[v.tensor].rows or v.tensor in partial for v in self.p.reads(s))

    # --- addressing ----------------------------------------------------------------------------------

    @staticmethod
    def expand(name: str, label: str, axes: list[str]) -> str:
        """A vector along `label`'s axis of a tile with `axes`, None on the others."""
        if len(axes) == 1:
            return name
        return f"{name}[{', '.join(':' if a == label else 'None' for a in axes)}]"

    def address(self, v: View, axes: list[str], index: dict[str, str], masked: set[str],
                looped: frozenset[str] = frozenset()) -> tuple[str, str | None, str, str | None]:
        """The pointers of view `v` on a tile with `axes` and their mask (None: no mask), as the part
        that does not depend on the `looped` labels and the part that does (empty, None: none).
        `index` maps each label to its index vector; `masked` holds the labels whose vectors run
        past their size."""
        t = self.p.tensors[v.tensor]
        place = self.places[v.tensor]
        labels = v.labels.replace("z", "")
        if len(labels) != len(v.shape) or len(set(v.labels)) != len(v.labels):
            raise ValueError(f"{self.p.name}: view {v} has labels that do not match its shape")
        fixed, moving = [f"{place.pointer} + {_int(place.base + v.start)}"], []
        if place.per_program:
            fixed.append("slot")
        fixed_masks, moving_masks = [], []
        if "z" in v.labels:
            if not t.rows:
                raise ValueError(f"{self.p.name}: '{v.tensor}' has no rows but is read with them")
            fixed.append(f"{self.expand('z', 'z', axes)} * {place.stride}")
            fixed_masks.append(self.expand("row_mask", "z", axes))
        for k, (c, size) in enumerate(zip(labels, v.shape)):
            term = self.expand(index[c], c, axes)
            stride = prod(v.shape[k + 1:])
            (moving if c in looped else fixed).append(term if stride == 1 else f"{term} * {_int(stride)}")
            if c in masked:
                (moving_masks if c in looped else fixed_masks).append(f"({term} < {_int(size)})")
        return (" + ".join(fixed), " & ".join(fixed_masks) or None, " + ".join(moving),
                " & ".join(moving_masks) or None)

    # --- statements ----------------------------------------------------------------------------------

    def unit(self, s) -> list[str]:
        """s's lines, its locals suffixed `@` and the values its form leaves open marked (`_form`)."""
        saved, count = self.w, self.count
        self.w, self.count = CodeWriter(), "@"
        if isinstance(s, Einsum):
            self.einsum(s)
        elif isinstance(s, Gather):
            self.gather(s)
        else:
            self.scatter(s)
        lines, self.w, self.count = self.w.lines, saved, count
        return lines

    def units(self) -> list[list[int]]:
        """The program's statements (by position) as units: a run of at least TABLE_MIN
        consecutive statements of one form (masked or not alike), or one statement."""
        p = self.p
        self.forms = [_form(self.unit(s)) for s in p.statements]
        units: list[list[int]] = []
        for k, s in enumerate(p.statements):
            if units and self.forms[k][0] == self.forms[units[-1][0]][0] and (
                    s.when is None) == (p.statements[units[-1][0]].when is None):
                units[-1].append(k)
            else:
                units.append([k])
        return [u for unit in units for u in ([unit] if len(unit) >= TABLE_MIN else [[k] for k in unit])]

    def kernels(self) -> list[list[list[int]]]:
        """The units of each kernel: SEGMENT units a kernel."""
        if self.parts is None:
            units = self.units()
            self.parts = [units[k:k + SEGMENT] for k in range(0, max(len(units), 1), SEGMENT)]
        return self.parts

    def run(self) -> list[str]:
        p, w = self.p, self.w
        kernels = self.kernels()
        for k, (name, part) in enumerate(zip(kernel_names(p, len(kernels)), kernels)):
            if k:
                w()
                w()
            w("@rt.lazy_jit")
            w(f"def {name}({', '.join(_pointers(p))}, table_ptr, coefs_ptr, scratch, partial, n, mask, "
              "BLOCK_Z: tl.constexpr, DTYPE: tl.constexpr):")
            w.indent()
            first, last = (part[0][0], part[-1][-1]) if part else (0, -1)
            what = f"statements {first + 1}–{last + 1} of {len(p.statements)}"
            w(f'"""{p.doc or p.name}, {what}: BLOCK_Z rows per program."""')
            w("pid = tl.program_id(0)")
            w("z = pid.to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)")
            w("row_mask = z < n")
            w(f"slot = pid.to(tl.int64) * {self.slots}  # this program's slot of the partial buffer")
            if k == 0:
                self.zero_outputs()
            for unit in part:
                self.count += 1
                if len(unit) == 1:
                    self.single(unit[0])
                else:
                    self.table_loop(unit)
            w.dedent()
        return w.lines

    def single(self, k: int) -> None:
        s, w = self.p.statements[k], self.w
        if s.note:
            w(f"# {s.note}")
        if s.when is not None:  # runs for some mask bits only (`mask`)
            w(f"if mask & {s.when}:")
            w.indent()
        template, values = self.forms[k]
        for line in _filled(template, [repr(v) for v in values], self.count):
            w(line)
        if s.when is not None:
            w.dedent()
        w("tl.debug_barrier()")

    def table_loop(self, unit: list[int]) -> None:
        """The statements of `unit`, of one form, as a loop over rows of the program's table: per
        statement the values its form leaves open (integers in `table`, coefficients in `coefs`)
        and, where they differ, its mask bits."""
        p, w, n = self.p, self.w, self.count
        statements = [p.statements[k] for k in unit]
        template, first = self.forms[unit[0]]
        ints = [j for j, v in enumerate(first) if isinstance(v, int)]
        floats = [j for j, v in enumerate(first) if not isinstance(v, int)]
        whens = {s.when for s in statements}
        width = len(ints) + (len(whens) > 1)
        start, coefs = len(self.table), len(self.coefs)
        for k, s in zip(unit, statements):
            values = self.forms[k][1]
            self.table += [values[j] for j in ints] + ([s.when] if len(whens) > 1 else [])
            self.coefs += [values[j] for j in floats]
        equation = ",".join(v.labels for v in statements[0].operands) + "->" + statements[0].out.labels \
            if isinstance(statements[0], Einsum) else type(statements[0]).__name__.lower()
        w(f"# {equation}: {len(unit)} statements, table rows {start}–{start + len(unit) * width - 1}")
        if len(whens) == 1 and statements[0].when is not None:
            w(f"if mask & {statements[0].when}:")
            w.indent()
        w(f"for r_{n} in range({len(unit)}):")
        w.indent()
        if width:
            w(f"t_{n} = table_ptr + {start} + r_{n} * {width}")
        if len(whens) > 1:
            w(f"if mask & tl.load(t_{n} + {width - 1}):")
            w.indent()
        names = {}
        for position, j in enumerate(ints):
            names[j] = f"v{j}_{n}"
            load = f"tl.load(t_{n} + {position})"
            # what every statement's value is a multiple of: a literal offset told the compiler
            # which loads it may vectorise, and so does this
            common = reduce(gcd, (self.forms[k][1][j] for k in unit))
            multiple = max((m for m in (2, 4, 8, 16) if common % m == 0), default=1)
            w(f"{names[j]} = " + (f"tl.multiple_of({load}, {multiple})" if multiple > 1 else load))
        for position, j in enumerate(floats):
            names[j] = f"v{j}_{n}"
            w(f"{names[j]} = tl.load(coefs_ptr + {coefs} + r_{n} * {len(floats)} + {position}).to(DTYPE)")
        for line in _filled(template, [names[j] for j in range(len(first))], n):
            w(line)
        if len(whens) > 1:
            w.dedent()
        w("tl.debug_barrier()")
        w.dedent()
        if len(whens) == 1 and statements[0].when is not None:
            w.dedent()

    def zero_outputs(self) -> None:
        """Row outputs arrive uninitialised (NaN when poisoned): zero this program's rows first."""
        p, w = self.p, self.w
        for o in p.outputs:
            t = p.tensors[o]
            if t.rows:
                w(f"for c0 in range(0, {t.size}, {CHUNK}):")
                w.indent()
                w(f"cols = c0 + tl.arange(0, {CHUNK})")
                w(f"tl.store({o}_ptr + z[:, None] * {t.size} + cols[None, :], tl.zeros([BLOCK_Z, {CHUNK}], dtype=DTYPE), "
                  f"mask=row_mask[:, None] & (cols < {t.size})[None, :])")
                w.dedent()
        w("tl.debug_barrier()")

    def einsum(self, s: Einsum) -> None:
        w, n = self.w, self.count
        s = _squeezed(s)
        sizes: dict[str, int] = {}
        for v in (s.out, *s.operands):
            for c, size in zip(v.labels.replace("z", ""), v.shape):
                sizes.setdefault(c, size)
        axes = list(sizes)
        if any("z" in v.labels for v in s.operands):
            axes.insert(0, "z")
        elif "z" in s.out.labels:
            raise ValueError(f"{self.p.name}: '{s.out.tensor}' takes rows from operands that have none")
        # each label is a tile axis; where the tile would pass the budget, the largest are halved
        # into chunks that loops step through
        padded = {c: _pow2(size) for c, size in sizes.items()}
        chunk = dict(padded)
        rows = BLOCK_Z if "z" in axes else 1
        while rows * prod(chunk.values()) > TILE_BUDGET:
            c = max(chunk, key=lambda c: chunk[c])
            chunk[c] //= 2
        looped = frozenset(c for c in sizes if chunk[c] < padded[c])
        out_loops = [c for c in sizes if c in looped and c in s.out.labels]
        summed_loops = [c for c in sizes if c in looped and c not in s.out.labels]
        index = {c: f"i{c}_{n}" for c in sizes}
        masked = {c for c in sizes if -(-sizes[c] // chunk[c]) * chunk[c] != sizes[c]}
        for c in sizes:
            if c not in looped:
                w(f"{index[c]} = tl.arange(0, {padded[c]})")
        kept = [c for c in axes if c in s.out.labels]

        def hoisted(name: str, v: View, tile: list[str]) -> tuple[str, str | None]:
            """Pointers and mask of v: the parts no loop changes are formed once, before the loops."""
            fixed, fixed_mask, step, step_mask = self.address(v, tile, index, masked, looped)
            w(f"p{name} = {fixed}")
            if fixed_mask:
                w(f"m{name} = {fixed_mask}")
            mask = " & ".join(m for m in (fixed_mask and f"m{name}", step_mask) if m) or None
            return f"p{name}" + (f" + {step}" if step else ""), mask

        operands = [hoisted(f"{k}_{n}", v, axes) for k, v in enumerate(s.operands)]
        out = hoisted(f"o_{n}", s.out, kept)

        def loop(c: str) -> None:
            w(f"for start{c}_{n} in range(0, {_int(sizes[c])}, {chunk[c]}):")
            w.indent()
            w(f"{index[c]} = start{c}_{n} + tl.arange(0, {chunk[c]})")

        for c in out_loops:
            loop(c)
        acc = f"acc_{n}"
        if summed_loops:
            shape = ", ".join("BLOCK_Z" if c == "z" else str(chunk[c]) for c in kept) or "1"
            w(f"{acc} = tl.zeros([{shape}], dtype=DTYPE)")
            for c in summed_loops:
                loop(c)
        factors = []
        for k, (pointer, mask) in enumerate(operands):
            w(f"a{k}_{n} = tl.load({pointer}" + (f", mask={mask}, other=0.0)" if mask else ")"))
            factors.append(f"a{k}_{n}")
        product = " * ".join(factors)
        for k in range(len(axes) - 1, -1, -1):  # sum the labels `out` lacks, last axis first
            if axes[k] not in s.out.labels:
                product = f"tl.sum({product}, axis={k})"
        if summed_loops:
            w(f"{acc} += {product}")
            for _ in summed_loops:
                w.dedent()
            product = acc if kept else f"tl.sum({acc}, axis=0)"
        value = product if s.coeff == 1.0 else f"{product} * {_float(s.coeff)}"
        pointer, mask = out
        m = f", mask={mask}" if mask else ""
        first_only = s.out.tensor in self.partial and not self._reads(s, self.partial)
        if first_only:  # a full value into a partial sum: program 0 adds it
            w("if pid == 0:")
            w.indent()
        w(f"q_{n} = {pointer}")
        w(f"tl.store(q_{n}, tl.load(q_{n}{m}{', other=0.0' if mask else ''}) + {value}{m})")
        if first_only:
            w.dedent()
        for _ in out_loops:
            w.dedent()

    def gather(self, s: Gather) -> None:
        w, n, numel = self.w, self.count, s.out.numel
        source, out = self.places[s.source.tensor], self.places[s.out.tensor]
        slot = "slot + " if source.per_program else ""
        w(f"k_{n} = tl.load({s.index}_ptr + z, mask=row_mask, other=0)")
        w(f"for c_{n} in range(0, {numel}, {CHUNK}):")
        w.indent()
        w(f"cols_{n} = c_{n} + tl.arange(0, {CHUNK})")
        w(f"m_{n} = row_mask[:, None] & (cols_{n} < {numel})[None, :]")
        w(f"v_{n} = tl.load({source.pointer} + {slot}{source.base + s.source.start} + k_{n}[:, None] * {numel} + "
          f"cols_{n}[None, :], mask=m_{n}, other=0.0)")
        w(f"o_{n} = {out.pointer} + z[:, None] * {out.stride} + {out.base + s.out.start} + cols_{n}[None, :]")
        w(f"tl.store(o_{n}, tl.load(o_{n}, mask=m_{n}, other=0.0) + v_{n}, mask=m_{n})")
        w.dedent()

    def scatter(self, s: Scatter) -> None:
        w, n, numel = self.w, self.count, s.source.numel
        source, out = self.places[s.source.tensor], self.places[s.out.tensor]
        w(f"for r_{n} in range(BLOCK_Z):  # one row after another: rows of one set add up in order")
        w.indent()
        w(f"row_{n} = pid.to(tl.int64) * BLOCK_Z + r_{n}")
        w(f"if row_{n} < n:")
        w.indent()
        w(f"k_{n} = tl.load({s.index}_ptr + row_{n})")
        w(f"for c_{n} in range(0, {numel}, {CHUNK}):")
        w.indent()
        w(f"cols_{n} = c_{n} + tl.arange(0, {CHUNK})")
        w(f"m_{n} = cols_{n} < {numel}")
        w(f"v_{n} = tl.load({source.pointer} + row_{n} * {source.stride} + {source.base + s.source.start} + cols_{n}, "
          f"mask=m_{n}, other=0.0)")
        w(f"o_{n} = partial + slot + {out.base + s.out.start} + k_{n} * {numel} + cols_{n}")
        w(f"tl.store(o_{n}, tl.load(o_{n}, mask=m_{n}, other=0.0) + v_{n}, mask=m_{n})")
        w("tl.debug_barrier()  # threads holding copies of one element: the next row reads what all stored")
        w.dedent()
        w.dedent()
        w.dedent()

    def launcher(self) -> list[str]:
        """Takes the program's arguments by position (its inputs, the weight, the constants), so
        that no input name can collide with a local."""
        p = self.p
        w = CodeWriter()
        w(f"def _{p.name}__triton(*args: torch.Tensor, _mask: int = -1) -> list[torch.Tensor]:")
        w.indent()
        w(f'"""Launch the {p.name} kernels on ({", ".join((*p.inputs, "weight", *p.constants))}), {BLOCK_Z} rows '
          'per program, those with a statement the mask needs (the first zeroes the outputs); gradients without '
          'rows sum the programs\' partial slots."""')
        first = next(k for k, i in enumerate(p.inputs) if p.tensors[i].rows)
        like = len(p.inputs)  # the weight
        w(f"n = args[{first}].shape[0]")
        w(f"programs = triton.cdiv(n, {BLOCK_Z})")
        rows = [p.tensors[o].size for o in p.outputs if p.tensors[o].rows]
        w(f"outputs = [rt.output_rows(args[{like}], n, size) for size in {tuple(rows)!r}]")
        w(f"scratch = args[{like}].new_zeros(max(n * {self.scratch}, 1))")
        w(f"partial = args[{like}].new_zeros(programs, {max(self.slots, 1)})")
        w("arguments = [a.contiguous() for a in args] + outputs")
        w(f"dtype = tl.float64 if args[{like}].dtype == torch.float64 else tl.float32")
        w(f"table = rt.device_table(_{p.name}__table, torch.int32, args[{like}].device)")
        w(f"coefs = rt.device_table(_{p.name}__coefs, args[{like}].dtype, args[{like}].device)")
        kernels = []  # (kernel, the mask bits any of its statements runs for; -1: any)
        parts = self.kernels()
        for k, (name, part) in enumerate(zip(kernel_names(p, len(parts)), parts)):
            bits = 0
            for t in (p.statements[j] for unit in part for j in unit):
                bits = -1 if t.when is None or bits == -1 else bits | t.when
            kernels.append(f"({name}, {-1 if k == 0 else bits})")
        w(f"for kernel, bits in ({', '.join(kernels)},):  # one after another: each sees the last one's writes")
        w.indent()
        w("if n and _mask & bits:")
        w.indent()
        w(f"kernel[(programs,)](*arguments, table, coefs, scratch, partial, n, _mask, BLOCK_Z={BLOCK_Z}, DTYPE=dtype, "
          f"num_warps={WARPS}, maxnreg={MAX_REGISTERS})")
        w.dedent()
        w.dedent()
        results, k = [], 0
        for o in p.outputs:
            t = p.tensors[o]
            if t.rows:
                results.append(f"outputs[{k}]")
                k += 1
            else:
                base = self.places[o].base
                results.append(f"partial[:, {base}:{base + t.size}].sum(0)")
        w(f"return [{', '.join(results)}]")
        w.dedent()
        return w.lines


def _squeezed(s: Einsum) -> Einsum:
    """s without its labels of size 1 (a scalar irrep's component), which index nothing: a tile of
    fewer axes, the same elements. Where that would leave no axis at all, s as it is."""
    views = (s.out, *s.operands)
    if not any("z" in v.labels or any(size > 1 for size in v.shape) for v in views):
        return s

    def squeezed(v: View) -> View:
        kept = dict((c, size) for c, size in zip(v.labels.replace("z", ""), v.shape) if size > 1)
        return replace(v, labels="".join(c for c in v.labels if c == "z" or c in kept), shape=tuple(kept.values()))

    return replace(s, out=squeezed(s.out), operands=tuple(map(squeezed, s.operands)))


def _pointers(p: Program) -> list[str]:
    """A kernel's tensor arguments: the launcher's arguments, then the row outputs. Each is named
    after its tensor with `_ptr` appended, which no local of the kernel ends with."""
    return [f"{t}_ptr" for t in (*p.inputs, "weight", *p.constants, *(o for o in p.outputs if p.tensors[o].rows))]


def kernel_names(p: Program, count: int) -> list[str]:
    """The names of a (factorized) program's `count` kernels, in the order they run."""
    return [f"_{p.name}__kernel{k}" for k in range(count)]


def _int(value: int) -> str:
    """An integer a statement's form leaves open (`_form`): an offset, a stride, a size."""
    return f"⟨{value}⟩"


def _float(value: float) -> str:
    """A coefficient a statement's form leaves open."""
    return f"⟪{value!r}⟫"


_OPEN = re.compile(r"⟨(-?\d+)⟩|⟪([^⟫]*)⟫")


def _form(lines: list[str]) -> tuple[str, tuple[int | float, ...]]:
    """A statement's lines with the values marked open (`_int`, `_float`) as holes `⟦0⟧`, `⟦1⟧`, …: its
    form, shared by the statements that differ only in where their operands are, their sizes
    within the same tiles, and their coefficients; and those values, in order."""
    values: list[int | float] = []

    def hole(m: re.Match) -> str:
        values.append(int(m.group(1)) if m.group(1) is not None else float(m.group(2)))
        return f"⟦{len(values) - 1}⟧"

    return _OPEN.sub(hole, "\n".join(lines)), tuple(values)


_HOLE = re.compile(r"⟦(\d+)⟧")


def _filled(template: str, values: list[str], n: int) -> list[str]:
    """A form's lines with its holes filled and its locals suffixed with n."""
    return _HOLE.sub(lambda m: values[int(m.group(1))], template.replace("@", str(n))).split("\n")


def _constants(name: str, values: list, per_line: int = 24) -> list[str]:
    items = [repr(v) for v in values]
    return [f"{name} = (", *("    " + ", ".join(items[k:k + per_line]) + "," for k in range(0, len(items), per_line)),
            ")"]


def lower_program(p: Program) -> list[str]:
    """The kernels and launcher of a (factorized) program: `_<name>__kernel<k>`, `_<name>__triton`,
    and the tables its kernels' loops read (`_<name>__table`, `_<name>__coefs`)."""
    writer = _Writer(p)
    kernels = writer.run()
    return (_constants(f"_{p.name}__table", writer.table) + _constants(f"_{p.name}__coefs", writer.coefs)
            + ["", ""] + kernels + ["", ""] + writer.launcher())


def kernel_signature(p: Program) -> dict[str, str]:
    """Argument types of the program's kernels for float32 rows (ahead-of-time compilation)."""
    signature = {name: ("*i64" if p.tensors[name.removesuffix("_ptr")].kind == "index" else "*fp32")
                 for name in _pointers(p)}
    signature.update(table_ptr="*i32", coefs_ptr="*fp32", scratch="*fp32", partial="*fp32", n="i32", mask="i32",
                     BLOCK_Z="constexpr", DTYPE="constexpr")
    return signature


def kernel_costs(p: Program) -> list[tuple[str, int, int]]:
    """Per kernel of a (factorized) program: its name, FLOPs per row (row statements, counted
    dense) and float32 bytes per row its statements move (row views read, outputs read and written;
    loops that re-read an operand are not counted)."""
    costs = []
    parts = _Writer(p).kernels()
    for name, part in zip(kernel_names(p, len(parts)), parts):
        flops = traffic = 0
        for s in (p.statements[j] for unit in part for j in unit):
            views = p.reads(s) + (s.out,) * 2
            traffic += sum(4 * v.numel for v in views if p.tensors[v.tensor].rows)
            if isinstance(s, Einsum) and any(p.tensors[v.tensor].rows for v in views):
                sizes = {}
                for v in views:
                    sizes.update(zip(v.labels.replace("z", ""), v.shape))
                flops += 2 * prod(sizes.values())
        costs.append((name, flops, traffic))
    return costs

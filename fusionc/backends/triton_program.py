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

from dataclasses import dataclass, replace
from math import prod

from fusionc.analysis.program import Einsum, Gather, Program, Scatter, View
from fusionc.backends.writer import CodeWriter

#: Rows per program instance.
BLOCK_Z = 16
#: Most elements of one statement's product tile (BLOCK_Z rows included): 16 per thread of 8 warps.
TILE_BUDGET = 4096
#: Statements per kernel: a program longer than this runs as several kernels in sequence (its
#: temporaries are in global memory anyway), which keeps each kernel's compile time and register
#: pressure bounded however long the program.
SEGMENT = 16
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
        self.count = 0  # statements written: locals are suffixed with it
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
        fixed, moving = [f"{place.pointer} + {place.base + v.start}"], []
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
            (moving if c in looped else fixed).append(term if stride == 1 else f"{term} * {stride}")
            if c in masked:
                (moving_masks if c in looped else fixed_masks).append(f"({term} < {size})")
        return (" + ".join(fixed), " & ".join(fixed_masks) or None, " + ".join(moving),
                " & ".join(moving_masks) or None)

    # --- statements ----------------------------------------------------------------------------------

    def run(self) -> list[str]:
        p, w = self.p, self.w
        for k, name in enumerate(kernel_names(p)):
            part = p.statements[k * SEGMENT:(k + 1) * SEGMENT]
            if k:
                w()
                w()
            w("@rt.lazy_jit")
            w(f"def {name}({', '.join(_pointers(p))}, scratch, partial, n, mask, BLOCK_Z: tl.constexpr, "
              "DTYPE: tl.constexpr):")
            w.indent()
            what = f"statements {k * SEGMENT + 1}–{k * SEGMENT + len(part)} of {len(p.statements)}"
            w(f'"""{p.doc or p.name}, {what}: BLOCK_Z rows per program."""')
            w("pid = tl.program_id(0)")
            w("z = pid.to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)")
            w("row_mask = z < n")
            w(f"slot = pid.to(tl.int64) * {self.slots}  # this program's slot of the partial buffer")
            if k == 0:
                self.zero_outputs()
            for s in part:
                self.count += 1
                if s.note:
                    w(f"# {s.note}")
                if s.when is not None:  # runs for some mask bits only (`mask`)
                    w(f"if mask & {s.when}:")
                    w.indent()
                if isinstance(s, Einsum):
                    self.einsum(s)
                elif isinstance(s, Gather):
                    self.gather(s)
                else:
                    self.scatter(s)
                if s.when is not None:
                    w.dedent()
                w("tl.debug_barrier()")
            w.dedent()
        return w.lines

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
            w(f"for start{c}_{n} in range(0, {sizes[c]}, {chunk[c]}):")
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
        value = product if s.coeff == 1.0 else f"{product} * {s.coeff!r}"
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
        kernels = []  # (kernel, the mask bits any of its statements runs for; -1: any)
        for k, name in enumerate(kernel_names(p)):
            bits = 0
            for t in p.statements[k * SEGMENT:(k + 1) * SEGMENT]:
                bits = -1 if t.when is None or bits == -1 else bits | t.when
            kernels.append(f"({name}, {-1 if k == 0 else bits})")
        w(f"for kernel, bits in ({', '.join(kernels)},):  # one after another: each sees the last one's writes")
        w.indent()
        w("if n and _mask & bits:")
        w.indent()
        w(f"kernel[(programs,)](*arguments, scratch, partial, n, _mask, BLOCK_Z={BLOCK_Z}, DTYPE=dtype, "
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


def kernel_names(p: Program) -> list[str]:
    """The kernels a (factorized) program runs as, in order: one per SEGMENT statements."""
    return [f"_{p.name}__kernel{k}" for k in range(max(1, -(-len(p.statements) // SEGMENT)))]


def lower_program(p: Program) -> list[str]:
    """The kernels and launcher of a (factorized) program: `_<name>_<k>_kernel`, `_<name>_triton`."""
    writer = _Writer(p)
    return writer.run() + ["", ""] + writer.launcher()


def kernel_signature(p: Program) -> dict[str, str]:
    """Argument types of the program's kernels for float32 rows (ahead-of-time compilation)."""
    signature = {name: ("*i64" if p.tensors[name.removesuffix("_ptr")].kind == "index" else "*fp32")
                 for name in _pointers(p)}
    signature.update(scratch="*fp32", partial="*fp32", n="i32", mask="i32", BLOCK_Z="constexpr", DTYPE="constexpr")
    return signature


def kernel_costs(p: Program) -> list[tuple[str, int, int]]:
    """Per kernel of a (factorized) program: its name, FLOPs per row (row statements, counted
    dense) and float32 bytes per row its statements move (row views read, outputs read and written;
    loops that re-read an operand are not counted)."""
    costs = []
    for k, name in enumerate(kernel_names(p)):
        flops = traffic = 0
        for s in p.statements[k * SEGMENT:(k + 1) * SEGMENT]:
            views = p.reads(s) + (s.out,) * 2
            traffic += sum(4 * v.numel for v in views if p.tensors[v.tensor].rows)
            if isinstance(s, Einsum) and any(p.tensors[v.tensor].rows for v in views):
                sizes = {}
                for v in views:
                    sizes.update(zip(v.labels.replace("z", ""), v.shape))
                flops += 2 * prod(sizes.values())
        costs.append((name, flops, traffic))
    return costs

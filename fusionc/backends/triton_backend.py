"""The Triton back end: one fused kernel per diagram.

Every component of every block is a [rows, channels] tile in registers; each coupling is
unrolled over the non-zero entries of its CG table (compile-time constants, zeros skipped),
shared couplings of the plan are computed once, per-index weights are gathered inside the
kernel, and recoupled terms map their weights through the exact recoupling matrix in registers.
- Diagrams whose terms all couple channels one to one (`uuu`, `none`: MACE products, fusion
  blocks) with one multiplicity tile rows × channels across programs (BLOCK_Z × BLOCK_U).
- Others tile rows only (BLOCK_Z = 16) and hold every channel of a block. A `uvw` product whose
  first operand is a kernel argument mixes channels in a loop of outer products over its input
  channels (`_column_path`); one whose operand lives in registers (a `let` value) uses tl.dot in
  IEEE precision (not TF32), or with per-row weights a broadcast sum; `uvu` scales channels;
  `uvuv` works elementwise on the output's grid of channel pairs (u, v).
The kernel is the op's forward; its backward and double backward are the diagram's derivative
programs, each written as a table (`fusionc.backends.triton_program`) that the runtime's one
table kernel interprets (`fusionc.runtime.table_kernel`).
"""

from __future__ import annotations

from collections.abc import Callable

from fusionc.algebra.cg import wigner_3j
from fusionc.analysis.plan import Contribution, Couple, DiagramPlan, Leaf, WeightedSum
from fusionc.analysis.program import ProgramSet
from fusionc.backends.writer import CodeWriter, emit_module
from fusionc.backends.triton_program import lower_program
from fusionc.machine import GpuTriton
from fusionc.ir.diagram import CouplingVertex, Diagram
from fusionc.ir.irreps import Irreps

#: Threads of a warp; each program holds about one element of every live tile per thread.
WARP = 32


def channels(d: Diagram) -> int | None:
    """The one multiplicity shared by every block of a diagram whose terms all couple channels one
    to one: its kernel tiles channels across programs. None: the kernel tiles rows only."""
    muls = {b.mul for i in d.inputs if i.kind == "irreps" for b in i.irreps}
    muls |= {b.mul for v in d.values for b in v.irreps}
    if len(muls) == 1 and all(t.mode in ("uuu", "none") for t in d.vertices):
        return muls.pop()
    return None


def _pow2(n: int, least: int = 1) -> int:
    p = least
    while p < n:
        p *= 2
    return p


def tile_configs(d: Diagram) -> list[tuple[int, int, int]]:
    """The (BLOCK_Z, BLOCK_U, num_warps) configurations `triton.autotune` chooses among on a GPU; the
    first is the default (the one the interpreter runs). Each keeps one element of every tile per
    thread, so each needs the registers of the default: bigger tiles trade occupancy for fewer
    weight reads per row, which only timing on the GPU can settle. Channel-wise diagrams: a warp's
    worth of channels (up to 32) by 1, 2 or 4 rows per warp. Otherwise 16 rows (tl.dot's least
    size) by every channel on eight warps, or 32 rows on sixteen: with four warps per 16 rows (two
    elements per thread) conv_tp and cormorant_cg spill (328 and 504 bytes of stack on sm_90)."""
    mul = channels(d)
    if mul is None:
        return [(16, 1, 8), (32, 1, 16)]
    block_u = _pow2(min(mul, WARP))
    return [(WARP // block_u * warps, block_u, warps) for warps in (1, 2, 4)]


def _terms(coefficients: list[tuple[float, str]]) -> str:
    return " + ".join(f"{c!r} * {x}" for c, x in coefficients) if coefficients else "_zero"


class _Kernel:
    """Writes one kernel body: tiles as local variables, named after the plan's nodes."""

    def __init__(self, plan: DiagramPlan, w: CodeWriter, channel_tiled: bool, dtype: str,
                 arguments: set[str]) -> None:
        self.plan, self.w, self.channel_tiled, self.dtype = plan, w, channel_tiled, dtype
        self.arguments = arguments  # the diagram's inputs: kernel arguments, readable column by column
        self.components: dict[tuple, list[str]] = {}  # (operand, block) or node name -> tiles
        self.weights: dict[tuple, str] = {}
        self.indices: dict[str, str] = {}
        self.columns: dict[tuple, str] = {}
        self.channel_sets: dict[int, tuple[str, str, str, str]] = {}
        self.parts = 0  # running sums written

    def chan(self, mul: int) -> tuple[str, str, str, str]:
        """(channel index, channel mask, tile mask, zero tile) for blocks of `mul` channels."""
        if self.channel_tiled:
            return "_chans", "_chan_mask", "_mask", "_zero"
        if mul not in self.channel_sets:
            self.w(f"_ch{mul} = tl.arange(0, {_pow2(mul, 16)})")
            self.w(f"_cm{mul} = _ch{mul} < {mul}")
            self.w(f"_mask{mul} = _row_mask[:, None] & _cm{mul}[None, :]")
            self.w(f"_zero{mul} = tl.zeros([BLOCK_Z, {_pow2(mul, 16)}], dtype={self.dtype})")
            self.channel_sets[mul] = (f"_ch{mul}", f"_cm{mul}", f"_mask{mul}", f"_zero{mul}")
        return self.channel_sets[mul]

    def block(self, operand: str, irreps: Irreps, index: int,
              grid: tuple[str, str, str] | None = None) -> list[str]:
        """The component tiles of a block: [rows, channels]; or, with grid = (name, channel
        expression, mask), read at the channels that expression gives over another grid (uvuv)."""
        key = (operand, index) if grid is None else (operand, index, grid[0])
        if key not in self.components:
            start, _ = irreps.slices()[index]
            dim, mul = irreps[index].ir.dim, irreps[index].mul
            ch, _, mask, _ = self.chan(mul)
            prefix = f"{operand}__{index}"
            if grid is not None:
                prefix, ch, mask = f"{prefix}_{grid[0]}", f"({grid[1]})", grid[2]
            names = []
            for m in range(dim):
                self.w(f"{prefix}_{m} = tl.load({operand} + _rows[:, None] * {irreps.dim} + "
                       f"({start + m} + {ch}[None, :] * {dim}), mask={mask}, other=0.0)")
                names.append(f"{prefix}_{m}")
            self.components[key] = names
        return self.components[key]

    def column(self, operand: str, irreps: Irreps, index: int, channel: int, m: int) -> str:
        """Component m of one channel of a block, for every row: a [BLOCK_Z] vector."""
        key = (operand, index, channel, m)
        if key not in self.columns:
            start, _ = irreps.slices()[index]
            name = f"{operand}__{index}_c{channel}_{m}"
            self.w(f"{name} = tl.load({operand} + _rows * {irreps.dim} + {start + channel * irreps[index].ir.dim + m}, "
                   f"mask=_row_mask, other=0.0)")
            self.columns[key] = name
        return self.columns[key]

    def contribute(self, sums: dict[int, list[list[str]]], block: int, tiles: list[str]) -> None:
        """Add a term's tiles to the running sum of an output block at once, so that no term's
        result stays live until the block is stored (fewer registers)."""
        self.parts += 1
        previous = sums[block][0] if sums[block] else None
        names = [f"_sum{self.parts}_{m}" for m in range(len(tiles))]
        for m, (name, tile) in enumerate(zip(names, tiles)):
            self.w(f"{name} = {previous[m] + ' + ' if previous else ''}{tile}")
        sums[block] = [names]

    def couple(self, name: str, a: list[str], b: list[str], la: int, lb: int, lk: int) -> list[str]:
        table = wigner_3j(la, lb, lk)
        out = []
        for k in range(2 * lk + 1):
            terms = [(float(table[i, j, k]), f"{a[i]} * {b[j]}") for i in range(2 * la + 1)
                     for j in range(2 * lb + 1) if table[i, j, k] != 0.0]
            self.w(f"{name}_{k} = {_terms(terms)}")
            out.append(f"{name}_{k}")
        return out

    def index(self, name: str) -> str:
        if name not in self.indices:
            self.w(f"{name}__rows = tl.load({name} + _rows, mask=_row_mask, other=0)")
            self.indices[name] = f"{name}__rows"
        return self.indices[name]

    def weight(self, t: CouplingVertex, offset: int, start: int) -> str:
        """The tile of the term's weights for the path whose weights start at `start`."""
        key = (t.id, start)
        if key in self.weights:
            return self.weights[key]
        name = f"_w_{t.stem}_{start}"
        if t.recoupled is not None:  # weights of a recoupled tree: a fixed mix of the canonical ones
            j = start // t.paths[0].weight_shape[0]
            parts = [(v, self._raw_weight(t, offset, t.paths[i].weight_offset)) for i, q, v in t.recoupled.matrix
                     if q == j]
            self.w(f"{name} = {_terms(parts)}")
        else:
            self.w(f"{name} = {self._raw_weight(t, offset, start)}")
        self.weights[key] = name
        return name

    def _raw_weight(self, t: CouplingVertex, offset: int, start: int, stride: int = 1) -> str:
        """A [rows or 1, channels] tile of weights start + channel · stride (of one weight set)."""
        ch, cm, mask, _ = self.chan(t.irreps_out[t.paths[0].out_block].mul if t.is_tree else self._mul(t, start))
        where = f"{start} + {ch}[None, :] * {stride}"
        return self._load_weights(t, offset, where, mask, f"{cm}[None, :]")

    def _mul(self, t: CouplingVertex, start: int) -> int:
        path = next(p for p in t.paths if p.weight_offset == start)
        return t.irreps_in[0][path.operand_blocks[0]].mul

    def _load_weights(self, t: CouplingVertex, offset: int, where: str, row_mask: str, shared_mask: str) -> str:
        """Load weights at offsets `where` (an expression over channel indices) of the term's set."""
        if t.weight_source is not None:
            return f"tl.load({t.weight_source} + _rows[:, None] * {t.weight_numel} + ({where}), mask={row_mask}, other=0.0)"
        if t.per is not None:
            z = self.index(t.per)
            return (f"tl.load(weight + {offset} + {z}[:, None] * {t.weight_numel} + ({where}), mask={row_mask}, "
                    f"other=0.0)")
        return f"tl.load(weight + {offset} + ({where}), mask={shared_mask}, other=0.0)"

    def scaled(self, tiles: list[str], t: CouplingVertex, offset: int, start: int | None, coeff: float) -> list[str]:
        factor = f"{coeff!r}" if start is None else f"{self.weight(t, offset, start)} * {coeff!r}"
        return [f"{x} * {factor}" for x in tiles]


def _emit_kernel(w: CodeWriter, d: Diagram, plan: DiagramPlan) -> None:
    args = [i.name for i in d.inputs] + ["weight"] + [v.name + "__out" for v in d.outputs]
    w("@triton.autotune(configs=[")
    w.indent()
    for block_z, block_u, warps in tile_configs(d):
        w(f'triton.Config({{"BLOCK_Z": {block_z}, "BLOCK_U": {block_u}}}, num_warps={warps}, maxnreg={GpuTriton.max_registers}),')
    w.dedent()
    w('], key=[], prune_configs_by={"early_config_prune": rt.tuning_configs})')
    w("@triton.jit")
    w(f"def _{d.name}__kernel({', '.join(args)}, n, BLOCK_Z: tl.constexpr, BLOCK_U: tl.constexpr):")
    w.indent()
    mul = channels(d)
    first = next(i for i in d.inputs if i.kind == "irreps")
    dtype = f"{first.name}.dtype.element_ty"
    w("_rows = tl.program_id(0) * BLOCK_Z + tl.arange(0, BLOCK_Z)")
    w("_row_mask = _rows < n")
    if mul is not None:
        w(f'"""{d.name}: a tile of BLOCK_Z rows × BLOCK_U channels, the whole diagram in registers."""')
        w("_chans = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)")
        w(f"_chan_mask = _chans < {mul}")
        w("_mask = _row_mask[:, None] & _chan_mask[None, :]")
        w(f"_zero = tl.zeros([BLOCK_Z, BLOCK_U], dtype={dtype})")
    else:
        w(f'"""{d.name}: BLOCK_Z rows with all their channels, the whole diagram in registers."""')
    k = _Kernel(plan, w, channel_tiled=mul is not None, dtype=dtype, arguments={i.name for i in d.inputs})
    offsets, offset = {}, 0
    for t in d.vertices:
        offsets[t.id] = offset
        offset += t.parameter_numel
    for v in d.values:
        w()
        w(f"# {'out' if v.is_output else 'let'} {v.name} : {v.irreps}")
        sums: dict[int, list[list[str]]] = {b: [] for b in range(len(v.irreps))}
        finished: set[int] = set()

        def finish(b: int, v=v, sums=sums, finished=finished) -> None:
            _finish_block(k, v, b, sums[b])
            finished.add(b)

        for t in v.terms:
            w(f"# {t.id}: {t.text}")
            if t.is_tree:
                _tree_term(k, t, offsets[t.id], sums)
            elif t.mode in ("uuu", "none"):
                _path_term(k, t, offsets[t.id], sums)
            else:  # a value's only term finishes each output block as soon as its last path is in
                _mixing_term(k, t, offsets[t.id], sums, finish if len(v.terms) == 1 else None)
        for b in sums:
            if b not in finished:
                finish(b)
    w.dedent()


def _finish_block(k: _Kernel, v, b: int, parts: list[list[str]]) -> None:
    """Name block b of value v as the sum of its parts and, for an output, store it."""
    block = v.irreps[b]
    ch, _, mask, zero = k.chan(block.mul)
    names = []
    for m in range(block.ir.dim):
        name = f"{v.name}__{b}_{m}"
        k.w(f"{name} = {' + '.join(p[m] for p in parts) if parts else zero}")
        names.append(name)
    k.components[(v.name, b)] = names
    if v.is_output:
        start, _ = v.irreps.slices()[b]
        for m, name in enumerate(names):
            k.w(f"tl.store({v.name}__out + _rows[:, None] * {v.irreps.dim} + ({start + m} + {ch}[None, :] * "
                f"{block.ir.dim}), {name}, mask={mask})")


def _operand_irreps(t: CouplingVertex, operand: str) -> Irreps:
    return next(irreps for op, irreps in zip(t.operands, t.irreps_in) if op == operand)


def _tree_term(k: _Kernel, t: CouplingVertex, offset: int, sums: dict[int, list[list[str]]]) -> None:
    for step in k.plan.vertex_steps[t.id]:
        if isinstance(step, Leaf):
            k.components[step.name] = k.block(step.operand, _operand_irreps(t, step.operand), step.block)
        elif isinstance(step, Couple):
            k.components[step.name] = k.couple(f"_{step.name}", k.components[step.a], k.components[step.b],
                                               step.la, step.lb, step.k.l)
        elif isinstance(step, WeightedSum):
            parts = [k.scaled(k.components[node], t, offset, start, c) for node, start, c in step.parts]
            names = []
            for m in range(step.ir.dim):
                names.append(f"_{step.name}_{m}")
                k.w(f"_{step.name}_{m} = {' + '.join(p[m] for p in parts)}")
            k.components[step.name] = names
        elif isinstance(step, Contribution):
            k.contribute(sums, step.block, k.scaled(k.components[step.node], t, offset, step.start, step.coeff))


def _path_term(k: _Kernel, t: CouplingVertex, offset: int, sums: dict[int, list[list[str]]]) -> None:
    for n, p in enumerate(t.paths):
        blocks = [k.block(op, irreps, b) for op, irreps, b in zip(t.operands, t.irreps_in, p.operand_blocks)]
        if len(blocks) == 2:
            ls = [irreps[b].ir.l for irreps, b in zip(t.irreps_in, p.operand_blocks)]
            tiles = k.couple(f"_{t.stem}_p{n}", blocks[0], blocks[1], ls[0], ls[1],
                             t.irreps_out[p.out_block].ir.l)
        else:
            tiles = blocks[0]
        start = p.weight_offset if p.weight_shape else None
        k.contribute(sums, t.placement[p.out_block], k.scaled(tiles, t, offset, start, p.normalization))


def _mixing_term(k: _Kernel, t: CouplingVertex, offset: int, sums: dict[int, list[list[str]]],
                 finish: Callable[[int], None] | None = None) -> None:
    """Paths that mix channels (uvw, uvu, uvuv) on rows × channels tiles: `_column_path` for uvw
    on a kernel argument, `_pair_path` for uvuv; uvw on a value computed in the kernel with tl.dot
    where the weights are shared (IEEE float32, not TF32), a broadcast sum where they come per row.
    Paths run output block by output block; with `finish`, each block is finished (stored) after
    its last path, so only one block's running sums are live (on sm_90 fc_tp spilled 48 bytes
    with every block's sums live to the end)."""
    order = sorted(range(len(t.paths)), key=lambda n: t.placement[t.paths[n].out_block])
    for position, n in enumerate(order):
        p = t.paths[n]
        name = f"_{t.stem}_p{n}"
        a = t.irreps_in[0][p.operand_blocks[0]]
        out = t.irreps_out[p.out_block]
        start = p.weight_offset
        if t.mode == "uvuv":
            k.contribute(sums, t.placement[p.out_block], _pair_path(k, t, offset, p))
        elif t.mode == "uvw" and t.operands[0] in k.arguments:
            k.contribute(sums, t.placement[p.out_block], _column_path(k, t, offset, p, name))
        elif len(t.operands) == 1:  # linear uvw: out_i = x_i · W
            x = k.block(t.operands[0], t.irreps_in[0], p.operand_blocks[0])
            ch_u, cm_u, _, _ = k.chan(a.mul)
            ch_w, cm_w, _, _ = k.chan(out.mul)
            k.contribute(sums, t.placement[p.out_block],
                         [f"{_matmul(k, t, offset, tile, f'{start}', a.mul, out.mul, ch_u, ch_w, cm_u, cm_w)} * "
                          f"{p.normalization!r}" for tile in x])
        else:
            x = k.block(t.operands[0], t.irreps_in[0], p.operand_blocks[0])
            ch_u, cm_u, _, _ = k.chan(a.mul)
            ch_w, cm_w, _, _ = k.chan(out.mul)
            b = t.irreps_in[1][p.operand_blocks[1]]
            table = wigner_3j(a.ir.l, b.ir.l, out.ir.l)
            acc = [f"{name}_{m}" for m in range(out.ir.dim)]
            for m in acc:
                k.w(f"{m} = {k.chan(out.mul)[3]}")
            for v in range(b.mul):
                ys = [k.column(t.operands[1], t.irreps_in[1], p.operand_blocks[1], v, j) for j in range(b.ir.dim)]
                coupled = []
                for m in range(out.ir.dim):
                    terms = [(float(table[i, j, m]), f"{x[i]} * {ys[j]}[:, None]") for i in range(a.ir.dim)
                             for j in range(b.ir.dim) if table[i, j, m] != 0.0]
                    coupled.append(_terms(terms))
                for m, expression in enumerate(coupled):
                    k.w(f"{name}_t = {expression}")
                    if t.mode == "uvw":  # W[u, v, w]: contract u
                        where = f"{start} + {v * out.mul}"
                        contribution = _matmul(k, t, offset, f"{name}_t", where, a.mul, out.mul, ch_u, ch_w, cm_u, cm_w,
                                               stride=b.mul * out.mul)
                    else:  # uvu: W[u, v]
                        weights = k._load_weights(t, offset, f"{start} + {ch_u}[None, :] * {b.mul} + {v}",
                                                  f"_row_mask[:, None] & {cm_u}[None, :]", f"{cm_u}[None, :]")
                        contribution = f"{name}_t * {weights}"
                    k.w(f"{acc[m]} += {contribution}")
            k.contribute(sums, t.placement[p.out_block], [f"{m} * {p.normalization!r}" for m in acc])
        if finish is not None and (position + 1 == len(order) or t.paths[order[position + 1]].out_block != p.out_block):
            finish(t.placement[p.out_block])


def _column_path(k: _Kernel, t: CouplingVertex, offset: int, p, name: str) -> list[str]:
    """A `uvw` path whose first operand is a kernel argument, as a loop of outer products over its
    channels u: out_k[z, w] += (Σ_ij C_ijk x[z, u, i] y[z, v, j]) · W[u, v, w], with x's column u
    read from memory and W's row as one [1 or rows, w] tile. An FMA tl.dot instead holds both
    operands replicated in registers (fc_tp's kernel spilled 40 bytes on sm_90 that way); the loop
    is not unrolled (tl.static_range: every step's loads were hoisted, 1,512 bytes of spills)."""
    (a_irreps, *rest), (i_a, *i_rest) = t.irreps_in, p.operand_blocks
    a, out = a_irreps[i_a], t.irreps_out[p.out_block]
    start_a, _ = a_irreps.slices()[i_a]
    ch, cm, mask, zero = k.chan(out.mul)
    if t.per is not None:
        k.index(t.per)  # before the loop, so that later paths find it defined
    if rest:
        b = rest[0][i_rest[0]]
        table = wigner_3j(a.ir.l, b.ir.l, out.ir.l)
        channels_v = b.mul
    else:  # o3.Linear: out_i = x_i · W
        channels_v = 1
    acc = [f"{name}_{m}" for m in range(out.ir.dim)]
    for m in acc:
        k.w(f"{m} = {zero}")
    for v in range(channels_v):
        if rest:
            ys = [k.column(t.operands[1], rest[0], i_rest[0], v, j) for j in range(b.ir.dim)]
            # per output component: (coefficient, x component, times which y column) of each product
            products = [[(float(table[i, j, m]), i, f" * {ys[j]}") for i in range(a.ir.dim) for j in range(b.ir.dim)
                         if table[i, j, m] != 0.0] for m in range(out.ir.dim)]
        else:
            products = [[(1.0, m, "")] for m in range(out.ir.dim)]
        k.w(f"for _u in range({a.mul}):")
        k.w.indent()
        for i in sorted({i for terms in products for _, i, _ in terms}):
            k.w(f"{name}_x{i} = tl.load({t.operands[0]} + _rows * {a_irreps.dim} + {start_a + i} + _u * {a.ir.dim}, "
                f"mask=_row_mask, other=0.0)")
        where = f"{p.weight_offset} + _u * {channels_v * out.mul} + {v * out.mul} + {ch}[None, :]"
        k.w(f"{name}_w = {k._load_weights(t, offset, where, mask, f'{cm}[None, :]')}")
        for m, terms in enumerate(products):
            if terms:
                column = " + ".join(f"{c!r} * {name}_x{i}{y}" for c, i, y in terms)
                k.w(f"{acc[m]} += ({column})[:, None] * {name}_w")
        k.w.dedent()
    return [f"{m} * {p.normalization!r}" for m in acc]


def _pair_path(k: _Kernel, t: CouplingVertex, offset: int, p) -> list[str]:
    """A `uvuv` path on the output's channel grid: channel c = u·V + v of component k is
    Σ_ij C_ijk x[u, i] y[v, j] W[u, v], elementwise, with x and y read at u = c // V and v = c % V
    (a 0/1 selection tl.dot per v instead spilled 32–48 bytes of full_tp's registers)."""
    (a_irreps, b_irreps), (i_a, i_b) = t.irreps_in, p.operand_blocks
    a, b, out = a_irreps[i_a], b_irreps[i_b], t.irreps_out[p.out_block]
    ch, cm, mask, _ = k.chan(out.mul)
    x = k.block(t.operands[0], a_irreps, i_a, (f"{ch}_u{b.mul}", f"{ch} // {b.mul}", mask))
    y = k.block(t.operands[1], b_irreps, i_b, (f"{ch}_v{b.mul}", f"{ch} % {b.mul}", mask))
    weights = k._load_weights(t, offset, f"{p.weight_offset} + {ch}[None, :]", mask, f"{cm}[None, :]")
    table = wigner_3j(a.ir.l, b.ir.l, out.ir.l)
    tiles = []
    for m in range(out.ir.dim):
        terms = [(float(table[i, j, m]), f"{x[i]} * {y[j]}") for i in range(a.ir.dim) for j in range(b.ir.dim)
                 if table[i, j, m] != 0.0]
        tiles.append(f"({_terms(terms)}) * {weights} * {p.normalization!r}")
    return tiles


def _matmul(k: _Kernel, t: CouplingVertex, offset: int, tile: str, start: str, rows_in: int, cols_out: int,
            ch_u: str, ch_w: str, cm_u: str, cm_w: str, stride: int | None = None) -> str:
    """tile [BLOCK_Z, u] · W[u, w], W at start + u · stride + w of the term's weights."""
    stride = cols_out if stride is None else stride
    if t.per_row_weights:
        where = f"{start} + {ch_u}[None, :, None] * {stride} + {ch_w}[None, None, :]"
        source = t.weight_source
        if source is not None:
            weights = (f"tl.load({source} + _rows[:, None, None] * {t.weight_numel} + ({where}), "
                       f"mask=_row_mask[:, None, None] & {cm_u}[None, :, None] & {cm_w}[None, None, :], other=0.0)")
        else:
            z = k.index(t.per)
            weights = (f"tl.load(weight + {offset} + {z}[:, None, None] * {t.weight_numel} + ({where}), "
                       f"mask=_row_mask[:, None, None] & {cm_u}[None, :, None] & {cm_w}[None, None, :], other=0.0)")
        return f"tl.sum({tile}[:, :, None] * {weights}, axis=1)"
    weights = (f"tl.load(weight + {offset} + ({start} + {ch_u}[:, None] * {stride} + {ch_w}[None, :]), "
               f"mask={cm_u}[:, None] & {cm_w}[None, :], other=0.0)")
    return f"tl.dot({tile}, {weights}, input_precision='ieee')"


def _emit_launcher(w: CodeWriter, d: Diagram) -> None:
    names = [i.name for i in d.inputs] + ["weight"]
    w(f"def _{d.name}__triton({', '.join(names)}, *constants: torch.Tensor) -> list[torch.Tensor]:")
    w.indent()
    w(f'"""Launch the {d.name} kernel on (n, dim) rows, in the tiles the autotuner picks."""')
    first = next(i for i in d.inputs if i.kind == "irreps")
    w(f"n = {first.name}.shape[0]")
    outs = []
    for v in d.outputs:
        w(f"{v.name}__out = rt.output_rows({first.name}, n, {v.irreps.dim})")
        outs.append(f"{v.name}__out")
    w(f'_grid = lambda meta: (triton.cdiv(n, meta["BLOCK_Z"]), triton.cdiv({channels(d) or 1}, meta["BLOCK_U"]))')
    args = [f"{i.name}.contiguous()" for i in d.inputs] + ["weight.contiguous()"] + outs
    w(f"_{d.name}__kernel[_grid]({', '.join(args)}, n, enable_fp_fusion=True)")
    w(f"return [{', '.join(outs)}]")
    w.dedent()


def _lower(d: Diagram, plan: DiagramPlan) -> tuple[list[str], str | None]:
    """The diagram's fused forward kernel and its launcher; none for a diagram with index spaces,
    whose forward program runs as a table like its derivatives (a launch per space)."""
    if d.spaces:
        return [], None
    w = CodeWriter()
    _emit_kernel(w, d, plan)
    w()
    w()
    _emit_launcher(w, d)
    return w.lines, f"_{d.name}__triton"


def render(ps: ProgramSet) -> str:
    """The generated Triton module of a program set; same input, same bytes."""
    model = ps.machine.gpu_triton
    return emit_module(ps, imports=("import triton", "import triton.language as tl"), forward_kernel=_lower,
                       program_kernel=lambda p: (lower_program(p, model), f"_{p.name}__triton"))

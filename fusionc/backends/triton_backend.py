"""The Triton back end: one fused kernel per diagram, for diagrams whose terms couple channels
one to one (`mix uuu` / `none`: MACE products, fusion blocks, element-wise products).

A program owns a tile of BLOCK_Z rows × BLOCK_U channels and evaluates the whole diagram on it
in registers: every component of every block is one [BLOCK_Z, BLOCK_U] tile, each coupling of
the plan is unrolled over the non-zero entries of its CG table (compile-time constants, zeros
skipped), shared couplings are computed once, per-index weights are gathered inside the kernel,
and recoupled terms map their weights through the exact recoupling matrix in registers.
The kernel is the op's forward; its backward is the VJP of the same diagram's torch row function.
Channel-mixing modes (uvw, uvu, uvuv) are not lowered yet: compiling them is a clear error.
"""

from __future__ import annotations

from fusionc.algebra.cg import wigner_3j
from fusionc.analysis.plan import Contribution, Couple, DiagramPlan, Leaf, WeightedSum
from fusionc.backends.torch_backend import CodeWriter, emit_module
from fusionc.errors import FusionError
from fusionc.ir.diagram import CouplingVertex, Diagram
from fusionc.ir.irreps import Irreps

#: Threads of a warp; each program holds about one element of every live tile per thread.
WARP = 32


def channels(d: Diagram) -> int:
    """The one multiplicity every block of the diagram shares, or a clear error."""
    muls = {b.mul for i in d.inputs if i.kind == "irreps" for b in i.irreps}
    muls |= {b.mul for v in d.values for b in v.irreps}
    for t in d.vertices:
        if t.mode not in ("uuu", "none"):
            raise FusionError(f"the triton back end does not lower mix {t.mode} yet (term {t.id} of "
                              f"diagram {d.name}); use --backend torch", t.span)
    if len(muls) != 1:
        raise FusionError(f"the triton back end needs one multiplicity for every block of diagram {d.name} "
                          f"(found {sorted(muls)}); use --backend torch", None)
    return muls.pop()


def tile_sizes(channels: int) -> tuple[int, int, int]:
    """(BLOCK_Z, BLOCK_U, num_warps): a warp's worth of elements per tile, channels first."""
    block_u = 1
    while block_u < min(channels, WARP):
        block_u *= 2
    return WARP // block_u, block_u, 1


def _terms(coefficients: list[tuple[float, str]]) -> str:
    return " + ".join(f"{c!r} * {x}" for c, x in coefficients) if coefficients else "zero"


class _Kernel:
    """Writes one kernel body: tiles as local variables, named after the plan's nodes."""

    def __init__(self, plan: DiagramPlan, w: CodeWriter) -> None:
        self.plan, self.w = plan, w
        self.components: dict[tuple, list[str]] = {}  # (operand, block) or node name -> tiles
        self.weights: dict[tuple, str] = {}
        self.indices: dict[str, str] = {}

    def block(self, operand: str, irreps: Irreps, index: int) -> list[str]:
        key = (operand, index)
        if key not in self.components:
            start, _ = irreps.slices()[index]
            dim = irreps[index].ir.dim
            names = []
            for m in range(dim):
                name = f"{operand}_{index}_{m}"
                self.w(f"{name} = tl.load({operand} + rows[:, None] * {irreps.dim} + "
                       f"({start + m} + chans[None, :] * {dim}), mask=mask, other=0.0)")
                names.append(name)
            self.components[key] = names
        return self.components[key]

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
            self.w(f"{name}_rows = tl.load({name} + rows, mask=row_mask, other=0)")
            self.indices[name] = f"{name}_rows"
        return self.indices[name]

    def weight(self, t: CouplingVertex, offset: int, start: int) -> str:
        """The tile of the term's weights for the path whose weights start at `start`."""
        key = (t.id, start)
        if key in self.weights:
            return self.weights[key]
        name = f"w_{t.id.replace('.', '_')}_{start}"
        if t.recoupled is not None:  # weights of a recoupled tree: a fixed mix of the canonical ones
            j = start // t.paths[0].weight_shape[0]
            parts = [(v, self._raw_weight(t, offset, t.paths[i].weight_offset)) for i, q, v in t.recoupled.matrix
                     if q == j]
            self.w(f"{name} = {_terms(parts)}")
        else:
            self.w(f"{name} = {self._raw_weight(t, offset, start)}")
        self.weights[key] = name
        return name

    def _raw_weight(self, t: CouplingVertex, offset: int, start: int) -> str:
        if t.weight_source is not None:
            return (f"tl.load({t.weight_source} + rows[:, None] * {t.weight_numel} + ({start} + chans[None, :]), "
                    f"mask=mask, other=0.0)")
        if t.per is not None:
            z = self.index(t.per)
            return (f"tl.load(weight + {offset} + {z}[:, None] * {t.weight_numel} + ({start} + chans[None, :]), "
                    f"mask=mask, other=0.0)")
        return f"tl.load(weight + {offset + start} + chans[None, :], mask=chan_mask[None, :], other=0.0)"

    def scaled(self, tiles: list[str], t: CouplingVertex, offset: int, start: int | None, coeff: float) -> list[str]:
        factor = f"{coeff!r}" if start is None else f"{self.weight(t, offset, start)} * {coeff!r}"
        return [f"{x} * {factor}" for x in tiles]


def _emit_kernel(w: CodeWriter, d: Diagram, plan: DiagramPlan) -> None:
    args = [i.name for i in d.inputs] + ["weight"] + [v.name + "_out" for v in d.outputs]
    w("@triton.jit")
    w(f"def _{d.name}_kernel({', '.join(args)}, n, BLOCK_Z: tl.constexpr, BLOCK_U: tl.constexpr):")
    w.indent()
    mul = channels(d)
    w(f'"""{d.name}: one BLOCK_Z × BLOCK_U tile of rows × channels, the whole diagram in registers."""')
    w("rows = tl.program_id(0) * BLOCK_Z + tl.arange(0, BLOCK_Z)")
    w("chans = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)")
    w("row_mask = rows < n")
    w(f"chan_mask = chans < {mul}")
    w("mask = row_mask[:, None] & chan_mask[None, :]")
    first = next(i for i in d.inputs if i.kind == "irreps")
    w(f"zero = tl.zeros([BLOCK_Z, BLOCK_U], dtype={first.name}.dtype.element_ty)")
    k = _Kernel(plan, w)
    offsets, offset = {}, 0
    for t in d.vertices:
        offsets[t.id] = offset
        offset += t.parameter_numel
    for v in d.values:
        w()
        w(f"# {'out' if v.is_output else 'let'} {v.name} : {v.irreps}")
        sums: dict[int, list[list[str]]] = {b: [] for b in range(len(v.irreps))}
        for t in v.terms:
            w(f"# {t.id}: {t.text}")
            if t.is_tree:
                _tree_term(k, t, offsets[t.id], sums)
            else:
                _path_term(k, t, offsets[t.id], sums)
        for b, parts in sums.items():
            names = []
            for m in range(v.irreps[b].ir.dim):
                name = f"{v.name}_{b}_{m}"
                w(f"{name} = {' + '.join(p[m] for p in parts) if parts else 'zero'}")
                names.append(name)
            k.components[(v.name, b)] = names
            if v.is_output:
                start, _ = v.irreps.slices()[b]
                dim = v.irreps[b].ir.dim
                for m, name in enumerate(names):
                    w(f"tl.store({v.name}_out + rows[:, None] * {v.irreps.dim} + ({start + m} + chans[None, :] * "
                      f"{dim}), {name}, mask=mask)")
    w.dedent()


def _operand_irreps(t: CouplingVertex, operand: str) -> Irreps:
    return next(irreps for op, irreps in zip(t.operands, t.irreps_in) if op == operand)


def _tree_term(k: _Kernel, t: CouplingVertex, offset: int, sums: dict[int, list[list[str]]]) -> None:
    for step in k.plan.vertex_steps[t.id]:
        if isinstance(step, Leaf):
            k.components[step.name] = k.block(step.operand, _operand_irreps(t, step.operand), step.block)
        elif isinstance(step, Couple):
            k.components[step.name] = k.couple(step.name, k.components[step.a], k.components[step.b],
                                               step.la, step.lb, step.k.l)
        elif isinstance(step, WeightedSum):
            parts = [k.scaled(k.components[node], t, offset, start, c) for node, start, c in step.parts]
            names = []
            for m in range(step.ir.dim):
                names.append(f"{step.name}_{m}")
                k.w(f"{step.name}_{m} = {' + '.join(p[m] for p in parts)}")
            k.components[step.name] = names
        elif isinstance(step, Contribution):
            sums[step.block].append(k.scaled(k.components[step.node], t, offset, step.start, step.coeff))


def _path_term(k: _Kernel, t: CouplingVertex, offset: int, sums: dict[int, list[list[str]]]) -> None:
    for n, p in enumerate(t.paths):
        blocks = [k.block(op, irreps, b) for op, irreps, b in zip(t.operands, t.irreps_in, p.operand_blocks)]
        if len(blocks) == 2:
            ls = [irreps[b].ir.l for irreps, b in zip(t.irreps_in, p.operand_blocks)]
            tiles = k.couple(f"{t.id.replace('.', '_')}_p{n}", blocks[0], blocks[1], ls[0], ls[1],
                             t.irreps_out[p.out_block].ir.l)
        else:
            tiles = blocks[0]
        start = p.weight_offset if p.weight_shape else None
        sums[t.placement[p.out_block]].append(k.scaled(tiles, t, offset, start, p.normalization))


def _emit_launcher(w: CodeWriter, d: Diagram) -> None:
    block_z, block_u, warps = tile_sizes(channels(d))
    names = [i.name for i in d.inputs] + ["weight"]
    w(f"def _{d.name}_triton({', '.join(names)}, *constants: torch.Tensor) -> list[torch.Tensor]:")
    w.indent()
    w(f'"""Launch the {d.name} kernel on (n, dim) rows; tiles of {block_z} rows × {block_u} channels."""')
    first = next(i for i in d.inputs if i.kind == "irreps")
    w(f"n = {first.name}.shape[0]")
    outs = []
    for v in d.outputs:
        w(f"{v.name}_out = rt.output_rows({first.name}, n, {v.irreps.dim})")
        outs.append(f"{v.name}_out")
    w(f"grid = (triton.cdiv(n, {block_z}), triton.cdiv({channels(d)}, {block_u}))")
    args = [f"{i.name}.contiguous()" for i in d.inputs] + ["weight.contiguous()"] + outs
    w(f"_{d.name}_kernel[grid]({', '.join(args)}, n, BLOCK_Z={block_z}, BLOCK_U={block_u}, num_warps={warps})")
    w(f"return [{', '.join(outs)}]")
    w.dedent()


def _lower(d: Diagram, plan: DiagramPlan) -> tuple[list[str], str]:
    w = CodeWriter()
    _emit_kernel(w, d, plan)
    w()
    w()
    _emit_launcher(w, d)
    return w.lines, f"_{d.name}_triton"


def emit(diagrams: tuple[Diagram, ...], source: str, filename: str) -> str:
    """The generated Triton module for `diagrams`; same input, same bytes."""
    for d in diagrams:
        channels(d)
    return emit_module(diagrams, source, filename, "triton",
                       imports=("import triton", "import triton.language as tl"), lowering=_lower)

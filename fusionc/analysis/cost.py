"""FLOP counts per row, as opt_einsum counts them for the contraction each path performs."""

from __future__ import annotations

import functools
import itertools

import opt_einsum

from fusionc.algebra.cg import nonzeros
from fusionc.ir.diagram import CouplingPath, CouplingVertex


def path_equation(mode: str, arity: int, per_row: bool) -> str:
    """The einsum a path computes: operands (rows z, channels u/v, components i/j), CG, weights."""
    z = "z" if per_row else ""
    if arity == 1:
        return {"uvw": f"zui,{z}uw->zwi", "uuu": f"zui,{z}u->zui", "none": "zui->zui"}[mode]
    return {"uvw": f"zui,zvj,ijk,{z}uvw->zwk", "uvu": f"zui,zvj,ijk,{z}uv->zuk",
            "uuu": f"zui,zuj,ijk,{z}u->zuk", "uvuv": f"zui,zvj,ijk,{z}uv->zuvk",
            "none": "zui,zuj,ijk->zuk"}[mode]


def _shapes(t: CouplingVertex, p: CouplingPath) -> list[tuple[int, ...]]:
    blocks = [irreps[b] for irreps, b in zip(t.irreps_in, p.operand_blocks)]
    shapes = [(1, b.mul, b.ir.dim) for b in blocks]
    if len(blocks) == 2:
        shapes.append((blocks[0].ir.dim, blocks[1].ir.dim, t.irreps_out[p.out_block].ir.dim))
    if p.weight_shape:
        shapes.append(p.weight_shape)
    return shapes


@functools.lru_cache(maxsize=None)
def _flops(equation: str, shapes: tuple[tuple[int, ...], ...]) -> int:
    if len(shapes) == 1:
        return 0
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")
    return int(info.opt_cost)


def path_flops(t: CouplingVertex, p: CouplingPath) -> int:
    """FLOPs for one row of one path (dense CG), as opt_einsum's optimal order counts them."""
    return _flops(path_equation(t.mode, len(t.operands), False), tuple(_shapes(t, p)))


class _SparseCG(opt_einsum.paths.PathOptimizer):
    """Exhaustive pairwise order for small networks; a CG operand costs its non-zeros only."""

    def __init__(self, density: dict[int, float]) -> None:
        self.density = density

    def __call__(self, inputs, output, size_dict, memory_limit=None):
        best_cost, best_path = None, None
        for path in pair_orders(len(inputs)):
            cost = _order_cost(path, [set(i) for i in inputs], set(output), size_dict, dict(self.density))
            if best_cost is None or cost < best_cost:
                best_cost, best_path = cost, path
        return best_path


@functools.lru_cache(maxsize=None)
def pair_orders(n: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    if n == 1:
        return ((),)
    orders = []
    for i, j in itertools.combinations(range(n), 2):
        for rest in pair_orders(n - 1):
            orders.append(((i, j),) + rest)
    return tuple(orders)


def _order_cost(path, operands: list[set], output: set, sizes: dict, density: dict[int, float]) -> float:
    operands = list(operands)
    dens = [density.get(i, 1.0) for i in range(len(operands))]
    total = 0.0
    for i, j in path:
        a, b = operands[i], operands[j]
        rest = [o for k, o in enumerate(operands) if k not in (i, j)]
        keep = (a | b) & (output | set().union(*rest)) if rest else output
        work = 1
        for index in a | b:
            work *= sizes[index]
        total += 2 * work * dens[i] * dens[j]
        operands = rest + [keep]
        dens = [d for k, d in enumerate(dens) if k not in (i, j)] + [1.0]
    return total


@functools.lru_cache(maxsize=None)
def coupling_cost(mul: int, la: int, lb: int, k: int) -> int:
    """Per-row FLOPs of (a ⊗ b)_k over `mul` channels counting CG non-zeros only: the best pairwise
    order that opt_einsum finds when a CG costs its non-zeros, or one fused pass over the non-zeros
    (out[k] += c · a[i] · b[j]: 3 FLOPs each), whichever is cheaper. The planner compares plans by
    it; the code that runs contracts dense CG blocks (`fusionc.analysis.report` counts those)."""
    shapes = [(mul, 2 * la + 1), (mul, 2 * lb + 1), (2 * la + 1, 2 * lb + 1, 2 * k + 1)]
    nnz = nonzeros(la, lb, k)
    density = nnz / (shapes[2][0] * shapes[2][1] * shapes[2][2])
    path, _ = opt_einsum.contract_path("ui,uj,ijk->uk", *shapes, shapes=True, optimize=_SparseCG({2: density}))
    sizes = {"u": mul, "i": shapes[0][1], "j": shapes[1][1], "k": shapes[2][2]}
    pairwise = _order_cost(path, [set("ui"), set("uj"), set("ijk")], set("uk"), sizes, {2: density})
    return min(3 * nnz * mul, round(pairwise))

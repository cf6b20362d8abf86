"""FLOP counts per row, as opt_einsum counts them for the contraction each path performs."""

from __future__ import annotations

import functools

import opt_einsum

from fusionc.ir.diagram import CouplingPath, CouplingVertex, Diagram


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


def diagram_flops(diagram: Diagram) -> int:
    return sum(path_flops(t, p) for t in diagram.vertices for p in t.paths)

"""Path enumeration and normalisation, in e3nn's instruction order and with e3nn's defaults.

Paths of a two-operand term are ordered lexicographically by (operand-1 block, operand-2 block,
output block), as `FullyConnectedTensorProduct` orders its instructions; each path is scaled by
sqrt(alpha) with irrep normalisation "component" and path normalisation "element".
"""

from __future__ import annotations

from math import sqrt

from fusionc.ir.diagram import CouplingPath
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep


def coupling_weight_shape(mode: str, a: MulIrrep, b: MulIrrep, out: MulIrrep) -> tuple[int, ...]:
    return {"uvw": (a.mul, b.mul, out.mul), "uvu": (a.mul, b.mul), "uuu": (a.mul,),
            "uvuv": (a.mul, b.mul), "none": ()}[mode]


def _coupling_elements(mode: str, a: MulIrrep, b: MulIrrep) -> int:
    """How many products sum into one output element (e3nn's `num_elements`)."""
    return {"uvw": a.mul * b.mul, "uvu": b.mul}.get(mode, 1)


def channel_mismatch(mode: str, a: MulIrrep, b: MulIrrep, out: MulIrrep) -> str | None:
    """Why `mode` cannot map channels a, b to out, or None when it can."""
    if mode == "uvu" and out.mul != a.mul:
        return (f"mix uvu keeps the first operand's channels: {a} has {a.mul} but output block "
                f"{out} has {out.mul}")
    if mode in ("uuu", "none") and not a.mul == b.mul == out.mul:
        return (f"mix {mode} pairs channels one to one: {a}, {b} and output block {out} must have "
                f"the same multiplicity")
    if mode == "uvuv" and out.mul != a.mul * b.mul:
        return (f"mix uvuv keeps every channel pair: output block {out} must have "
                f"{a.mul}×{b.mul} = {a.mul * b.mul} channels")
    return None


def why_not(a: Irrep, b: Irrep, out: Irrep) -> str:
    """The physics' reason a ⊗ b does not contain out."""
    if not abs(a.l - b.l) <= out.l <= a.l + b.l:
        return f"{a} ⊗ {b} cannot give {out}: the triangle rule allows l = {abs(a.l - b.l)}..{a.l + b.l}"
    sign = {1: "+1", -1: "−1"}
    return (f"{a} ⊗ {b} cannot give {out}: parity ({sign[a.p]})({sign[b.p]})={sign[a.p * b.p]}")


def coupling_paths(mode: str, x: Irreps, y: Irreps, out: Irreps) -> list[tuple[int, int, int]]:
    """Every (i1, i2, i_out) whose irreps couple, in e3nn's instruction order."""
    return [(i1, i2, io) for i1, a in enumerate(x) for i2, b in enumerate(y) for io, c in enumerate(out)
            if a.ir.couples(b.ir, c.ir)]


def normalise_coupling(mode: str, x: Irreps, y: Irreps, out: Irreps,
                       triples: list[tuple[int, int, int]]) -> tuple[CouplingPath, ...]:
    """Attach weight shapes, offsets and e3nn's normalisation to enumerated coupling paths."""
    fan_in: dict[int, int] = {}
    for i1, i2, io in triples:
        fan_in[io] = fan_in.get(io, 0) + _coupling_elements(mode, x[i1], y[i2])
    paths, offset = [], 0
    for i1, i2, io in triples:
        shape = coupling_weight_shape(mode, x[i1], y[i2], out[io])
        paths.append(CouplingPath((i1, i2), io, shape, offset, sqrt(out[io].ir.dim / fan_in[io])))
        offset += paths[-1].weight_numel
    return tuple(paths)


def tree_paths(mode: str, target: Irreps, trees) -> tuple[CouplingPath, ...]:
    """Paths of fusion trees with component normalisation: each inner CG of label k scaled by
    sqrt(2k+1), and each output block by sqrt(dim / number of trees reaching it)."""
    fan_in: dict[int, int] = {}
    for t in trees:
        fan_in[t.out_block] = fan_in.get(t.out_block, 0) + 1
    paths, offset = [], 0
    for t in trees:
        out = target[t.out_block]
        inner = 1
        for k in t.inner:
            inner *= k.dim
        shape = (out.mul,) if mode == "uuu" else ()
        paths.append(CouplingPath(t.blocks, t.out_block, shape, offset, sqrt(inner * out.ir.dim / fan_in[t.out_block]),
                                  t.inner))
        offset += paths[-1].weight_numel
    return tuple(paths)


def linear_paths(mode: str, x: Irreps, out: Irreps) -> tuple[CouplingPath, ...]:
    """Paths of an equivariant linear map (e3nn `o3.Linear` for uvw), in (i_in, i_out) order."""
    pairs = [(i, o) for i, a in enumerate(x) for o, b in enumerate(out) if a.ir == b.ir]
    fan_in: dict[int, int] = {}
    for i, o in pairs:
        fan_in[o] = fan_in.get(o, 0) + (x[i].mul if mode == "uvw" else 1)
    paths, offset = [], 0
    for i, o in pairs:
        shape = {"uvw": (x[i].mul, out[o].mul), "uuu": (x[i].mul,), "none": ()}[mode]
        paths.append(CouplingPath((i,), o, shape, offset, 1 / sqrt(fan_in[o])))
        offset += paths[-1].weight_numel
    return tuple(paths)

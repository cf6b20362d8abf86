"""The recoupling pass: rewrite a fusion-tree term into the shape that pairs its last two
operands first, ((x1 ⊗ x2)_k ⊗ x3)_l = Σ_k' F(k, k') (x1 ⊗ (x2 ⊗ x3)_k')_l, when the cost model
says that shape is cheaper. The weights stay in the canonical basis; the generated code maps
them through the exact recoupling matrix, so the function is unchanged."""

from __future__ import annotations

from dataclasses import replace

from fusionc.algebra.recoupling import recoupling_value
from fusionc.analysis.plan import term_cost
from fusionc.ir.diagram import CouplingPath, CouplingVertex, Diagram, Recoupled


def recouple_vertex(t: CouplingVertex) -> CouplingVertex:
    """`t` with its split-shape form attached (for three or more distinct operands)."""
    assert len(t.operands) >= 3 and len(set(t.keys)) == len(t.operands)
    index: dict[tuple, int] = {}
    entries: dict[tuple[int, int], float] = {}
    for i, p in enumerate(t.paths):
        blocks = [irreps[b].ir for irreps, b in zip(t.irreps_in, p.operand_blocks)]
        out = t.irreps_out[p.out_block].ir
        a = blocks[0] if len(blocks) == 3 else p.inner[-2]
        k, left, right = p.inner[-1], blocks[-2], blocks[-1]
        for c in left * right:
            if not abs(a.l - c.l) <= out.l <= a.l + c.l:
                continue
            f = recoupling_value(a.l, left.l, right.l, out.l, k.l, c.l)
            if f == 0.0:
                continue
            key = (p.operand_blocks, p.inner[:-1] + (c,), p.out_block)
            j = index.setdefault(key, len(index))
            entries[(i, j)] = entries.get((i, j), 0.0) + p.normalization * f
    mul = t.paths[0].weight_shape
    ordered = sorted(index)
    renumber = {index[key]: n for n, key in enumerate(ordered)}
    size = mul[0] if mul else 0
    paths = tuple(CouplingPath(blocks, out, mul, n * size, 1.0, inner)
                  for n, (blocks, inner, out) in enumerate(ordered))
    matrix = tuple(sorted((i, renumber[j], v) for (i, j), v in entries.items()))
    return replace(t, recoupled=Recoupled(paths, matrix))


def recouple(diagram: Diagram) -> Diagram:
    """Recouple each term of three or more distinct operands whose split shape costs less."""
    values = []
    for v in diagram.values:
        terms = []
        for t in v.terms:
            if t.is_tree and len(t.operands) >= 3 and len(set(t.keys)) == len(t.operands):
                split = recouple_vertex(t)
                if term_cost(split) < term_cost(t):
                    t = split
            terms.append(t)
        values.append(replace(v, terms=tuple(terms)))
    return diagram.replace_values(tuple(values))

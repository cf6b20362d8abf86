"""Pruning: drop coupling paths whose output block nothing downstream reads."""

from __future__ import annotations

from dataclasses import replace

from fusionc.ir.diagram import CouplingVertex, Diagram


def _read_blocks(diagram: Diagram) -> dict[str, set[int]]:
    read: dict[str, set[int]] = {}
    for t in diagram.vertices:
        for op, blocks in zip(t.operands, zip(*(p.operand_blocks for p in t.paths))):
            read.setdefault(op, set()).update(blocks)
    return read


def _without_dead_paths(t: CouplingVertex, live: set[int]) -> CouplingVertex:
    kept = [p for p in t.paths if t.placement[p.out_block] in live]
    if len(kept) == len(t.paths):
        return t
    paths, offset = [], 0
    for p in kept:
        paths.append(replace(p, weight_offset=offset))
        offset += p.weight_numel
    return replace(t, paths=tuple(paths))


def prune(diagram: Diagram) -> Diagram:
    """Remove paths into `let` blocks that no path reads, until nothing changes."""
    while True:
        read = _read_blocks(diagram)
        values = []
        for v in diagram.values:
            live = set(range(len(v.irreps))) if v.is_output else read.get(v.name, set())
            values.append(replace(v, terms=tuple(_without_dead_paths(t, live) for t in v.terms)))
        pruned = diagram.replace_values(tuple(values))
        if pruned == diagram:
            return diagram
        diagram = pruned

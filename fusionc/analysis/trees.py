"""Fusion trees: enumeration in the canonical left-associative shape, and symmetrisation.

A tree couples one block of each operand, left to right: ((x1 ⊗ x2)_k1 ⊗ x3)_k2 … → out. For
distinct operands the trees over all inner labels are a basis of the equivariant maps. When an
operand repeats, the block spans only the symmetric part: trees are enumerated with the blocks
of each repeated operand in non-decreasing order, and those that become linearly dependent on
the diagonal x ⊗ x ⊗ … are removed, leaving exactly as many as the symmetric power allows
(checked against a count by characters).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from fusionc.algebra.cg import wigner_3j
from fusionc.algebra.characters import symmetric_multiplicity
from fusionc.analysis.cost import coupling_cost
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep

_INDEPENDENCE_TOLERANCE = 1e-8


@dataclass(frozen=True)
class Tree:
    """One fusion tree: a block of each operand, the inner labels k1.., and the output block."""

    blocks: tuple[int, ...]
    inner: tuple[Irrep, ...]
    out_block: int


def canonical_order(names: tuple[str, ...]) -> tuple[str, ...]:
    """Operands with equal names made adjacent, groups in order of first appearance.

    The trees of any operand order span the same maps, so fuse(A, B, A) is fuse(A, A, B).
    """
    return tuple(n for first in dict.fromkeys(names) for n in names if n == first)


def _groups(names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal names in a canonical operand list."""
    runs, start = [], 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            runs.append((start, i))
            start = i
    return runs


class TooManyTrees(Exception):
    """More trees than the caller's bound: enumeration stops there rather than run on."""


class LabelTooLarge(Exception):
    """A tree needs an inner label of a degree above the caller's bound (its CG tables would cost
    more than the bound allows); `args[0]` is the degree."""


def enumerate_trees(names: tuple[str, ...], irreps: tuple[Irreps, ...], target: Irreps,
                    lmax: int | None = None, ordered: bool = True, bound: int | None = None,
                    max_label: int | None = None) -> list[Tree]:
    """All left-associative trees reaching a block of `target`, in lexicographic order of
    (blocks, inner labels, output block); with `ordered`, the blocks of a repeated operand are
    non-decreasing (one ordering of each multiset). Raises `TooManyTrees` past `bound` trees and
    `LabelTooLarge` for a tree with an inner label above `max_label`."""
    n = len(irreps)
    wanted = {b.ir for b in target}

    @functools.lru_cache(maxsize=None)
    def reachable(position: int, label: Irrep) -> frozenset[Irrep]:
        """Irreps reachable from `label` after coupling operands position..n-1."""
        if position == n:
            return frozenset([label])
        out = set()
        for b in irreps[position]:
            for k in label * b.ir:
                if position == n - 1 or lmax is None or k.l <= lmax:
                    out |= reachable(position + 1, k)
        return frozenset(out)

    group_of = {}
    for g, (start, stop) in enumerate(_groups(names)):
        for i in range(start, stop):
            group_of[i] = (g, start)
    trees = []
    for blocks in itertools.product(*(range(len(irr)) for irr in irreps)):
        if ordered and any(i > group_of[i][1] and blocks[i] < blocks[i - 1] for i in range(n)):
            continue

        def extend(position: int, label: Irrep, inner: tuple[Irrep, ...]) -> None:
            if position == n:
                trees.extend(Tree(blocks, inner[:-1], o) for o, b in enumerate(target) if b.ir == label)
                if bound is not None and len(trees) > bound:
                    raise TooManyTrees
                return
            for k in label * irreps[position][blocks[position]].ir:
                last = position == n - 1
                if (last or lmax is None or k.l <= lmax) and reachable(position + 1, k) & wanted:
                    if max_label is not None and k.l > max_label:
                        raise LabelTooLarge(k.l)
                    extend(position + 1, k, inner + (k,))

        extend(1, irreps[0][blocks[0]].ir, ())
    return sorted(trees, key=lambda t: (t.blocks, t.inner, t.out_block))


def tree_tensor_values(irreps: tuple[Irreps, ...], tree: Tree, target: Irreps,
                       samples: dict[tuple[int, int], np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """The tree's output on sampled operand blocks (same sample for the same name and block)."""
    first = samples[(names.index(names[0]), tree.blocks[0])]
    value = first
    labels = list(tree.inner) + [target[tree.out_block].ir]
    current = irreps[0][tree.blocks[0]].ir
    for position in range(1, len(irreps)):
        block = irreps[position][tree.blocks[position]]
        x = samples[(names.index(names[position]), tree.blocks[position])]
        k = labels[position - 1]
        value = np.einsum("mi,mj,ijk->mk", value, x, wigner_3j(current.l, block.ir.l, k.l))
        current = k
    return value


def _independent(group: list[Tree], names, irreps, target, rng: np.random.Generator) -> list[Tree]:
    """The trees of `group` (one block tuple, one output block) that are linearly independent on
    the diagonal, chosen greedily in order."""
    m = 4 + 2 * len(group)
    blocks = group[0].blocks
    samples = {}
    for i, b in enumerate(blocks):
        key = (names.index(names[i]), b)
        if key not in samples:
            samples[key] = rng.normal(size=(m, irreps[i][b].ir.dim))
    values = [tree_tensor_values(irreps, t, target, samples, names).ravel() for t in group]
    # a tree that vanishes on the diagonal does so up to rounding; with unit-normal samples and
    # unit-norm CG tables a tree that does not is of order sqrt(m)
    scale = max([np.linalg.norm(v) for v in values] + [np.sqrt(m)])
    basis: list[np.ndarray] = []
    keep = []
    for t, v in zip(group, values):
        r = v.copy()
        for _ in range(2):  # Gram–Schmidt twice for stability
            for q in basis:
                r -= (q @ r) * q
        if np.linalg.norm(r) > _INDEPENDENCE_TOLERANCE * scale:
            basis.append(r / np.linalg.norm(r))
            keep.append(t)
    return keep


def _trees_cost(trees: list[Tree], irreps: tuple[Irreps, ...], target: Irreps) -> int:
    """Per-channel FLOPs of evaluating `trees` with shared prefixes (sparse couplings)."""
    couplings = set()
    for t in trees:
        labels = list(t.inner) + [target[t.out_block].ir]
        current, prefix = irreps[0][t.blocks[0]].ir, (t.blocks[0],)
        for position in range(1, len(t.blocks)):
            b = irreps[position][t.blocks[position]].ir
            prefix = prefix + (t.blocks[position], labels[position - 1])
            couplings.add((prefix, current.l, b.l, labels[position - 1].l))
            current = labels[position - 1]
    return sum(coupling_cost(1, la, lb, k) for _, la, lb, k in couplings)


def symmetric_trees(names: tuple[str, ...], irreps: tuple[Irreps, ...], target: Irreps,
                    lmax: int | None = None, seed: int = 0, bound: int | None = None,
                    max_label: int | None = None) -> list[Tree]:
    """For a repeated operand, a basis of the symmetric maps made of trees; else every tree.

    Trees of different block multisets are polynomials in different variables, so each
    multiset is treated alone: of the orderings of its blocks (each spans the same maps), the
    one whose independent trees cost least is kept, ties going to the sorted ordering.
    """
    if len(set(names)) == len(names):
        return enumerate_trees(names, irreps, target, lmax, bound=bound, max_label=max_label)
    rng = np.random.default_rng(seed)
    every = enumerate_trees(names, irreps, target, lmax, ordered=False, bound=bound, max_label=max_label)
    by_multiset: dict[tuple, dict[tuple, list[Tree]]] = {}
    for t in every:
        key = (_multiset(names, t.blocks), t.out_block)
        by_multiset.setdefault(key, {}).setdefault(t.blocks, []).append(t)
    keep: list[Tree] = []
    for _, orderings in sorted(by_multiset.items()):
        best = None
        for blocks in sorted(orderings):
            chosen = _independent(orderings[blocks], names, irreps, target, rng)
            cost = _trees_cost(chosen, irreps, target)
            if best is None or len(chosen) > len(best[1]) or (len(chosen) == len(best[1]) and cost < best[0]):
                best = (cost, chosen)
        keep.extend(best[1])
    if lmax is None:
        _check_count(names, irreps, target, keep)
    return sorted(keep, key=lambda t: (t.blocks, t.inner, t.out_block))


def _multiset(names: tuple[str, ...], blocks: tuple[int, ...]) -> tuple:
    """The blocks with each repeated operand's blocks sorted: equal for reorderings."""
    return tuple(tuple(sorted(blocks[start:stop])) for start, stop in _groups(names))


def _check_count(names, irreps, target, kept: list[Tree]) -> None:
    # channels couple one to one, so each channel is one copy of every block
    factors = [(Irreps(tuple(MulIrrep(1, b.ir) for b in irreps[start])), stop - start)
               for start, stop in _groups(names)]
    for o, block in enumerate(target):
        expected = symmetric_multiplicity(factors, block.ir)
        found = sum(1 for t in kept if t.out_block == o)
        assert found == expected, f"symmetrisation kept {found} trees for {block.ir}, expected {expected}"

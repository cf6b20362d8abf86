"""Helpers shared by the tests and by users: random diagrams and a numerical equivariance check.

>>> src = random_diagram(0, "uvw")
>>> src.startswith("diagram random_uvw_0")
True
"""

from __future__ import annotations

import random

import numpy as np
import torch

from fusionc.algebra.rotations import random_rotation, representation
from fusionc.analysis.trees import canonical_order, symmetric_trees
from fusionc.ir.diagram import Diagram
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep


def _random_irreps(rng: random.Random, lmax: int, muls: list[int], n_blocks: int) -> Irreps:
    irreps = sorted({Irrep(rng.randint(0, lmax), rng.choice((1, -1))) for _ in range(n_blocks)})
    return Irreps(tuple(MulIrrep(rng.choice(muls), ir) for ir in irreps))


def random_two_input(seed: int, mode: str, lmax: int = 4, max_mul: int = 16) -> tuple[Irreps, Irreps, Irreps]:
    """Random irreps (x, y, out) for which `fuse(x, y) mix mode` is well typed and every output
    block is reachable: multiplicities fit the mode and out keeps only what x ⊗ y contains."""
    rng = random.Random(seed)
    while True:
        x = _random_irreps(rng, lmax, list(range(1, max_mul + 1)), rng.randint(1, 4))
        same = [x[0].mul] if mode in ("uuu", "none") else list(range(1, max_mul + 1))
        if mode in ("uuu", "none"):
            x = Irreps(tuple(MulIrrep(same[0], b.ir) for b in x))
        y = _random_irreps(rng, lmax, same if mode in ("uuu", "none") else [1, 2, 3, 4] + same[:4], rng.randint(1, 4))
        reachable = sorted({ir for a in x for b in y for ir in a.ir * b.ir})
        chosen = sorted(rng.sample(reachable, k=min(len(reachable), rng.randint(1, 5))))
        out = []
        for ir in chosen:
            feeders = [(a, b) for a in x for b in y if a.ir.couples(b.ir, ir)]
            muls = {"uvw": rng.randint(1, max_mul), "uvu": feeders[0][0].mul, "uuu": feeders[0][0].mul,
                    "none": feeders[0][0].mul, "uvuv": feeders[0][0].mul * feeders[0][1].mul}[mode]
            if mode in ("uvu", "uvuv") and any({"uvu": a.mul, "uvuv": a.mul * b.mul}[mode] != muls
                                               for a, b in feeders):
                continue
            out.append(MulIrrep(muls, ir))
        if out:
            return x, y, Irreps(tuple(out))


def random_diagram(seed: int, mode: str, lmax: int = 4, max_mul: int = 16, by: bool = False) -> str:
    """The `.fus` source of a random two-input diagram `z = fuse(x, y) mix mode`."""
    x, y, out = random_two_input(seed, mode, lmax, max_mul)
    weights = "\n    in  w : weights" if by else ""
    mix = f"mix {mode}" + (" by w" if by else "")
    return (f"diagram random_{mode}_{seed} {{\n    in  x : {x}\n    in  y : {y}{weights}\n"
            f"    out z : {out}\n    z = fuse(x, y) {mix}\n}}\n")


_NARY_NAMES = ("A", "B", "C", "D")


def _nary_operands(rng: random.Random) -> tuple[str, ...]:
    """Operand names of a random fusion of 2–4 operands; two operands always repeat one name
    (else the term would be a plain tensor product), more repeat one sometimes, in any order."""
    n = rng.randint(2, 4)
    if n == 2:
        return ("A", "A")
    if rng.random() < 0.6:
        return _NARY_NAMES[:n]
    distinct = rng.randint(1, n - 1)
    names = list(_NARY_NAMES[:distinct]) + [rng.choice(_NARY_NAMES[:distinct]) for _ in range(n - distinct)]
    rng.shuffle(names)
    return tuple(names)


def random_nary_diagram(seed: int, lmax: int = 3) -> str:
    """The `.fus` source of a random fusion-tree diagram `y = fuse(...) mix uuu|none [per z]`.

    2–4 operands (two operands are always a repeated one, `fuse(A, A)`; more sometimes repeat,
    in any order, e.g. `fuse(A, B, A)`), O(3) irreps of degree at most `lmax` (at most 2 with four
    operands, to stay small) with one multiplicity 1–4 for every block, mode `uuu` or `none`,
    sometimes `; lmax=N` on the inner labels (three or more operands) and, for `uuu`, sometimes
    `per z` with `in z : index(K)`. The output keeps 1–3 irreps that the trees reach (after the
    symmetrisation of repeated operands), so every seed compiles; the same seed gives the same text.

    >>> src = random_nary_diagram(11)
    >>> print(src, end="")
    diagram random_nary_11 {
        in  B : 2x0o+2x2e+2x3e
        in  A : 2x0e+2x1e
        out y : 2x0e+2x1e+2x2o
        y = fuse(B, A, B) mix none
    }
    >>> from fusionc.pipeline import compile_source
    >>> [(t.operands, len(t.paths)) for t in compile_source(src)[0].vertices]
    [(('B', 'B', 'A'), 15)]
    """
    rng = random.Random(seed)
    while True:
        names = _nary_operands(rng)
        n = len(names)
        mul = rng.randint(1, 4)
        max_l = min(lmax, 2) if n == 4 else lmax
        irreps = {name: _random_irreps(rng, max_l, [mul], rng.randint(1, 3 if n < 4 else 2))
                  for name in dict.fromkeys(names)}
        bound = rng.randint(min(1, 2 * max_l), 2 * max_l) if n >= 3 and rng.random() < 0.3 else None
        canonical = canonical_order(names)
        candidates = Irreps(tuple(MulIrrep(mul, Irrep(l, p)) for l in range(lmax + 1) for p in (1, -1)))
        trees = symmetric_trees(canonical, tuple(irreps[m] for m in canonical), candidates, bound)
        reachable = sorted({candidates[t.out_block].ir for t in trees})
        if not reachable:
            continue
        chosen = rng.sample(reachable, rng.randint(1, min(3, len(reachable))))
        out = Irreps(tuple(MulIrrep(mul, ir) for ir in sorted(chosen)))
        mode = rng.choice(("uuu", "none"))
        sets = rng.randint(2, 3) if mode == "uuu" and rng.random() < 0.5 else None
        lines = [f"diagram random_nary_{seed} {{"]
        lines += [f"    in  {name} : {ir}" for name, ir in irreps.items()]
        if sets:
            lines.append(f"    in  z : index({sets})")
        lines.append(f"    out y : {out}")
        option = f"; lmax={bound}" if bound is not None else ""
        mix = f" mix {mode}" + (" per z" if sets else "")
        lines.append(f"    y = fuse({', '.join(names)}{option}){mix}")
        return "\n".join(lines) + "\n}\n"


def random_inputs(module: torch.nn.Module, diagram: Diagram, batch: int, generator: torch.Generator,
                  dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Random arguments for `module`, in the order of the diagram's `in` declarations: `batch` rows,
    or in a diagram with index spaces `batch` rows in its first space, 3 × batch in its second, ….
    An index into a space's rows takes every value but the last row's (a row that no index picks)."""
    rows = {space: batch * (1 + 2 * k) for k, space in enumerate(diagram.spaces)}
    args = []
    for i in diagram.inputs:
        n = rows[i.space] if i.space else batch
        if i.kind == "irreps":
            args.append(torch.randn(n, i.irreps.dim, generator=generator, dtype=dtype))
        elif i.kind == "weights":
            args.append(torch.randn(n, module.input_weight_numel[i.name], generator=generator, dtype=dtype))
        else:
            args.append(torch.randint(0, i.size or max(rows[i.points] - 1, 1), (n,), generator=generator))
    return args


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def equivariance_error(module: torch.nn.Module, diagram: Diagram, *, seed: int = 0, rotations: int = 3,
                       batch: int = 4) -> float:
    """Largest relative error of f(D x) = D f(x) over random rotations (and the inversion, for O(3)),
    in float64, with the representations built independently of the CG tables. The inputs are of
    order one, so an output smaller than one is held to the absolute error: one that symmetry makes
    zero (a 2e from 1e ⊗ 1e ⊗ 1e) is rounding noise, whose error relative to itself is about 1."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if any(t.dtype != torch.float64 for t in tensors):
        module = module.double()
    rng = np.random.default_rng(seed)
    args = random_inputs(module, diagram, batch, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outs = _as_tuple(module(*args))
        worst = 0.0
        inversions = (False, True) if diagram.group == "O3" else (False,)
        for _ in range(rotations):
            rotation = random_rotation(rng)
            for inversion in inversions:
                def act(irreps: Irreps, x: torch.Tensor) -> torch.Tensor:
                    return x @ torch.from_numpy(representation(irreps, rotation, inversion)).T
                moved = [act(i.irreps, a) if i.kind == "irreps" else a for i, a in zip(diagram.inputs, args)]
                outs_moved = _as_tuple(module(*moved))
                for v, o, om in zip(diagram.outputs, outs, outs_moved):
                    scale = max(o.abs().max().item(), 1.0)
                    worst = max(worst, (om - act(v.irreps, o)).abs().max().item() / scale)
    return worst


def assert_equivariant(module: torch.nn.Module, diagram: Diagram, tol: float = 1e-10, **kwargs) -> float:
    """Raise AssertionError unless `module` is equivariant to `tol`; returns the error."""
    error = equivariance_error(module, diagram, **kwargs)
    assert error < tol, f"{diagram.name}: equivariance error {error:.3g} exceeds {tol:.0e}"
    return error

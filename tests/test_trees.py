"""Fusion trees: n-ary and symmetric fusion, the contraction planner, and their derivatives.

- 20 random n-ary diagrams (`fusionc.testing.random_nary_diagram`, seeds 0..19) are equivariant
  to 1e-10 in float64, as `fusionc check --numeric` checks;
- an independent dense float64 reference evaluates every path of the IR on its own — the CG
  chain ((x1 ⊗ x2)_k1 ⊗ x3)_k2 … with `numpy.einsum` over dense `wigner_3j` tables, times the
  path's weights (per-index weights selected by the index input) and normalisation — and must
  match the compiled module, whose planner shares couplings and sums weighted prefixes;
- the number of symmetric trees per output irrep of `fuse(A, …, A)` equals the count by
  characters and, independently, the numerical rank of all (unordered) trees on the diagonal;
- `fusionc check --explain` shows the chosen plan of `mace_product` at least 5× below the naive one;
- gradcheck and gradgradcheck of small tree terms; `fuse(A, B, A)` is `fuse(A, A, B)`.

The quick subset (`pytest -m "not slow"`) keeps seeds 0..4, the smaller kernels and one tree's derivatives.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

import fusionc
from conftest import slow_unless
from fusionc.algebra import wigner_3j
from fusionc.algebra.characters import symmetric_multiplicity
from fusionc.analysis.trees import enumerate_trees
from fusionc.cli import main
from fusionc.ir.diagram import CouplingPath, CouplingVertex, Diagram
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep
from fusionc.pipeline import compile_source
from fusionc.testing import assert_equivariant, random_inputs, random_nary_diagram

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
SEEDS = slow_unless(range(20), lambda s: s < 5)  # the modules are shared by both tests of a seed
REFERENCE_TOLERANCE = 1e-10


@functools.lru_cache(maxsize=None)
def _ops(source: str):
    return fusionc.loads(source)


def compiled(source: str, name: str | None = None) -> tuple[torch.nn.Module, Diagram]:
    """A float64 module of the (only, or named) diagram of `source`, and its IR."""
    ops = _ops(source)
    diagram = next(d for d in ops.diagrams if name is None or d.name == name)
    return getattr(ops, diagram.name)(dtype=torch.float64), diagram


# --------------------------------------------------------------------------- the dense reference


def _block(x: np.ndarray, irreps: Irreps, b: int) -> np.ndarray:
    """Block b of rows x as an (n, mul, 2l+1) array."""
    start, stop = irreps.slices()[b]
    return x[:, start:stop].reshape(len(x), irreps[b].mul, irreps[b].ir.dim)


def _term_weights(t: CouplingVertex, parameters: np.ndarray, env: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """The term's weights as an (n, weight_numel) array: per row, from the index or the input."""
    if not t.has_weights:
        return None
    if t.weight_source is not None:
        return np.broadcast_to(env[t.weight_source], (n, t.weight_numel))
    if t.per is not None:
        return parameters.reshape(t.weight_sets, t.weight_numel)[env[t.per]]
    return np.broadcast_to(parameters, (n, t.weight_numel))


def _path_value(t: CouplingVertex, p: CouplingPath, xs: list[np.ndarray], w: np.ndarray | None) -> np.ndarray:
    """One path, densely: (n, mul_out, 2l_out+1), normalisation and weights included."""
    n = xs[0].shape[0]
    pw = None if w is None else w[:, p.weight_offset:p.weight_offset + p.weight_numel].reshape(n, *p.weight_shape)
    out = t.irreps_out[p.out_block]
    if len(t.operands) == 1:  # a linear map
        y = {"uvw": lambda: np.einsum("nui,nuw->nwi", xs[0], pw), "uuu": lambda: xs[0] * pw[..., None],
             "none": lambda: xs[0]}[t.mode]()
        return p.normalization * y
    if t.is_tree:  # ((x1 ⊗ x2)_k1 ⊗ x3)_k2 … -> out, channel by channel
        labels = list(p.inner) + [out.ir]
        y, current = xs[0], t.irreps_in[0][p.operand_blocks[0]].ir
        for position in range(1, len(xs)):
            l = t.irreps_in[position][p.operand_blocks[position]].ir.l
            y = np.einsum("nui,nuj,ijk->nuk", y, xs[position], wigner_3j(current.l, l, labels[position - 1].l))
            current = labels[position - 1]
        return p.normalization * (y if pw is None else y * pw[..., None])
    a, b = (irr[i] for irr, i in zip(t.irreps_in, p.operand_blocks))
    cg = wigner_3j(a.ir.l, b.ir.l, out.ir.l)
    y = {"uvw": lambda: np.einsum("nui,nvj,ijk,nuvw->nwk", *xs, cg, pw),
         "uvu": lambda: np.einsum("nui,nvj,ijk,nuv->nuk", *xs, cg, pw),
         "uuu": lambda: np.einsum("nui,nuj,ijk,nu->nuk", *xs, cg, pw),
         "none": lambda: np.einsum("nui,nuj,ijk->nuk", *xs, cg),
         "uvuv": lambda: np.einsum("nui,nvj,ijk,nuv->nuvk", *xs, cg, pw).reshape(n, a.mul * b.mul, -1)}[t.mode]()
    return p.normalization * y


def reference(diagram: Diagram, weight: np.ndarray, args: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every input and value of `diagram` on rows `args`, path by path from the IR."""
    env = {i.name: a for i, a in zip(diagram.inputs, args)}
    n = next(len(a) for i, a in zip(diagram.inputs, args) if i.kind == "irreps")
    offset = 0
    for value in diagram.values:
        out = np.zeros((n, value.irreps.dim))
        slices = value.irreps.slices()
        for t in value.terms:
            w = _term_weights(t, weight[offset:offset + t.parameter_numel], env, n)
            offset += t.parameter_numel
            for p in t.paths:
                xs = [_block(env[op], irreps, b) for op, irreps, b in zip(t.operands, t.irreps_in, p.operand_blocks)]
                start, stop = slices[t.placement[p.out_block]]
                out[:, start:stop] += _path_value(t, p, xs, w).reshape(n, -1)
        env[value.name] = out
    assert offset == diagram.internal_weight_numel
    return env


def assert_matches_reference(module: torch.nn.Module, diagram: Diagram, batch: int, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64))
        args = random_inputs(module, diagram, batch, generator)
        outs = module(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    env = reference(diagram, module.weight.detach().numpy(), [a.numpy() for a in args])
    for v, o in zip(diagram.outputs, outs):
        expected = env[v.name]
        error = np.abs(o.numpy() - expected).max() / max(np.abs(expected).max(), 1e-300)
        assert error <= REFERENCE_TOLERANCE, f"{diagram.name}.{v.name}: relative error {error:.3g}"


# --------------------------------------------------------------------------- random n-ary diagrams


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_nary_equivariant(seed: int) -> None:
    assert_equivariant(*compiled(random_nary_diagram(seed)), tol=1e-10)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_nary_matches_dense_reference(seed: int) -> None:
    module, diagram = compiled(random_nary_diagram(seed))
    assert_matches_reference(module, diagram, batch=5, seed=seed)


KERNEL_DIAGRAMS = [("fusion_block.fus", "fusion_block"), ("fusion_block.fus", "fusion_block_3"),
                   ("mace_product.fus", "mace_product"), ("mace_product.fus", "mace_product_2"),
                   ("mace_product.fus", "mace_product_4")]


@pytest.mark.parametrize("file, name", slow_unless(KERNEL_DIAGRAMS, lambda case: case[0] != "fusion_block.fus"),
                         ids=[name for _, name in KERNEL_DIAGRAMS])
def test_kernel_matches_dense_reference(file: str, name: str) -> None:
    module, diagram = compiled((KERNELS / file).read_text(), name)
    assert_matches_reference(module, diagram, batch=3)


# --------------------------------------------------------------------------- symmetric counts


def _couple(y: np.ndarray, x: np.ndarray, l1: int, l2: int, k: int) -> np.ndarray:
    """(y ⊗ x)_k sample by sample: (m, 2l1+1), (m, 2l2+1) -> (m, 2k+1), densely."""
    outer = (y[:, :, None] * x[:, None, :]).reshape(len(y), -1)
    return outer @ wigner_3j(l1, l2, k).reshape(outer.shape[1], -1)


def symmetric_rank(v: Irreps, power: int, out: Irrep, seed: int = 0) -> int:
    """The number of independent maps Sym^power(V) -> out that fusion trees give: the numerical
    rank of every (unordered) tree of fuse(A, …, A) evaluated on the diagonal at random A's."""
    target = Irreps((MulIrrep(1, out),))
    trees = enumerate_trees(("A",) * power, (v,) * power, target, ordered=False)
    if not trees:
        return 0
    # r ≤ m independent maps stay independent on m generic samples, so a rank below m is exact
    m = min(len(trees), 60) + 4
    samples = np.random.default_rng(seed).normal(size=(m, v.dim))
    xs = [samples[:, start:stop] for start, stop in v.slices()]
    prefixes: dict[tuple, np.ndarray] = {}  # (blocks, labels) of a left chain -> its values

    def value(blocks: tuple[int, ...], labels: tuple[Irrep, ...]) -> np.ndarray:
        if len(blocks) == 1:
            return xs[blocks[0]]
        key = (blocks, labels)
        if key not in prefixes:
            current = labels[-2].l if len(labels) > 1 else v[blocks[0]].ir.l
            prefixes[key] = _couple(value(blocks[:-1], labels[:-1]), xs[blocks[-1]], current,
                                    v[blocks[-1]].ir.l, labels[-1].l)
        return prefixes[key]

    matrix = np.stack([value(t.blocks, t.inner + (out,)).ravel() for t in trees])
    s = np.linalg.svd(matrix, compute_uv=False)
    # trees that vanish on the diagonal do so up to rounding; the others are of order one per entry
    scale = max(s[0], np.sqrt(matrix.shape[1]))
    rank = int(np.sum(s > 1e-9 * scale))
    assert rank == len(s) or s[rank] < 1e-12 * scale, f"no clear rank gap: {s / scale}"
    assert rank == 0 or s[rank - 1] > 1e-6 * scale, f"no clear rank gap: {s / scale}"
    assert rank < m
    return rank


V_SETS = ["0e", "1o", "0e+1o", "1o+2e", "0e+1o+2e", "2e+3o", "0e+1o+2e+3o"]
SYMMETRIC_CASES = [(v, nu) for v in V_SETS for nu in (1, 2, 3, 4)
                   if nu < 4 or max(b.ir.l for b in Irreps.parse(v)) <= 2]
QUICK_SYMMETRIC_CASES = slow_unless(SYMMETRIC_CASES, lambda case: case[1] < 4 or "+" not in case[0])


@pytest.mark.parametrize("v, nu", QUICK_SYMMETRIC_CASES, ids=[f"{v}-nu{nu}" for v, nu in SYMMETRIC_CASES])
def test_symmetric_tree_counts(v: str, nu: int) -> None:
    irreps = Irreps.parse(v)
    lout = min(nu * max(b.ir.l for b in irreps), 4)
    candidates = [Irrep(l, p) for l in range(lout + 1) for p in (1, -1)]
    expected = {ir: symmetric_multiplicity([(irreps, nu)], ir) for ir in candidates}
    for ir in candidates:  # the count by characters, checked by the rank of the trees themselves
        assert symmetric_rank(irreps, nu, ir) == expected[ir], f"Sym^{nu}({v}) -> {ir}"
    out = Irreps(tuple(MulIrrep(1, ir) for ir in candidates if expected[ir]))
    term = f"fuse({', '.join(['A'] * nu)}) mix uuu" if nu > 1 else "A mix uuu"
    (diagram,) = compile_source(f"diagram sym {{ in A : 1x({v}) out B : {out} B = {term} }}")
    (t,) = diagram.vertices
    found = {ir.ir: sum(1 for p in t.paths if p.out_block == o) for o, ir in enumerate(t.irreps_out)}
    assert found == {ir: n for ir, n in expected.items() if n}


@pytest.mark.parametrize("out", slow_unless(["0e", "0o", "1o", "1e", "2e"], lambda out: out == "0e"))
def test_correlation_four_up_to_l3(out: str) -> None:
    """Sym^4(0e+1o+2e+3o): compiled count = characters = rank of the trees on the diagonal."""
    v, ir = Irreps.parse("0e+1o+2e+3o"), Irreps.parse(out)[0].ir
    expected = symmetric_multiplicity([(v, 4)], ir)
    assert symmetric_rank(v, 4, ir) == expected
    (diagram,) = compile_source(f"diagram d {{ in A : 2x(0e + 1o + 2e + 3o) out B : 2x{out} "
                                f"B = fuse(A, A, A, A) mix uuu }}")
    assert len(diagram.vertices[0].paths) == expected


@pytest.mark.parametrize("nu, out, paths", [(3, "0e", 8), (3, "1o", 12), (2, "1o", 3)],
                         ids=["nu3-0e", "nu3-1o", "nu2-1o"])
def test_symmetric_counts_of_the_issue(nu: int, out: str, paths: int) -> None:
    source = f"diagram d {{ in A : 4x(0e + 1o + 2e + 3o) out B : 4x{out} B = fuse({', '.join(['A'] * nu)}) mix uuu }}"
    (diagram,) = compile_source(source)
    assert len(diagram.vertices[0].paths) == paths


# --------------------------------------------------------------------------- check --explain


def test_explain_mace_product(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--explain", str(KERNELS / "mace_product.fus")]) == 0
    text = capsys.readouterr().out
    block = re.search(r"^diagram mace_product\n(.*?)(?=^diagram |\Z)", text, re.M | re.S)
    assert block, text
    naive = re.search(r"naive plan.*?:\s*([\d,]+) FLOPs per row", block.group(1))
    chosen = re.search(r"chosen plan.*?:\s*([\d,]+) FLOPs per row", block.group(1))
    assert naive and chosen, block.group(1)
    naive_flops, chosen_flops = (int(m.group(1).replace(",", "")) for m in (naive, chosen))
    assert 0 < 5 * chosen_flops <= naive_flops, (naive_flops, chosen_flops)
    assert re.search(r"largest intermediate: \w+, [\d,]+ elements per row", block.group(1)), block.group(1)


# --------------------------------------------------------------------------- derivatives

GRAD_CASES = {
    "nary": """
diagram nary {
    in  a : 2x(0e + 1o)
    in  b : 2x(1o + 2e)
    in  c : 2x(0e + 1o)
    out y : 2x(0e + 1o)
    y = fuse(a, b, c) mix uuu
}""",
    "symmetric": """
diagram symmetric {
    in  A : 2x(0e + 1o + 2e)
    out B : 2x(0e + 1o)
    B = fuse(A, A, A) mix uuu
}""",
    "per_species": """
diagram per_species {
    in  A : 2x(0e + 1o)
    in  z : index(3)
    out B : 2x(0e + 1o)
    B = A mix uuu per z + fuse(A, A) mix uuu per z + fuse(A, A, A) mix uuu per z
}""",
    "let_chain": """
diagram let_chain {
    in  x1 : 1x(0e + 1o)
    in  x2 : 1x(0e + 1o)
    in  x3 : 1x(0e + 1o)
    in  x4 : 1x(0e + 1o)
    out y  : 1x(0e + 1o)
    let t = fuse(x1, x2) -> 1x(0e + 1o + 1e) mix uuu
    y = fuse(t, x3, x4; lmax=2) mix uuu
}""",
}


@pytest.mark.parametrize("name", slow_unless(list(GRAD_CASES), lambda name: name == "per_species"))
def test_tree_derivatives(name: str) -> None:
    module, diagram = compiled(GRAD_CASES[name])
    generator = torch.Generator().manual_seed(0)
    args = random_inputs(module, diagram, 2, generator)
    floats = [i for i, a in enumerate(args) if a.is_floating_point()]
    for i in set(range(len(args))) - set(floats):
        args[i] = torch.tensor([1, 1])  # both rows one species: their weight gradients add up
    weight = torch.randn(module.weight_numel, generator=generator, dtype=torch.float64)
    inputs = tuple(args[i].requires_grad_() for i in floats) + (weight.requires_grad_(),)

    def call(*xs: torch.Tensor) -> torch.Tensor:
        full = list(args)
        for i, x in zip(floats, xs[:-1]):
            full[i] = x
        return functional_call(module, {"weight": xs[-1]}, tuple(full))

    torch.manual_seed(0)
    assert torch.autograd.gradcheck(call, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(call, inputs, fast_mode=True)


# --------------------------------------------------------------------------- operand order


def test_operand_order_is_canonical() -> None:
    irreps = "2x(0e + 1o + 2e)", "2x(0e + 1o)"
    template = "diagram d {{ in A : {0} in B : {1} out y : 2x(0e + 1o + 2e) y = fuse({2}) mix uuu }}"
    module, diagram = compiled(template.format(*irreps, "A, B, A"))
    (t,) = diagram.vertices
    assert t.operands == ("A", "A", "B")
    assert t.irreps_in == (Irreps.parse(irreps[0]), Irreps.parse(irreps[0]), Irreps.parse(irreps[1]))
    assert_equivariant(module, diagram, tol=1e-10)
    assert_matches_reference(module, diagram, batch=3)
    same, _ = compiled(template.format(*irreps, "A, A, B"))
    generator = torch.Generator().manual_seed(1)
    args = random_inputs(module, diagram, 3, generator)
    with torch.no_grad():
        same.weight.copy_(module.weight)
        torch.testing.assert_close(module(*args), same(*args), rtol=1e-12, atol=1e-12)

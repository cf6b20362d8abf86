"""mace-torch parity: `fusionc.compat.mace` imports MACE's `SymmetricContraction` with the same
numbers, and fusionc's symmetric fusion keeps exactly as many trees as MACE's basis has
independent functions.

* Import: random MACE weights (re-randomised, so nothing rests on MACE's initialisation), random
  x, one-hot (and dense) y; the outputs agree to 1e-5 relative in float32 and 1e-10 in float64,
  and so do the gradients with respect to x.
* Path counts: for correlations 1–4 and input irreps up to l=3, the trees fusionc keeps per output
  irrep equal the rank of mace-torch's U matrix as a map of x (U symmetrised over its ν input
  indices: its columns are tensor-product paths, independent as tensors but not as polynomials
  of one x) and the multiplicity counted by characters. At correlation 4, mace-torch's e3nn path
  (`filter_ir_mid` in `mace.tools.cg.U_matrix_real`) keeps only natural-parity labels, so for
  unnatural outputs (0o, 1e, 2o, 3e) its basis is smaller (empty); there it must lie within
  fusionc's count.

Skipped where mace-torch is not installed. mace-torch 0.3.x pins e3nn 0.4.4, which under
torch ≥ 2.6 imports only with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (set below, if unset).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("mace") is not None:  # only where e3nn 0.4.4 comes with it
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
symmetric_contraction = pytest.importorskip(
    "mace.modules.symmetric_contraction",
    reason="mace-torch is not installed (pip install mace-torch; it pins e3nn 0.4.4)")

import torch  # noqa: E402
from e3nn import o3  # noqa: E402
from mace.tools.cg import U_matrix_real  # noqa: E402

from conftest import REPO, default_dtype  # noqa: E402
from fusionc import FusionError  # noqa: E402
from fusionc.algebra.characters import symmetric_multiplicity  # noqa: E402
from fusionc.compat.mace import from_symmetric_contraction  # noqa: E402
from fusionc.ir.irreps import Irrep, Irreps  # noqa: E402
from fusionc.pipeline import compile_source  # noqa: E402

SymmetricContraction = symmetric_contraction.SymmetricContraction
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
BATCH = 20


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def _irrep(text: str) -> Irrep:
    return Irreps.parse(text)[0].ir


# --------------------------------------------------------------------------------------------
# importing a SymmetricContraction

CONFIGS = [
    pytest.param("16x0e+16x1o+16x2e+16x3o", "16x0e+16x1o", 3, 3, id="l3-to-0e1o-nu3"),
    pytest.param("8x0e+8x1o+8x2e", "8x0e+8x1o+8x2e", 2, 2, id="l2-to-l2-nu2"),
    pytest.param("8x0e+8x1o", "8x0e", 4, 2, id="l1-to-0e-nu4"),
]


def build(irreps_in: str, irreps_out: str, correlation: int, elements: int, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    with default_dtype(dtype):
        sc = SymmetricContraction(o3.Irreps(irreps_in), o3.Irreps(irreps_out), correlation,
                                  num_elements=elements)
    with torch.no_grad():
        for p in sc.parameters():
            p.normal_()
    return sc


def compare(sc, fast, channels: int, dim: int, elements: int, dtype: torch.dtype, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, channels, dim, generator=g, dtype=dtype, requires_grad=True)
    species = torch.randint(0, elements, (BATCH,), generator=g)
    one_hot = torch.nn.functional.one_hot(species, elements).to(dtype)
    dense = torch.randn(BATCH, elements, generator=g, dtype=dtype)  # both are linear in y
    for y in (one_hot, dense):
        expected, got = sc(x, y), fast(x, y)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert relative(got, expected) < TOLERANCE[dtype]
        cotangent = torch.randn(expected.shape, generator=g, dtype=dtype)
        (grad_expected,) = torch.autograd.grad(expected, x, cotangent)
        (grad_got,) = torch.autograd.grad(got, x, cotangent)
        assert relative(grad_got, grad_expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("irreps_in,irreps_out,correlation,elements", CONFIGS)
def test_import_matches_mace(irreps_in, irreps_out, correlation, elements, dtype) -> None:
    sc = build(irreps_in, irreps_out, correlation, elements, dtype)
    fast = from_symmetric_contraction(sc)
    channels = o3.Irreps(irreps_in)[0].mul
    compare(sc, fast, channels, o3.Irreps(irreps_in).dim // channels, elements, dtype)
    # the basis change is exact (MACE's U recomputed in float64 for a float32 model)
    assert max(fast.residuals.values()) < 1e-10
    # one weight per independent tree, channel and species: the characters' count
    single = Irreps.parse("+".join(str(ir) for _, ir in o3.Irreps(irreps_in)))
    for nu in range(1, correlation + 1):
        trees = sum(symmetric_multiplicity([(single, nu)], _irrep(str(ir))) for _, ir in o3.Irreps(irreps_out))
        assert tuple(fast.weights[fast.terms.index(nu)].shape) == (elements, channels * trees)


def test_import_zero_blocks_and_unnatural_outputs() -> None:
    """Outputs no correlation reaches (1e from 0e+1o up to ν=3) are zeros in both; MACE's
    antisymmetric paths (1o ⊗ 1o -> 1e) vanish; at correlation 4 MACE has no unnatural-parity
    basis, fusionc has trees there, and the import gives them zero weight."""
    dtype = torch.float64
    sc = build("4x0e+4x1o", "4x2e+4x1e+4x0e", 3, 2, dtype)
    fast = from_symmetric_contraction(sc)
    assert "4x1e" not in fast.source
    compare(sc, fast, 4, 4, 2, dtype)
    sc = build("2x0e+2x1o+2x2e", "2x1e+2x1o", 4, 2, dtype)
    fast = from_symmetric_contraction(sc)
    assert fast.basis_change[(4, 0)].shape == (1, 2) and not fast.basis_change[(4, 0)].any()
    compare(sc, fast, 2, 9, 2, dtype)


@pytest.mark.parametrize("irreps_in,irreps_out,correlation,elements", [
    *CONFIGS, pytest.param("4x0e+4x1o", "4x2e+4x1e+4x0e", 3, 2, id="zero-blocks")])
def test_state_dicts_round_trip_in_both_layouts(irreps_in, irreps_out, correlation, elements) -> None:
    """A fusionc module's state dict loads into another (its own weights), and so does a mace-torch
    SymmetricContraction's (MACE's weights mapped onto the trees); both then compute what their
    source computes. The MACE-layout weights a fusionc state dict carries load into mace-torch."""
    dtype = torch.float64
    sc, other = build(irreps_in, irreps_out, correlation, elements, dtype), build(irreps_in, irreps_out, correlation,
                                                                               elements, dtype, seed=1)
    fast = from_symmetric_contraction(sc)
    channels, dim = sc.irreps_in[0].mul, sum(ir.dim for _, ir in sc.irreps_in)
    twin = from_symmetric_contraction(other)
    twin.load_state_dict(fast.state_dict())
    compare(sc, twin, channels, dim, elements, dtype)
    twin = from_symmetric_contraction(other)
    twin.load_state_dict(sc.state_dict())
    compare(sc, twin, channels, dim, elements, dtype)
    other.load_state_dict(fast.state_dict(), strict=False)
    compare(other, fast, channels, dim, elements, dtype)


def test_differing_correlations_are_refused() -> None:
    sc = build("4x0e+4x1o", "4x0e+4x1o", 2, 2, torch.float64)
    sc.contractions[1] = build("4x0e+4x1o", "4x0e+4x1o", 3, 2, torch.float64).contractions[1]
    with pytest.raises(ValueError, match="different correlations"):
        from_symmetric_contraction(sc)


def test_compat_module_does_not_import_mace(tmp_path) -> None:
    script = ('import sys\nsys.modules["mace"] = None\nsys.modules["e3nn"] = None\n'
              'import fusionc.compat.mace\nprint("ok")\n')
    env = {"PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------
# symmetric path counts

OUTPUTS = ("0e", "0o", "1o", "1e", "2e", "2o", "3o", "3e")
NATURAL = {"0e", "1o", "2e", "3o"}
COUNT_CASES = [(v, nu) for v in ("0e+1o", "0e+1o+2e", "1o+2e", "1o", "2e+3o") for nu in (1, 2, 3, 4)]
COUNT_CASES += [("0e+1o+2e+3o", nu) for nu in (1, 2, 3)]  # ν=4 at l=3 takes MACE minutes


def mace_basis(v: str, nu: int) -> dict[str, torch.Tensor]:
    """MACE's U matrices (as SymmetricContraction builds them: e3nn path, not cuequivariance)
    for every output irrep, by irrep; outputs with no path are absent."""
    result = U_matrix_real(v, "+".join(OUTPUTS), nu, use_cueq_cg=False, dtype=torch.float64)
    return {str(result[i]): result[i + 1] for i in range(0, len(result), 2)}


def symmetric_rank(u: torch.Tensor, nu: int, dim: int) -> int:
    """Rank of x ↦ U·x^⊗ν: U symmetrised over its ν input indices, columns as vectors."""
    k = u.shape[-1]
    u = u.reshape(-1, *([dim] * nu), k)
    perms = list(itertools.permutations(range(1, nu + 1)))
    sym = sum(u.permute(0, *p, nu + 1) for p in perms) / len(perms)
    s = torch.linalg.svdvals(sym.reshape(-1, k))
    if s.numel() == 0 or s[0] < 1e-12 * max(1.0, float(u.abs().max())):
        return 0
    return int((s > 1e-9 * s[0]).sum())


def fusionc_counts(v: str, nu: int, outputs: list[str]) -> dict[str, int]:
    """Trees per output irrep of the compiled `fuse(A, …, A)` (ν=1: `A mix uuu`)."""
    term = "A mix uuu" if nu == 1 else f"fuse({', '.join(['A'] * nu)}) mix uuu"
    source = f"diagram d {{ in A : {v}  out B : {' + '.join(outputs)}  B = {term} }}"
    (d,) = compile_source(source)
    (t,) = d.vertices
    return {o: sum(1 for p in t.paths if t.placement[p.out_block] == i) for i, o in enumerate(outputs)}


@pytest.mark.parametrize("v,nu", COUNT_CASES, ids=[f"{v}-nu{nu}" for v, nu in COUNT_CASES])
def test_symmetric_path_counts(v: str, nu: int) -> None:
    dim = Irreps.parse(v).dim
    characters = {o: symmetric_multiplicity([(Irreps.parse(v), nu)], _irrep(o)) for o in OUTPUTS}
    reached = [o for o in OUTPUTS if characters[o] > 0]
    counts = fusionc_counts(v, nu, reached) if reached else {}
    for o in OUTPUTS:
        if characters[o] == 0:
            term = "A mix uuu" if nu == 1 else f"fuse({', '.join(['A'] * nu)}) mix uuu"
            with pytest.raises(FusionError, match="no term produces block"):
                compile_source(f"diagram d {{ in A : {v}  out B : {o}  B = {term} }}")
            counts[o] = 0
    basis = mace_basis(v, nu)
    for o in OUTPUTS:
        assert counts[o] == characters[o], (o, counts[o], characters[o])
        rank = symmetric_rank(basis[o], nu, dim) if o in basis else 0
        if nu == 4 and o not in NATURAL:
            assert rank <= counts[o], (o, rank, counts[o])
        else:
            assert rank == counts[o], (o, rank, counts[o])


@pytest.mark.parametrize("nu,out,mace_paths,trees", [(3, "0e", 23, 8), (3, "1o", 51, 12), (2, "1o", 6, 3)])
def test_issue_figures(nu: int, out: str, mace_paths: int, trees: int) -> None:
    """The issue's numbers for V = 0e+1o+2e+3o: MACE's columns vs fusionc's trees."""
    v = "0e+1o+2e+3o"
    u = U_matrix_real(v, out, nu, use_cueq_cg=False, dtype=torch.float64)[-1]
    assert u.shape[-1] == mace_paths
    assert fusionc_counts(v, nu, [out]) == {out: trees}
    assert symmetric_rank(u, nu, Irreps.parse(v).dim) == trees


@pytest.mark.parametrize("which,bound", [(0, 1e-4), (1, 1e-12)], ids=["block", "model"])
def test_readme_mace_examples_run_as_written(which, bound) -> None:
    """The README's mace-torch examples, run as a user would in this environment: the block prints a
    small difference between the fusionc module and the SymmetricContraction it replaces (float32),
    the whole model one between the accelerated model's forces and extract_model's (float64)."""
    from test_readme import python_blocks

    blocks = [b for b in python_blocks() if "from mace" in b]
    assert len(blocks) == 2
    result = subprocess.run([sys.executable, "-c", blocks[which]], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < bound  # mace may print a notice first

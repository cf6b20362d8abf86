"""mace-torch's `SymmetricContraction` (MACE's product basis) as a fusionc module, same numbers.

    from fusionc.compat.mace import from_symmetric_contraction
    fast = from_symmetric_contraction(sc)   # sc: mace-torch's SymmetricContraction
    fast(x, y)                              # equals sc(x, y)

`sc` is a `mace.modules.symmetric_contraction.SymmetricContraction`; it is duck-typed: this
module never imports mace (step 2 only looks up `U_matrix_real` in the already loaded module
that defines `sc`'s contractions). The replacement has the same call and layouts: `x` is
(batch, channels, Σ(2l+1)), per channel the irreps of `sc.irreps_in` concatenated; `y` is
(batch, num_elements), the one-hot species (the map is linear in `y`, as MACE's is); the output is
(batch, Σ channels·(2L+1)) over the irreps of `sc.irreps_out`, MACE's per-irrep contractions
concatenated, each (batch, channels, 2L+1) flattened channel-major (the `mul_ir` layout).

How it is built:

1. The diagram, as `.fus` text: `B = A mix uuu by w1 + fuse(A, A) mix uuu by w2 + …` up to the
   correlation. `fuse(A, …, A)` keeps a linearly independent set of fusion trees of the
   symmetric power; mace-torch's U matrices carry linearly dependent paths (ν=3 onto 0e from
   0e+1o+2e+3o: 23 columns, 8 independent trees). Output irreps that no correlation reaches are
   left out of the diagram (MACE's output there is identically zero, and so is ours), and so are
   terms that reach none of the output irreps.
2. The change of basis. For correlation ν and output irrep o, MACE's basis function k is
   U_ν[..., k] contracted with one channel of x ν times; fusionc's tree t is the compiled module
   itself, called with a unit weight on tree t in every channel and zero elsewhere (so the
   tree's normalisation and everything the code generator does are included). Both are
   evaluated in float64 on random inputs, and M (K × T) solves MACE_k = Σ_t M[k, t] tree_t in the
   least-squares sense; the relative residual must be below 1e-10 (MACE's span lies in
   fusionc's), and the trees must be linearly independent on those samples.
   The U matrices are recomputed in float64 with the `U_matrix_real` that `sc`'s own module
   uses, when they agree with `sc`'s buffers to the buffers' precision (so a float32 model still
   gets an exact basis change); otherwise the buffers are used, with the residual bound loosened
   to 100 × their machine epsilon.
3. The weights: per correlation, W_fusionc[e, t, c] = Σ_k W_mace[e, k, c] M[k, t], stored as a
   learnable (num_elements, numel_ν) matrix in fusionc's flat layout (per path, `weight_offset`
   and `weight_shape`); per row the weights are `y @ W_ν`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

import fusionc
from fusionc.algebra.characters import symmetric_multiplicity
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep

__all__ = ["MaceSymmetricContraction", "from_symmetric_contraction"]

#: Bound on the relative residual of the basis change when MACE's U matrices are float64.
RESIDUAL_TOLERANCE = 1e-10
#: Trees whose values on the samples have a smaller relative singular value count as dependent.
_RANK_TOLERANCE = 1e-9


def _irrep(ir) -> Irrep:
    """An e3nn `Irrep` (anything with `l` and `p`) as fusionc's."""
    return Irrep(int(ir.l), int(ir.p))


@dataclass(frozen=True)
class _Layout:
    channels: int
    irreps_in: tuple[Irrep, ...]  # per channel, in sc.irreps_in's order
    irreps_out: tuple[Irrep, ...]  # one per MACE contraction, in order
    correlation: int
    num_elements: int

    @property
    def dim_in(self) -> int:
        return sum(ir.dim for ir in self.irreps_in)

    def in_slices(self) -> list[tuple[int, int]]:
        return _slices(self.irreps_in)

    def out_slices(self) -> list[tuple[int, int]]:
        return [(a * self.channels, b * self.channels) for a, b in _slices(self.irreps_out)]


def _slices(irreps: tuple[Irrep, ...]) -> list[tuple[int, int]]:
    out, start = [], 0
    for ir in irreps:
        out.append((start, start + ir.dim))
        start += ir.dim
    return out


def _mace_weights(contraction) -> dict[int, torch.Tensor]:
    """MACE's weights by correlation ν: `weights_max` is ν = correlation, then `weights[i]` is
    ν = correlation − 1 − i; each (num_elements, K_ν, channels)."""
    nu_max = int(contraction.correlation)
    out = {nu_max: contraction.weights_max}
    for i, w in enumerate(contraction.weights):
        out[nu_max - 1 - i] = w
    return out


def _layout(sc) -> _Layout:
    blocks = [(int(mul), _irrep(ir)) for mul, ir in sc.irreps_in]
    muls = sorted({mul for mul, _ in blocks})
    if len(muls) != 1:
        raise ValueError(f"SymmetricContraction input irreps {sc.irreps_in} have different multiplicities "
                         f"{muls}; MACE's layout (batch, channels, Σ(2l+1)) needs one channel count")
    contractions = list(sc.contractions)
    outs = [_irrep(ir) for _, ir in sc.irreps_out]
    if len(outs) != len(contractions):
        raise ValueError(f"SymmetricContraction has {len(contractions)} contractions for {len(outs)} output irreps")
    correlations = [int(c.correlation) for c in contractions]
    if len(set(correlations)) != 1:
        per = ", ".join(f"{ir}: {nu}" for ir, nu in zip(outs, correlations))
        raise ValueError(f"SymmetricContraction uses different correlations per output irrep ({per}); "
                         f"only one correlation for every output irrep is supported")
    channels = muls[0]
    for c in contractions:
        features = getattr(c, "num_features", channels)
        if features != channels:
            raise ValueError(f"a contraction has {features} channels, the input irreps {channels}")
    num_elements = int(contractions[0].weights_max.shape[0])
    return _Layout(channels, tuple(ir for _, ir in blocks), tuple(outs), correlations[0], num_elements)


def _source(layout: _Layout, name: str) -> tuple[str, list[int], list[int]]:
    """The `.fus` text, the correlations that have a term, and the MACE outputs it produces."""
    single = Irreps(tuple(MulIrrep(1, ir) for ir in layout.irreps_in))
    reach = {(nu, o): symmetric_multiplicity([(single, nu)], ir) > 0
             for nu in range(1, layout.correlation + 1) for o, ir in enumerate(layout.irreps_out)}
    kept = [o for o in range(len(layout.irreps_out)) if any(reach[nu, o] for nu in range(1, layout.correlation + 1))]
    terms = [nu for nu in range(1, layout.correlation + 1) if any(reach[nu, o] for o in kept)]
    c = layout.channels
    lines = [f"diagram {name} {{",
             f"    in  A : {' + '.join(f'{c}x{ir}' for ir in layout.irreps_in)}"]
    lines += [f"    in  w{nu} : weights" for nu in terms]
    lines.append(f"    out B : {' + '.join(f'{c}x{layout.irreps_out[o]}' for o in kept)}")
    parts = ["A mix uuu by w1" if nu == 1 else f"fuse({', '.join(['A'] * nu)}) mix uuu by w{nu}" for nu in terms]
    lines.append(f"    B = {' + '.join(parts)}")
    lines.append("}")
    return "\n".join(lines) + "\n", terms, kept


def _to_mul_ir(x: torch.Tensor, slices: list[tuple[int, int]]) -> torch.Tensor:
    """(n, channels, Σ(2l+1)) → (n, Σ channels·(2l+1)), block by block, channel-major."""
    n = x.shape[0]
    if len(slices) == 1:
        return x.reshape(n, -1)
    return torch.cat([x[:, :, a:b].reshape(n, -1) for a, b in slices], dim=1)


def _u_float64(contraction, nu: int, out: Irrep, dim_in: int) -> tuple[torch.Tensor, bool]:
    """MACE's U_ν for one output irrep as (2L+1, dim_in^ν, K) float64, and whether it is exact
    to float64 (recomputed, or a float64 buffer)."""
    buffer = dict(contraction.named_buffers())[f"U_matrix_{nu}"].detach()
    shape = (out.dim, dim_in ** nu, -1)
    stored = buffer.to("cpu", torch.float64).reshape(shape)
    if buffer.dtype == torch.float64:
        return stored, True
    build = getattr(sys.modules.get(type(contraction).__module__), "U_matrix_real", None)
    if build is not None:
        eps = torch.finfo(buffer.dtype).eps
        for cueq in (False, True):
            try:
                u = build(irreps_in=contraction.coupling_irreps, irreps_out=str(out), correlation=nu,
                          use_cueq_cg=cueq, dtype=torch.float64)[-1].to(torch.float64).reshape(shape)
            except Exception:  # a MACE version with another signature: use the buffer
                continue
            scale = max(1.0, float(stored.abs().max())) if stored.numel() else 1.0
            if u.shape == stored.shape and bool(((u - stored).abs() <= 8 * eps * scale).all()):
                return u, True
    return stored, False


def _power(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Rows x (r, d) → their ν-fold outer powers (r, d^ν), row-major like U's indices."""
    out = x
    for _ in range(nu - 1):
        out = (out[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
    return out


class MaceSymmetricContraction(torch.nn.Module):
    """A fusionc drop-in for mace-torch's `SymmetricContraction` (see the module docstring).

    `weights` holds one learnable (num_elements, numel_ν) matrix per correlation ν (keys "w1",
    "w2", …, fusionc's weights inputs); `fusion` is the compiled fusionc module; `source` its
    `.fus` text; `basis_change[(ν, o)]` the float64 (K, T) matrix M for output irrep o; and
    `residuals[(ν, o)]` the relative residual of its least-squares fit.
    """

    def __init__(self, layout: _Layout, source: str, fusion: torch.nn.Module | None, kept: list[int],
                 weights: dict[str, torch.Tensor], basis_change: dict, residuals: dict) -> None:
        super().__init__()
        self.layout = layout
        self.irreps_in = " + ".join(f"{layout.channels}x{ir}" for ir in layout.irreps_in)
        self.irreps_out = " + ".join(f"{layout.channels}x{ir}" for ir in layout.irreps_out)
        self.correlation = layout.correlation
        self.num_elements = layout.num_elements
        self.source = source
        self.fusion = fusion
        self.kept = tuple(kept)
        self.weights = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in weights.items()})
        self.basis_change = basis_change
        self.residuals = residuals
        self._in_slices = layout.in_slices()
        self._out_slices = layout.out_slices()
        self._dim_out = self._out_slices[-1][1] if self._out_slices else 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.fusion is None:
            return x.new_zeros(n, self._dim_out)
        a = _to_mul_ir(x.reshape(n, self.layout.channels, self.layout.dim_in), self._in_slices)
        rows = {name: y @ w for name, w in self.weights.items()}
        b = self.fusion(A=a, **rows)
        if len(self.kept) == len(self._out_slices):
            return b
        pieces, start = [], 0
        for o, (lo, hi) in enumerate(self._out_slices):
            if o in self.kept:
                pieces.append(b[:, start:start + hi - lo])
                start += hi - lo
            else:
                pieces.append(b.new_zeros(n, hi - lo))
        return torch.cat(pieces, dim=1)


def from_symmetric_contraction(sc, seed: int = 0, name: str = "mace_symmetric_contraction") -> MaceSymmetricContraction:
    """A fusionc module computing what `sc` (a mace-torch `SymmetricContraction`) computes, with
    `sc`'s current weights mapped onto fusionc's independent trees; see the module docstring.

    Raises ValueError where `sc` is outside what the replacement supports (different
    correlations per output irrep, input irreps with different multiplicities) or where a MACE
    basis function does not lie in the span of fusionc's trees.
    """
    layout = _layout(sc)
    source, terms, kept = _source(layout, name)
    contractions = list(sc.contractions)
    reference = contractions[0].weights_max
    dtype, device = reference.dtype, reference.device
    c, d = layout.channels, layout.dim_in

    fusion64 = None
    vertices = {}
    if terms:
        ops = fusionc.loads(source, filename=f"<{name}>")
        diagram = ops.diagrams[0]
        fusion64 = getattr(ops, diagram.name)(dtype=torch.float64)
        vertices = {int(t.weight_source[1:]): t for t in diagram.vertices}
        numel = fusion64.input_weight_numel

    most = max([len(t.paths) for t in vertices.values()] + [1])
    samples = max(4, math.ceil((2 * most + 16) / c))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, c, d, generator=generator, dtype=torch.float64)
    a = _to_mul_ir(x, layout.in_slices())
    rows = x.reshape(samples * c, d)
    value_block = {o: j for j, o in enumerate(kept)}
    out_slices = _slices(tuple(layout.irreps_out[o] for o in kept))

    weights: dict[str, torch.Tensor] = {}
    basis_change, residuals = {}, {}
    for nu in range(1, layout.correlation + 1):
        t = vertices.get(nu)
        values = None
        if t is not None:
            flat = torch.zeros(layout.num_elements, numel[f"w{nu}"], dtype=torch.float64)
            p_count = len(t.paths)
            feeds = {k: torch.zeros(p_count * samples, m, dtype=torch.float64) for k, m in numel.items()}
            for i, p in enumerate(t.paths):
                if tuple(p.weight_shape) != (c,):
                    raise AssertionError(f"fusionc path {p} has weights {p.weight_shape}, expected ({c},)")
                feeds[f"w{nu}"][i * samples:(i + 1) * samples, p.weight_offset:p.weight_offset + c] = 1.0
            with torch.no_grad():
                values = fusion64(A=a.repeat(p_count, 1), **feeds).reshape(p_count, samples, -1)
        power = _power(rows, nu)
        for o, (contraction, ir) in enumerate(zip(contractions, layout.irreps_out)):
            u, exact = _u_float64(contraction, nu, ir, d)
            mace = torch.einsum("rj,mjk->rmk", power, u).reshape(-1, u.shape[-1])  # (s, c, m) × K
            cols = []
            if t is not None and o in value_block:
                cols = [i for i, p in enumerate(t.paths) if t.placement[p.out_block] == value_block[o]]
            lo, hi = out_slices[value_block[o]] if o in value_block else (0, 0)
            bound = RESIDUAL_TOLERANCE if exact else 100 * torch.finfo(
                dict(contraction.named_buffers())[f"U_matrix_{nu}"].dtype).eps
            # |MACE's values| <= |x^ν| |U|: below bound times that, the function vanishes on the
            # diagonal (an antisymmetric path, e.g. 1o ⊗ 1o -> 1e) up to rounding
            scale = float(power.norm()) * float(u.norm())
            norm = float(mace.norm())
            m_t = torch.zeros(len(cols), mace.shape[1], dtype=torch.float64)
            if norm <= bound * scale:
                residual = norm / scale if scale > 0 else 0.0
            elif not cols:
                raise ValueError(f"MACE's correlation-{nu} basis onto {ir} is not zero, and fusionc has no "
                                 f"tree there (relative size {norm / scale:.3g})")
            else:
                trees = values[cols][:, :, lo * c:hi * c].reshape(len(cols), -1).T  # (s, c, m) × T
                singular = torch.linalg.svdvals(trees)
                if singular[-1] <= _RANK_TOLERANCE * singular[0]:
                    raise AssertionError(f"fusionc's trees for correlation {nu} onto {ir} are dependent "
                                         f"on the samples (singular values {singular.tolist()})")
                m_t = torch.linalg.lstsq(trees, mace).solution  # T × K
                residual = float((trees @ m_t - mace).norm()) / norm
                if residual > bound:
                    raise ValueError(f"MACE's correlation-{nu} basis onto {ir} is not in the span of "
                                     f"fusionc's {len(cols)} trees: relative residual {residual:.3g} > {bound:.3g}")
            basis_change[(nu, o)] = m_t.T.contiguous()
            residuals[(nu, o)] = residual
            if cols:
                w_mace = _mace_weights(contraction)[nu].detach().to("cpu", torch.float64)  # (E, K, C)
                w_trees = torch.einsum("ekc,kt->etc", w_mace, m_t.T)
                for j, i in enumerate(cols):
                    p = t.paths[i]
                    flat[:, p.weight_offset:p.weight_offset + c] = w_trees[:, j, :]
        if t is not None:
            weights[f"w{nu}"] = flat.to(device=device, dtype=dtype)

    fusion = None
    if fusion64 is not None:
        fusion = type(fusion64)(dtype=dtype, device=device)
    return MaceSymmetricContraction(layout, source, fusion, kept, weights, basis_change, residuals)

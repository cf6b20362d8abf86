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

A model with MACE's product swapped in (`accelerate`) leaves its process as mace-torch's does:
`torch.save` (the generated module is stored as its source), `torch.export`, and `torch.jit.script`,
MACE's LAMMPS path included. Its state dict carries the product weights twice: fusionc's
(`weights.0`, …), which it loads, and MACE's layout (`contractions.<o>.weights_max`, …), the
minimum-norm MACE weights of the same function, which mace-torch's `extract_model` loads into a
plain MACE model that computes the same.
"""

import math
import sys
from dataclasses import dataclass
from typing import List

import torch

import fusionc
from fusionc.algebra.characters import symmetric_multiplicity
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep

__all__ = ["MaceSymmetricContraction", "accelerate", "from_symmetric_contraction", "symmetric_contraction"]

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


def _to_mul_ir(x: torch.Tensor, slices: List[List[int]]) -> torch.Tensor:
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


class _Call1(torch.nn.Module):
    """Calls a generated module with A and one weights input: TorchScript cannot spread a list into
    arguments, so there is one of these per count of weights inputs (`_CALLS`)."""

    def __init__(self, fusion: torch.nn.Module) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, a: torch.Tensor, w: List[torch.Tensor]) -> torch.Tensor:
        return self.fusion(a, w[0])


class _Call2(_Call1):
    def forward(self, a: torch.Tensor, w: List[torch.Tensor]) -> torch.Tensor:
        return self.fusion(a, w[0], w[1])


class _Call3(_Call1):
    def forward(self, a: torch.Tensor, w: List[torch.Tensor]) -> torch.Tensor:
        return self.fusion(a, w[0], w[1], w[2])


class _Call4(_Call1):
    def forward(self, a: torch.Tensor, w: List[torch.Tensor]) -> torch.Tensor:
        return self.fusion(a, w[0], w[1], w[2], w[3])


class _CallAny(_Call1):
    """More weights inputs than a `_Call<k>` takes: eager only."""

    def forward(self, a: torch.Tensor, w: List[torch.Tensor]) -> torch.Tensor:
        return self.fusion(a, *w)


_CALLS = {1: _Call1, 2: _Call2, 3: _Call3, 4: _Call4}


class MaceSymmetricContraction(torch.nn.Module):
    """A fusionc drop-in for mace-torch's `SymmetricContraction` (see the module docstring).

    `weights[i]` is the learnable (num_elements, numel_ν) matrix of correlation ν = `terms[i]`
    (fusionc's weights input `w<ν>`); `fusion` is the compiled fusionc module; `source` its
    `.fus` text; `basis_change[(ν, o)]` the float64 (K, T) matrix M for output irrep o (MACE's
    weights W give fusionc's W·M on the trees at `tree_offsets[(ν, o)]`); and `residuals[(ν, o)]`
    the relative residual of its least-squares fit. `contraction_degree` is the correlation, where
    mace-torch's `extract_model` looks for it.
    """

    # what TorchScript does not compile (Python objects: the layout, dicts keyed by tuples)
    __jit_ignored_attributes__ = ["layout", "source", "basis_change", "residuals", "tree_offsets", "irreps_in",
                                  "irreps_out"]
    __jit_unused_properties__ = ["fusion", "contraction_degree"]
    kept: List[int]  # the output irreps fusionc's diagram computes (the others are zero)
    terms: List[int]
    _in_slices: List[List[int]]
    _out_slices: List[List[int]]

    def __init__(self, layout: _Layout, source: str, fusion: torch.nn.Module | None, kept: list[int],
                 weights: dict[str, torch.Tensor], basis_change: dict, residuals: dict, tree_offsets: dict) -> None:
        super().__init__()
        self.layout = layout
        self.irreps_in = " + ".join(f"{layout.channels}x{ir}" for ir in layout.irreps_in)
        self.irreps_out = " + ".join(f"{layout.channels}x{ir}" for ir in layout.irreps_out)
        self.correlation = layout.correlation
        self.num_elements = layout.num_elements
        self.source = source
        self.call = None if fusion is None else _CALLS.get(len(weights), _CallAny)(fusion)
        self.kept = list(kept)
        self.terms = [int(name[1:]) for name in weights]
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(v) for v in weights.values()])
        self.basis_change = basis_change
        self.residuals = residuals
        self.tree_offsets = tree_offsets
        self._channels, self._dim_in = layout.channels, layout.dim_in
        self._in_slices = [list(s) for s in layout.in_slices()]
        self._out_slices = [list(s) for s in layout.out_slices()]
        self._dim_out = self._out_slices[-1][1] if self._out_slices else 0
        self._register_state_dict_hook(_add_mace_weights)
        self._register_load_state_dict_pre_hook(_take_weights, with_module=True)

    @property
    def fusion(self) -> torch.nn.Module | None:
        return None if self.call is None else self.call.fusion

    @property
    def contraction_degree(self) -> int:
        return self.correlation

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        call = self.call
        if call is None:
            return x.new_zeros(n, self._dim_out)
        a = _to_mul_ir(x.reshape(n, self._channels, self._dim_in), self._in_slices)
        b = call(a, [y @ w for w in self.weights])
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

    def mace_weights(self) -> dict[tuple[int, int], torch.Tensor]:
        """Per (ν, output irrep o), MACE's (num_elements, K, channels) weights of the function this
        module computes: the minimum-norm W with W·M equal to fusionc's weights (zeros where MACE's
        basis vanishes). Exact where MACE's basis spans fusionc's trees, which is every case but
        unnatural-parity outputs at correlation 4, where MACE has no basis and fusionc has trees."""
        out = {}
        c = self._channels
        for (nu, o), m in self.basis_change.items():
            offsets = self.tree_offsets.get((nu, o), [])
            if not offsets:
                like = self.weights[0] if len(self.weights) else torch.zeros(0)
                out[(nu, o)] = like.new_zeros(self.num_elements, m.shape[0], c)
                continue
            flat = self.weights[self.terms.index(nu)].detach()
            trees = torch.stack([flat[:, k:k + c] for k in offsets], dim=1).to(torch.float64)  # (E, T, C)
            mace = torch.einsum("etc,tk->ekc", trees.cpu(), torch.linalg.pinv(m))
            out[(nu, o)] = mace.to(device=flat.device, dtype=flat.dtype)
        return out


def _mace_key(nu: int, o: int, correlation: int) -> str:
    """The state-dict key of MACE's weights of correlation ν onto output irrep o."""
    return f"contractions.{o}.weights_max" if nu == correlation else f"contractions.{o}.weights.{correlation - 1 - nu}"


def _add_mace_weights(module: MaceSymmetricContraction, state: dict, prefix: str, _metadata) -> None:
    for (nu, o), w in module.mace_weights().items():
        state[prefix + _mace_key(nu, o, module.correlation)] = w


def _take_weights(module: MaceSymmetricContraction, state: dict, prefix: str, _metadata, _strict, _missing,
                  _unexpected, _errors) -> None:
    """Load fusionc's weights where the state has them; where it has MACE's only (a state dict of
    mace-torch's SymmetricContraction), map those onto the trees. MACE's keys (its weights, U
    matrices and masks) are then dropped."""
    mace = {}
    for nu, o in module.basis_change:
        key = prefix + _mace_key(nu, o, module.correlation)
        if key in state:
            mace[(nu, o)] = state.pop(key)
    for key in [k for k in state if k.startswith(prefix + "contractions.")]:
        del state[key]  # the rest of a mace-torch state: U matrices, masks
    c = module._channels
    for i, (nu, current) in enumerate(zip(module.terms, module.weights)):
        if f"{prefix}weights.{i}" in state:
            continue
        flat = torch.zeros_like(current, dtype=torch.float64, device="cpu")
        for (mu, o), m in module.basis_change.items():
            offsets = module.tree_offsets.get((mu, o), [])
            if mu != nu or not offsets or (mu, o) not in mace:
                continue
            trees = torch.einsum("ekc,kt->etc", mace[(mu, o)].detach().cpu().to(torch.float64), m)
            for j, k in enumerate(offsets):
                flat[:, k:k + c] = trees[:, j, :]
        if mace:
            state[f"{prefix}weights.{i}"] = flat.to(current.dtype)


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
    basis_change, residuals, tree_offsets = {}, {}, {}
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
                tree_offsets[(nu, o)] = [t.paths[i].weight_offset for i in cols]
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
    return MaceSymmetricContraction(layout, source, fusion, kept, weights, basis_change, residuals, tree_offsets)


def symmetric_contraction(irreps_in, irreps_out, correlation: int, num_elements: int, *,
                          dtype: torch.dtype | None = None, seed: int | None = None) -> MaceSymmetricContraction:
    """A new product block with MACE's initialisation: mace-torch's `SymmetricContraction(irreps_in,
    irreps_out, correlation, num_elements=num_elements)` built (U matrices in float64; weights drawn
    as MACE draws them, from torch's generator seeded with `seed` where given) and imported. Needs
    mace-torch; `irreps_in`/`irreps_out` are e3nn Irreps or their strings."""
    from e3nn import o3
    from mace.modules.symmetric_contraction import SymmetricContraction

    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # MACE builds its U matrices in the default dtype
    try:
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            sc = SymmetricContraction(o3.Irreps(str(irreps_in)), o3.Irreps(str(irreps_out)), correlation,
                                      num_elements=num_elements)
    finally:
        torch.set_default_dtype(saved)
    return from_symmetric_contraction(sc).to(dtype or saved)


def accelerate(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every mace-torch `SymmetricContraction` inside `model` for its fusionc module, in place,
    with the same weights (`from_symmetric_contraction`); returns `model`. A ValueError if there is
    none.

    In place, because copying a mace-torch model is a trap: e3nn 0.4.4 pickles its code-generated
    modules (its `Linear`s and tensor products) as TorchScript, so `copy.deepcopy` (or `torch.save`
    then `torch.load`) of a model built with fx code (`e3nn.set_optimization_defaults(
    jit_script_fx=False)`, which `torch.export` needs) gives TorchScript modules back, which
    `torch.export` cannot trace. To keep the original, save its state dict, or build a second model."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "SymmetricContraction" and hasattr(child, "contractions"):
                setattr(parent, name, from_symmetric_contraction(child))
                swapped += 1
    if not swapped:
        raise ValueError(f"{type(model).__name__} has no mace-torch SymmetricContraction to swap")
    return model

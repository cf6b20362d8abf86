"""The non-diagram pieces of a potential: spherical harmonics of edge directions, the radial
basis (Bessel functions under a polynomial cutoff) and the radial MLP that weights each edge."""

from __future__ import annotations

import math

import numpy as np
import torch

from fusionc.algebra.cg import wigner_3j


def _harmonic_tables(lmax: int) -> list[np.ndarray]:
    """Per l ≥ 2, the table T with Y_l = einsum('ei,ej,ijk->ek', Y_{l-1}, Y_1, T): the CG table
    (l-1) ⊗ 1 → l, scaled so that |Y_l| = sqrt(2l + 1) on unit vectors ('component' normalisation)
    and signed so that Y_l(ŷ) has a positive m = 0 entry (ŷ is e3nn's polar axis)."""
    tables = []
    y = np.array([[0.6, 0.48, 0.64]])  # any unit vector: the coupled polynomial has one norm on the sphere
    pole = np.array([[0.0, 1.0, 0.0]])
    prev, prev_pole = math.sqrt(3) * y, math.sqrt(3) * pole
    for l in range(2, lmax + 1):
        table = wigner_3j(l - 1, 1, l)
        value = np.einsum("ei,ej,ijk->ek", prev, math.sqrt(3) * y, table)
        at_pole = np.einsum("ei,ej,ijk->ek", prev_pole, math.sqrt(3) * pole, table)
        scale = math.sqrt(2 * l + 1) / np.linalg.norm(value) * np.sign(at_pole[0, l])
        tables.append(table * scale)
        prev, prev_pole = value * scale, at_pole * scale
    return tables


def length(vectors: torch.Tensor) -> torch.Tensor:
    """|v| along the last axis, keeping it. Written as a power, not `norm` or `sqrt`: the backward of an
    op that saves its output (`sqrt`, `norm`, `div`) breaks `torch.export` of a function that takes
    `torch.autograd.grad` (torch 2.13: "fake tensor in the exported program constant's list"); `pow`
    saves its input."""
    return (vectors * vectors).sum(dim=-1, keepdim=True) ** 0.5


def inverse_length(vectors: torch.Tensor) -> torch.Tensor:
    """1/|v| along the last axis, keeping it (a power, as `length`)."""
    return (vectors * vectors).sum(dim=-1, keepdim=True) ** -0.5


class SphericalHarmonics(torch.nn.Module):
    """Real spherical harmonics Y_0 … Y_lmax of the directions of `vectors`, in e3nn's basis and
    normalisation (`e3nn.o3.spherical_harmonics(range(lmax + 1), v, normalize=True,
    normalization="component")`): built by coupling Y_{l-1} with Y_1 through fusionc's exact CG tables.

    >>> SphericalHarmonics(3)(torch.tensor([[0.0, 2.0, 0.0]])).shape
    torch.Size([1, 16])
    """

    def __init__(self, lmax: int) -> None:
        super().__init__()
        if lmax < 1:
            raise ValueError(f"lmax must be at least 1, got {lmax}")
        self.lmax = lmax
        # the tables T_l, each as its ((2l - 1)·3, 2l + 1) matrix, in one buffer (TorchScript can slice
        # a buffer by offsets, not look one up by name)
        self._tables = np.concatenate([t.reshape(-1) for t in _harmonic_tables(lmax)])
        self._offsets = [0]
        for l in range(2, lmax + 1):
            self._offsets.append(self._offsets[-1] + (2 * l - 1) * 3 * (2 * l + 1))
        self._register(torch.get_default_dtype(), None)

    def _register(self, dtype: torch.dtype, device: torch.device | None) -> None:
        self.register_buffer("tables", torch.tensor(self._tables, dtype=dtype, device=device), persistent=False)

    def _apply(self, fn, recurse=True):
        # rebuilt from the float64 tables: a float32 round trip would lose the float64 values
        super()._apply(fn, recurse)
        self._register(self.tables.dtype, self.tables.device)
        return self

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        unit = vectors * inverse_length(vectors)
        y1 = math.sqrt(3.0) * unit
        out = [torch.ones_like(unit[..., :1]), y1]
        prev = y1
        for l in range(2, self.lmax + 1):
            # (Y_{l-1} ⊗ Y_1) · T as a product of matrices: einsum's backward, like sqrt's, breaks torch.export
            # of autograd.grad (see `length`)
            table = self.tables[self._offsets[l - 2]:self._offsets[l - 1]].view((2 * l - 1) * 3, 2 * l + 1)
            prev = (prev[..., :, None] * y1[..., None, :]).flatten(-2) @ table
            out.append(prev)
        return torch.cat(out, dim=-1)


class RadialBasis(torch.nn.Module):
    """Bessel functions sqrt(2/r_c) sin(nπr/r_c)/r, n = 1 … `num`, times the polynomial cutoff of
    DimeNet (order p: 1 at r = 0; zero, with its first two derivatives, at r_c and beyond).

    >>> RadialBasis(5.0, 8)(torch.tensor([[1.0], [6.0]])).shape
    torch.Size([2, 8])
    """

    def __init__(self, cutoff: float, num: int = 8, p: int = 6) -> None:
        super().__init__()
        self.cutoff, self.num, self.p = float(cutoff), int(num), int(p)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        x, p = r / self.cutoff, self.p
        value = (1.0 - (p + 1.0) * (p + 2.0) / 2.0 * x ** p + p * (p + 2.0) * x ** (p + 1)
                 - p * (p + 1.0) / 2.0 * x ** (p + 2))
        return value * (x < 1.0).to(r.dtype)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        frequencies = torch.arange(1, self.num + 1, dtype=r.dtype, device=r.device) * (math.pi / self.cutoff)
        bessel = math.sqrt(2.0 / self.cutoff) * torch.sin(frequencies * r) * r ** -1
        return bessel * self.envelope(r)


class MLP(torch.nn.Module):
    """A bias-free MLP with SiLU, each layer scaled by 1/sqrt(fan-in) (weights drawn from N(0, 1)), as
    e3nn's FullyConnectedNet: the radial MLPs (an interaction's per-edge weights) and the readouts."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(a, b)) for a, b in zip(sizes, sizes[1:]))
        self.layers = len(sizes) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, w in enumerate(self.weights):
            x = x @ w / math.sqrt(w.shape[0])
            if i < self.layers - 1:
                x = torch.nn.functional.silu(x) * 1.679177  # e3nn's normalize2mom constant for SiLU
        return x

"""Multiplicities by characters: how many independent equivariant maps a fusion can have.

The count of equivariant maps Sym^ν1(V1) ⊗ Sym^ν2(V2) ⊗ … → L is the multiplicity of L in
that representation, computed from group characters, independently of any CG table.

>>> V = Irreps.parse("0e + 1o + 2e + 3o")
>>> [symmetric_multiplicity([(V, 3)], Irrep(l, p)) for l, p in [(0, 1), (1, -1)]]
[8, 12]
"""

from __future__ import annotations

import numpy as np

from fusionc.ir.irreps import Irrep, Irreps


def _chi_rotation(l: int, theta: np.ndarray) -> np.ndarray:
    """Character of the degree-l rotation representation: 1 + 2 sum_m cos(m theta)."""
    return 1 + 2 * sum((np.cos(m * theta) for m in range(1, l + 1)), np.zeros_like(theta))


def _chi(irreps: Irreps, theta: np.ndarray, inversion: int) -> np.ndarray:
    """Character of `irreps` at rotation angle theta, times the inversion when inversion = -1."""
    total = np.zeros_like(theta)
    for b in irreps:
        sign = b.ir.p if inversion == -1 and b.ir.p != 0 else 1
        total += b.mul * sign * _chi_rotation(b.ir.l, theta)
    return total


def _chi_sym(irreps: Irreps, power: int, theta: np.ndarray, inversion: int) -> np.ndarray:
    """Character of the symmetric power, by the Newton recursion over chi(g^k)."""
    chis = [np.ones_like(theta)]
    for n in range(1, power + 1):
        chis.append(sum(_chi(irreps, k * theta, inversion ** k) * chis[n - k] for k in range(1, n + 1)) / n)
    return chis[power]


def symmetric_multiplicity(factors: list[tuple[Irreps, int]], out: Irrep) -> int:
    """Multiplicity of `out` in the tensor product of Sym^power(irreps) over the factors."""
    degree = sum(max(b.ir.l for b in irreps) * power for irreps, power in factors) + out.l + 2
    n = 4 * degree + 8  # the integrand is a trigonometric polynomial: uniform sampling is exact
    theta = 2 * np.pi * np.arange(n) / n
    has_parity = out.p != 0 or any(b.ir.p != 0 for irreps, _ in factors for b in irreps)
    inversions = (1, -1) if has_parity else (1,)
    total = 0.0
    for inversion in inversions:
        chi = np.ones_like(theta)
        for irreps, power in factors:
            chi = chi * _chi_sym(irreps, power, theta, inversion)
        sign = out.p if inversion == -1 and out.p != 0 else 1
        total += np.mean((1 - np.cos(theta)) * chi * sign * _chi_rotation(out.l, theta))
    value = total / len(inversions)
    count = round(value)
    assert abs(value - count) < 1e-6, f"non-integer multiplicity {value}"
    return count

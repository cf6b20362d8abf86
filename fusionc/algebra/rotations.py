"""Real-basis representation matrices of O(3), built from angular-momentum ladder operators.

They share only the change of basis with the CG tables, so checking a diagram against them is
an independent test of equivariance.

>>> R = random_rotation(np.random.default_rng(0))
>>> bool(np.allclose(wigner_d(1, R) @ wigner_d(1, R).T, np.eye(3)))
True
"""

from __future__ import annotations

import functools

import numpy as np

from fusionc.algebra.cg import real_to_complex
from fusionc.ir.irreps import Irreps


@functools.lru_cache(maxsize=None)
def real_generators(l: int) -> np.ndarray:
    """Anti-symmetric real generators (3, 2l+1, 2l+1) of the degree-l representation."""
    m = np.arange(-l, l + 1, dtype=float)
    raising = np.zeros((2 * l + 1, 2 * l + 1))
    for i in range(2 * l):  # J+ |m> = sqrt(l(l+1) - m(m+1)) |m+1>
        raising[i + 1, i] = np.sqrt(l * (l + 1) - m[i] * (m[i] + 1))
    jx = (raising + raising.T) / 2
    jy = (raising - raising.T) / 2j
    jz = np.diag(m)
    q = np.zeros((2 * l + 1, 2 * l + 1), dtype=complex)
    for row, col, value in real_to_complex(l):
        q[row, col] = complex(value)
    gens = np.stack([q.conj().T @ (-1j * j) @ q for j in (jx, jy, jz)])
    assert np.abs(gens.imag).max() < 1e-12
    return np.ascontiguousarray(gens.real)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation vector (axis times angle), uniform in direction, angle in (0, pi)."""
    axis = rng.normal(size=3)
    return axis / np.linalg.norm(axis) * rng.uniform(0.1, np.pi)


def wigner_d(l: int, rotation: np.ndarray) -> np.ndarray:
    """D^l(R) = exp(sum_a theta_a G_a) for the rotation vector theta."""
    generator = np.einsum("a,aij->ij", rotation, real_generators(l))
    # exp of a real anti-symmetric matrix through the eigen-decomposition of the Hermitian i*A
    w, v = np.linalg.eigh(1j * generator)
    return ((v * np.exp(-1j * w)) @ v.conj().T).real


def representation(irreps: Irreps, rotation: np.ndarray, inversion: bool) -> np.ndarray:
    """The block-diagonal matrix by which a `mul_ir` row of `irreps` transforms."""
    d = np.zeros((irreps.dim, irreps.dim))
    for (start, _), block in zip(irreps.slices(), irreps):
        sign = block.ir.p if inversion and block.ir.p != 0 else 1
        dl = sign * wigner_d(block.ir.l, rotation)
        for u in range(block.mul):
            s = start + u * block.ir.dim
            d[s:s + block.ir.dim, s:s + block.ir.dim] = dl
    return d

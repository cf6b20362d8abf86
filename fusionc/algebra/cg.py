"""Real-basis Clebsch–Gordan (Wigner 3j) tensors, computed exactly with sympy.

The convention is e3nn's: complex CG coefficients from the Racah formula (Condon–Shortley
phases) taken to the real spherical-harmonic basis by `change_basis_real_to_complex`, m ordered
-l..l, Frobenius norm 1. Tables are cached on disk.

>>> C = wigner_3j(1, 1, 0)
>>> round(float(C[0, 0, 0]) ** 2 * 3, 12)
1.0
"""

from __future__ import annotations

import functools
from fractions import Fraction
from math import factorial

import numpy as np
import sympy

from fusionc.algebra.cache import cache_root, load_or_build

_CACHE_VERSION = "cg-v1"


def triangle(l1: int, l2: int, l3: int) -> bool:
    return abs(l1 - l2) <= l3 <= l1 + l2


def su2_cg(j1: int, m1: int, j2: int, m2: int, j3: int, m3: int) -> sympy.Expr:
    """<j1 m1 j2 m2 | j3 m3> for integer spins, exactly (Racah's formula)."""
    if m3 != m1 + m2 or not triangle(j1, j2, j3) or max(abs(m1) - j1, abs(m2) - j2, abs(m3) - j3) > 0:
        return sympy.Integer(0)
    f = factorial
    norm = Fraction((2 * j3 + 1) * f(j3 + j1 - j2) * f(j3 - j1 + j2) * f(j1 + j2 - j3) * f(j3 + m3) * f(j3 - m3),
                    f(j1 + j2 + j3 + 1) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2))
    total = Fraction(0)
    for v in range(max(-j1 + j2 + m3, -j1 + m1, 0), min(j2 + j3 + m1, j3 - j1 + j2, j3 + m3) + 1):
        total += (-1) ** (v + j2 + m2) * Fraction(
            f(j2 + j3 + m1 - v) * f(j1 - m1 + v),
            f(v) * f(j3 - j1 + j2 - v) * f(j3 + m3 - v) * f(v + j1 - j2 - m3))
    return sympy.sqrt(sympy.Rational(norm.numerator, norm.denominator)) * sympy.Rational(
        total.numerator, total.denominator)


@functools.lru_cache(maxsize=None)
def real_to_complex(l: int) -> tuple[tuple[int, int, sympy.Expr], ...]:
    """Non-zero entries (row, column, value) of e3nn's real-to-complex change of basis Q_l."""
    s = 1 / sympy.sqrt(2)
    phase = (-sympy.I) ** l
    entries = [(l, l, phase)]
    for m in range(1, l + 1):
        entries += [(l - m, l + m, phase * s), (l - m, l - m, phase * -sympy.I * s),
                    (l + m, l + m, phase * (-1) ** m * s), (l + m, l - m, phase * sympy.I * (-1) ** m * s)]
    return tuple(entries)


def _exact_real_cg(l1: int, l2: int, l3: int) -> dict[tuple[int, int, int], sympy.Expr]:
    """Non-zero entries of the normalised real-basis CG tensor, as exact sympy numbers.

    C_real[j, k, n] = sum Q1[a, j] Q2[b, k] conj(Q3[c, n]) CG[a, b, c] / sqrt(2 l3 + 1),
    the norm of the complex tensor being sqrt(2 l3 + 1).
    """
    out: dict[tuple[int, int, int], sympy.Expr] = {}
    for a, j, q1 in real_to_complex(l1):
        for b, k, q2 in real_to_complex(l2):
            m3 = (a - l1) + (b - l2)
            for c, n, q3 in real_to_complex(l3):
                if c - l3 != m3:
                    continue
                cg = su2_cg(l1, a - l1, l2, b - l2, l3, m3)
                if cg != 0:
                    out[(j, k, n)] = out.get((j, k, n), 0) + q1 * q2 * sympy.conjugate(q3) * cg
    result = {}
    for key, value in out.items():
        value = sympy.expand(value / sympy.sqrt(2 * l3 + 1))
        re, im = value.as_real_imag()
        assert im == 0, f"real-basis CG ({l1},{l2},{l3}){key} is not real: {value}"
        if re != 0:
            result[key] = sympy.radsimp(re)
    return result


def exact_wigner_3j(l1: int, l2: int, l3: int) -> dict[tuple[int, int, int], sympy.Expr]:
    """The non-zero entries of `wigner_3j(l1, l2, l3)` as exact sympy numbers."""
    if not triangle(l1, l2, l3):
        raise ValueError(f"{l1} ⊗ {l2} does not contain {l3}")
    return _exact_real_cg(l1, l2, l3)


def _build_record(l1: int, l2: int, l3: int) -> dict:
    exact = exact_wigner_3j(l1, l2, l3)
    keys = sorted(exact)
    return {"l": [l1, l2, l3], "index": [list(k) for k in keys],
            "exact": [str(exact[k]) for k in keys],
            "value": [float(sympy.N(exact[k], 30)) for k in keys]}


@functools.lru_cache(maxsize=None)
def _wigner_3j_readonly(l1: int, l2: int, l3: int) -> np.ndarray:
    if not triangle(l1, l2, l3):
        raise ValueError(f"{l1} ⊗ {l2} does not contain {l3}")
    path = cache_root() / _CACHE_VERSION / f"{l1}_{l2}_{l3}.json"
    record = load_or_build(path, lambda: _build_record(l1, l2, l3))
    table = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    for (i, j, k), v in zip(record["index"], record["value"]):
        table[i, j, k] = v
    table.setflags(write=False)
    return table


def wigner_3j(l1: int, l2: int, l3: int) -> np.ndarray:
    """The real-basis CG tensor C[i, j, k] (float64, Frobenius norm 1), equal to e3nn's."""
    return _wigner_3j_readonly(l1, l2, l3)


def nonzeros(l1: int, l2: int, l3: int) -> int:
    """Number of non-zero entries of the CG tensor: the work a sparse contraction does."""
    return int(np.count_nonzero(wigner_3j(l1, l2, l3)))


def cg_entries(l1: int, l2: int, l3: int) -> list[tuple[int, int, int, float]]:
    """The non-zeros (i, j, k, value) of a real-basis CG table, in index order."""
    table = wigner_3j(l1, l2, l3)
    return [(i, j, k, float(table[i, j, k])) for i in range(2 * l1 + 1) for j in range(2 * l2 + 1)
            for k in range(2 * l3 + 1) if table[i, j, k] != 0.0]

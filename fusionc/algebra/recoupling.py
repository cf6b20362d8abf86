"""Recoupling of fusion trees with exact Wigner 6j symbols (sympy).

For e3nn's real, unit-norm CG tensors C, the two shapes of a three-leaf tree are related by
    sum_a C(l1,l2,k)[i,j,a] C(k,l3,l)[a,m,n]
        = sum_k' F(k, k') sum_b C(l2,l3,k')[j,m,b] C(l1,k',l)[i,b,n],
    F(k, k') = (-1)^(l1+l2+l3+l) (2k'+1) {l1 l2 k; l3 l k'}.
This is the usual F = (-1)^(l1+l2+l3+l) sqrt((2k+1)(2k'+1)) {6j} of Condon–Shortley CG
coefficients, times sqrt((2k'+1)/(2k+1)) for the unit-norm tables; the phases of the real basis
cancel between the two shapes.

>>> recoupling(1, 1, 1, 1, 2, 1)
1/2
"""

from __future__ import annotations

import functools

import sympy
from sympy.physics.wigner import wigner_6j as _sympy_6j

from fusionc.algebra.cg import triangle


@functools.lru_cache(maxsize=None)
def wigner_6j(j1: int, j2: int, j3: int, j4: int, j5: int, j6: int) -> sympy.Expr:
    """The Wigner 6j symbol {j1 j2 j3; j4 j5 j6}, exactly."""
    return _sympy_6j(j1, j2, j3, j4, j5, j6)


@functools.lru_cache(maxsize=None)
def recoupling(l1: int, l2: int, l3: int, l: int, k: int, k2: int) -> sympy.Expr:
    """F(k, k2): the weight of the tree (l1 ⊗ (l2 ⊗ l3)_k2)_l in the tree ((l1 ⊗ l2)_k ⊗ l3)_l."""
    if not (triangle(l1, l2, k) and triangle(k, l3, l) and triangle(l2, l3, k2) and triangle(l1, k2, l)):
        return sympy.Integer(0)
    return (-1) ** (l1 + l2 + l3 + l) * (2 * k2 + 1) * wigner_6j(l1, l2, k, l3, l, k2)


def recoupling_value(l1: int, l2: int, l3: int, l: int, k: int, k2: int) -> float:
    return float(recoupling(l1, l2, l3, l, k, k2))

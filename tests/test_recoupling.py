"""Recoupling: exact 6j symbols, the F-move identity on CG tables, and the pass that rewrites a
term into the cheaper shape without changing its function."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import sympy
import torch

from conftest import REPO, slow_unless
from fusionc.algebra.cg import triangle, wigner_3j
from fusionc.algebra.recoupling import recoupling_value, wigner_6j
from fusionc.analysis.plan import term_cost
from fusionc.analysis.recouple import recouple_vertex
from fusionc.backends import get_backend
from fusionc.pipeline import compile_diagrams, compile_source
from fusionc.testing import random_inputs


def test_6j_known_values() -> None:
    assert wigner_6j(1, 1, 1, 1, 1, 1) == sympy.Rational(1, 6)
    assert wigner_6j(0, 1, 1, 1, 1, 1) == sympy.Rational(-1, 3)
    assert wigner_6j(2, 2, 2, 2, 2, 2) == sympy.Rational(-3, 70)


@pytest.mark.parametrize("l1", slow_unless(range(4), lambda l1: l1 < 2))
def test_f_move_relates_the_two_tree_shapes(l1: int) -> None:
    """((l1 l2)_k l3)_l = sum_k' F (l1 (l2 l3)_k')_l on e3nn's real unit-norm CG tables."""
    for l2 in range(4):
        for l3 in range(4):
            for l in range(l1 + l2 + l3 + 1):
                for k in range(abs(l1 - l2), l1 + l2 + 1):
                    if not triangle(k, l3, l):
                        continue
                    left = np.einsum("ija,amn->ijmn", wigner_3j(l1, l2, k), wigner_3j(k, l3, l))
                    right = sum(recoupling_value(l1, l2, l3, l, k, k2)
                                * np.einsum("jmb,ibn->ijmn", wigner_3j(l2, l3, k2), wigner_3j(l1, k2, l))
                                for k2 in range(abs(l2 - l3), l2 + l3 + 1) if triangle(l1, k2, l))
                    assert np.abs(left - right).max() < 1e-13


SOURCES = {
    "three-none": """diagram d { in s : 4x2e  in a : 4x(0e + 1o + 2e)  in b : 4x(0e + 1o + 2e)
                     out y : 4x(0e + 1o + 2e)  y = fuse(s, a, b) mix none }""",
    "three-per": """diagram d { in h : 4x(0e + 1o + 2e + 3o)  in a : 4x(0e + 1o)  in b : 4x(0e + 1o)
                    in z : index(3)  out y : 4x(0e + 1o + 2e + 3o)  y = fuse(h, a, b) mix uuu per z }""",
    "four-shared": """diagram d { in a : 2x(0e + 1o)  in b : 2x(1o + 2e)  in c : 2x(0e + 1o)  in e : 2x(1o + 2e)
                      out y : 2x(0e + 1o + 2e)  y = fuse(a, b, c, e; lmax=2) mix uuu }""",
    "three-lmax": """diagram d { in a : 3x(1o + 2e)  in b : 3x(1o + 2e)  in c : 3x(0e + 1o)
                     out y : 3x(1o + 2e)  y = fuse(a, b, c; lmax=1) mix uuu }""",
}


def _with_shape(diagrams, recoupled: bool):
    def shape(t):
        if not t.is_tree or len(t.operands) < 3:
            return t
        return recouple_vertex(replace(t, recoupled=None)) if recoupled else replace(t, recoupled=None)

    return tuple(d.replace_values(tuple(replace(v, terms=tuple(shape(t) for t in v.terms)) for v in d.values))
                 for d in diagrams)


def _module(diagrams, source: str):
    namespace: dict = {}
    code = get_backend("torch")(compile_diagrams(diagrams, source, "recouple.fus", "torch"))
    exec(compile(code, "recouple.fus", "exec"), namespace)
    return namespace[diagrams[0].name](dtype=torch.float64)


@pytest.mark.parametrize("name", slow_unless(SOURCES, lambda name: name == "three-lmax"))
def test_recoupled_term_computes_the_same_function(name: str) -> None:
    source = SOURCES[name]
    diagrams = compile_source(source)
    canonical, split = _module(_with_shape(diagrams, False), source), _module(_with_shape(diagrams, True), source)
    split.load_state_dict(canonical.state_dict())
    with torch.no_grad():
        canonical.weight.normal_()
        split.weight.copy_(canonical.weight)
    args = random_inputs(canonical, diagrams[0], 6, torch.Generator().manual_seed(3))
    expected = canonical(*args)
    assert torch.allclose(split(*args), expected, rtol=0, atol=1e-10 * expected.abs().max().item())


def test_pass_recouples_only_when_cheaper() -> None:
    cheap = compile_source(SOURCES["three-none"])[0]
    assert cheap.vertices[0].recoupled is not None
    t = cheap.vertices[0]
    assert term_cost(t) < term_cost(replace(t, recoupled=None))
    block = compile_source((REPO / "kernels" / "fusion_block.fus").read_text())[1]  # fusion_block_3
    t = block.vertices[0]
    assert t.recoupled is None
    assert term_cost(recouple_vertex(t)) >= term_cost(t)

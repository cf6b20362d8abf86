"""Derivative programs: the backward and double backward that the ops run are programs compiled
from the diagram (fusionc.analysis.program.derivative), not autograd. Each is compared with an
independent reference, torch.func.vjp through the previous program's torch code, in float64, for
every diagram of the standard library and for random n-ary diagrams."""

from __future__ import annotations

import pytest
import torch

import fusionc
from fusionc.analysis.program import derivative, lower
from fusionc.analysis.plan import plan_diagram
from fusionc.pipeline import compile_source
from fusionc.testing import random_inputs, random_nary_diagram

from conftest import KERNELS


def _cases():
    for path in KERNELS:
        for d in compile_source(path.read_text(), str(path)):
            yield pytest.param(path, d.name, id=f"{path.stem}.{d.name}")


def _vjp(fn, rows, weight, constants, cotangents):
    """Gradients of fn's floating row inputs, then of the weight, by autograd through its code."""
    floats = [i for i, r in enumerate(rows) if r.is_floating_point()]

    def of(weight, *xs):
        args = list(rows)
        for i, x in zip(floats, xs):
            args[i] = x
        return fn(*args, weight, *constants)

    _, pullback = torch.func.vjp(of, weight, *(rows[i] for i in floats))
    result = pullback(cotangents)
    return list(result[1:]) + [result[0]]


def _check_chain(ops, name: str, diagram, seed: int) -> None:
    module = getattr(ops, name)(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    rows = random_inputs(module, diagram, 5, g)
    weight = torch.randn(module.weight.shape, generator=g, dtype=torch.float64)
    constants = module.constants()
    code = ops.module
    forward, first, second = (getattr(code, f"_{name}{suffix}") for suffix in ("", "_d", "_d_d2"))
    outputs = forward(*rows, weight, *constants)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outputs]
    got = first(*rows, *cotangents, weight, *constants)
    want = _vjp(forward, rows, weight, constants, cotangents)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    rows2 = rows + cotangents
    cotangents2 = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in got]
    got2 = second(*rows2, *cotangents2, weight, *constants)
    want2 = _vjp(first, rows2, weight, constants, cotangents2)
    assert len(got2) == len(want2)
    for a, b in zip(got2, want2):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path, name", list(_cases()))
def test_derivative_programs_match_autograd(path, name):
    ops = fusionc.load(path)
    diagram = next(d for d in ops.diagrams if d.name == name)
    _check_chain(ops, name, diagram, seed=1)


@pytest.mark.parametrize("seed", range(5))
def test_derivative_programs_of_random_nary_diagrams(seed):
    ops = fusionc.loads(random_nary_diagram(seed, lmax=2))
    (diagram,) = ops.diagrams
    _check_chain(ops, diagram.name, diagram, seed)


def test_ops_run_the_derivative_programs():
    """The op's autograd calls the derivative program's op, not autograd through the forward."""
    ops = fusionc.load(KERNELS[-1].parent / "tensor_products.fus")
    module = ops.fc_tp(dtype=torch.float64)
    x = torch.randn(3, 288, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    with torch.profiler.profile() as prof:
        (z,) = [module(x, y)]
        (gx,) = torch.autograd.grad(z.pow(2).sum(), x, create_graph=True)
        gx.sum().backward()
    names = {e.name for e in prof.events()}
    assert any(n.endswith("::fc_tp_d") for n in names)
    assert any(n.endswith("::fc_tp_d_d2") for n in names)


def test_weight_gradients_reduce_over_rows():
    """Shared weights have no rows axis: their gradient program sums over rows by construction."""
    (d,) = compile_source(
        "diagram t {\n in x : 2x0e + 2x1o\n in y : 0e + 1o\n out z : 2x1o\n z = fuse(x, y) mix uvw\n}\n")
    grads = derivative(lower(d, plan_diagram(d)))
    (weight_grad,) = [o for o in grads.outputs if o.endswith("weight")]
    assert not grads.tensors[weight_grad].rows
    writers = [s for s in grads.statements if s.out.tensor == weight_grad]
    assert writers and all("z" not in s.out.labels and any("z" in v.labels for v in s.operands) for s in writers)

"""Derivative programs: the backward and double backward that the ops run on the CPU are programs
compiled from the diagram (fusionc.analysis.program.derivative), not autograd: native kernels (the
`__cpu` versions), or torch code where no statement runs natively. Each is compared with an
independent reference, torch.func.vjp through the previous program's code, in float64, for every
diagram of the standard library and for random n-ary diagrams."""

from __future__ import annotations

import pytest
import torch

import fusionc
from fusionc.runtime.torch_ops import first_order
from fusionc.analysis.program import derivative, lower
from fusionc.analysis.plan import plan_diagram
from fusionc.pipeline import compile_source
from fusionc.testing import random_inputs, random_nary_diagram

from conftest import KERNELS, slow


def _cases():
    for path in KERNELS:
        for d in compile_source(path.read_text(), str(path)):
            # the quick subset: the two-input products but conv_tp and cormorant's (mace_product's and
            # fusion_block's many derivative programs take seconds each; conv_tp's second derivative
            # compiles a library at -O3 per cotangent, 22 s)
            marks = [slow] if path.stem in ("fusion_block", "mace_product") or d.name == "conv_tp" else []
            yield pytest.param(path, d.name, id=f"{path.stem}.{d.name}", marks=marks)


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


def _close(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _program(code, name: str):
    """A derivative program as the CPU runs it: its native version, else its torch code."""
    return getattr(code, f"{name}__cpu", None) or getattr(code, name)


def _check_chain(ops, name: str, diagram, seed: int) -> None:
    """Per output: the derivative program for its cotangent against the VJP of the forward with
    that cotangent (the others zero), whole and masked to each gradient; then its own program
    against the VJP of the first derivative (autograd through the forward's torch code, twice), per
    cotangent (masked to it) and for all at once."""
    module = getattr(ops, name)(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    rows = random_inputs(module, diagram, 5, g)
    weight = torch.randn(module.weight.shape, generator=g, dtype=torch.float64)
    constants = module.constants()
    code = ops.module
    forward = getattr(code, f"_{name}")
    outputs = forward(*rows, weight, *constants)
    for k, value in enumerate(diagram.outputs):
        first_name = f"_{name}__d" + (f"_{value.name}" if len(outputs) > 1 else "")
        first = _program(code, first_name)
        cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64) if j == k else torch.zeros_like(o)
                      for j, o in enumerate(outputs)]
        got = first(*rows, cotangents[k], weight, *constants)
        reference = _vjp(forward, rows, weight, constants, cotangents)
        _close(got, reference)
        for j in range(len(got)):  # masked to one gradient: that one, as the whole program gives it; no other
            masked = first(*rows, cotangents[k], weight, *constants, _mask=1 << j)
            _close(masked[j:j + 1], reference[j:j + 1])
            assert not any(x.any() for i, x in enumerate(masked) if i != j)
        rows2 = rows + [cotangents[k]]
        first_reference = first_order(forward, k, len(rows))  # autograd through the forward's torch code
        second = _program(code, f"{first_name}__d2")
        for j in range(len(got)):
            cotangents2 = [torch.randn(o.shape, generator=g, dtype=torch.float64) if i == j else torch.zeros_like(o)
                           for i, o in enumerate(got)]
            got2 = second(*rows2, *cotangents2, weight, *constants, _mask=1 << j)
            _close(got2, _vjp(first_reference, rows2, weight, constants, cotangents2))
        cotangents2 = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in got]
        _close(second(*rows2, *cotangents2, weight, *constants),
               _vjp(first_reference, rows2, weight, constants, cotangents2))


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


def _fusionc_ops_run(fn) -> list[tuple[str, int]]:
    """The fusionc ops fn runs, in order, each with its mask (-1: none given)."""
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    return [(e.name.split("::")[-1], e.concrete_inputs[-1]) for e in prof.events() if e.name.startswith("fusionc_")]


def test_ops_run_the_derivative_programs():
    """The op's autograd calls the derivative program's op, not autograd through the forward,
    masked to the gradient used (x's: bit 0 of d_x, d_y, d_weight), and its own derivative masked
    to the cotangent present (that of d_x: bit 0)."""
    ops = fusionc.load(KERNELS[-1].parent / "tensor_products.fus")
    module = ops.fc_tp(dtype=torch.float64)
    x = torch.randn(3, 288, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)

    def run():
        (gx,) = torch.autograd.grad(module(x, y).pow(2).sum(), x, create_graph=True)
        gx.sum().backward()

    assert _fusionc_ops_run(run) == [("fc_tp", -1), ("fc_tp__d", 0b001), ("fc_tp__d__d2", 0b001),
                                     ("fc_tp__d", 0b111)]


def test_backward_computes_only_the_gradients_autograd_uses():
    """The forces' `autograd.grad(energy, y)` runs the vector-Jacobian product masked to y's
    gradient alone (the weights' and x's gradient nodes do not run); an input that does not require
    grad gets none; every gradient equals the one the whole program gives, and a masked call
    leaves the gradients it was not asked for zero (their statements did not run)."""
    ops = fusionc.load(KERNELS[-1].parent / "tensor_products.fus")
    module = ops.fc_tp(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 288, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 16, generator=g, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(4, 288, generator=g, dtype=torch.float64)
    full = dict(zip("xyw", torch.autograd.grad(module(x, y), [x, y, module.weight], cotangent)))
    assert _fusionc_ops_run(lambda: torch.autograd.grad(module(x, y), [x, y, module.weight], cotangent)) == [
        ("fc_tp", -1), ("fc_tp__d", 0b111)]

    for wrt, mask in (("y", 0b010), ("x", 0b001), ("xy", 0b011)):
        got: list = []
        inputs = [{"x": x, "y": y}[k] for k in wrt]
        ran = _fusionc_ops_run(lambda: got.extend(torch.autograd.grad(module(x, y), inputs, cotangent)))
        assert ran == [("fc_tp", -1), ("fc_tp__d", mask)], ran
        for k, grad in zip(wrt, got):
            torch.testing.assert_close(grad, full[k], rtol=1e-12, atol=1e-12)
        masked = ops.module._fc_tp__d__cpu(x.detach(), y.detach(), cotangent, module.weight.detach(), *module.constants(),
                                      _mask=mask)
        for k, grad in zip("xyw", masked):
            assert grad.abs().max() > 0 if k in wrt else not grad.any(), k

    # x constant, weights frozen: backward() needs y's gradient only
    module.weight.requires_grad_(False)
    y.grad = None
    ran = _fusionc_ops_run(lambda: module(x.detach(), y).backward(cotangent))
    assert ran == [("fc_tp", -1), ("fc_tp__d", 0b010)], ran
    torch.testing.assert_close(y.grad, full["y"], rtol=1e-12, atol=1e-12)


def test_weight_gradients_reduce_over_rows():
    """Shared weights have no rows axis: their gradient program sums over rows by construction."""
    (d,) = compile_source(
        "diagram t {\n in x : 2x0e + 2x1o\n in y : 0e + 1o\n out z : 2x1o\n z = fuse(x, y) mix uvw\n}\n")
    grads = derivative(lower(d, plan_diagram(d)), "t_d")
    (weight_grad,) = [o for o in grads.outputs if o.endswith("weight")]
    assert not grads.tensors[weight_grad].rows
    writers = [s for s in grads.statements if s.out.tensor == weight_grad]
    assert writers and all("z" not in s.out.labels and any("z" in v.labels for v in s.operands) for s in writers)

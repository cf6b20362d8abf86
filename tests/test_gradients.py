"""First and second derivatives of compiled fusionc modules.

`torch.autograd.gradcheck` and `gradgradcheck` in float64 compare the analytic derivatives of
small diagrams (every mode, per-row weights, a linear map and a diagram with a `let` inner edge)
with finite differences, with respect to every float input and the internal weight. A
force-training style test then differentiates an energy with respect to positions with
`create_graph=True`, backpropagates a loss on the forces into the weights, and checks the forces
against finite differences of the energy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e3nn import o3
from torch.func import functional_call

import fusionc
from conftest import slow, slow_unless
from fusionc.testing import random_diagram, random_inputs

MODES = ("uvw", "uvu", "uuu", "uvuv", "none")
WEIGHTED_MODES = ("uvw", "uvu", "uuu", "uvuv")
KERNELS = Path(__file__).parents[1] / "kernels" / "tensor_products.fus"
BATCH = 2

LINEAR = """
diagram small_linear {
    in  x : 3x0e + 2x1o + 1x2e + 2x1e
    out y : 2x0e + 3x1o + 1x2e
    y = x mix uvw
}
"""


def compiled(source: str):
    ops = fusionc.loads(source)
    (diagram,) = ops.diagrams
    return getattr(ops, diagram.name)(dtype=torch.float64), diagram


def differentiable_call(module: torch.nn.Module, diagram, seed: int = 0):
    """(function, inputs): the module as a function of its float inputs and, when it has one, of
    its internal weight, with every input requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    args = [a.requires_grad_() for a in random_inputs(module, diagram, BATCH, generator)]
    assert all(a.is_floating_point() for a in args)
    if module.weight_numel == 0:
        return module, tuple(args)
    weight = torch.randn(module.weight_numel, generator=generator, dtype=torch.float64, requires_grad=True)

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        *features, w = inputs
        return functional_call(module, {"weight": w}, tuple(features))

    return call, (*args, weight)


def check_derivatives(module: torch.nn.Module, diagram, fast_mode: bool = True) -> None:
    """gradcheck and gradgradcheck. Fast mode compares a random projection v^T J u of the analytic
    Jacobian (and of the Jacobian of the backward) with finite differences, which a wrong
    derivative fails with probability one at a fraction of the cost of the full Jacobian."""
    function, inputs = differentiable_call(module, diagram)
    torch.manual_seed(0)
    assert torch.autograd.gradcheck(function, inputs, fast_mode=fast_mode)
    assert torch.autograd.gradgradcheck(function, inputs, fast_mode=fast_mode)


# the quick subset: every mode's smallest diagram, whole Jacobians (test_tensor_product_full_jacobian)
@slow
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("mode", MODES)
def test_tensor_product(mode: str, seed: int) -> None:
    check_derivatives(*compiled(random_diagram(seed, mode, lmax=2, max_mul=3)))


@pytest.mark.parametrize("seed", slow_unless(range(3), lambda s: s == 0), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("mode", slow_unless(WEIGHTED_MODES, lambda mode: mode == "uvu"))  # quick: uvu, seed 0
def test_tensor_product_per_row_weights(mode: str, seed: int) -> None:
    check_derivatives(*compiled(random_diagram(seed, mode, lmax=2, max_mul=3, by=True)))


@pytest.mark.parametrize("mode", MODES)
def test_tensor_product_full_jacobian(mode: str) -> None:
    """Every entry of the Jacobians, on the smallest diagram of each mode."""
    check_derivatives(*compiled(random_diagram(0, mode, lmax=1, max_mul=2)), fast_mode=False)


def test_linear() -> None:
    check_derivatives(*compiled(LINEAR))


@slow
def test_inner_edge() -> None:
    """`tp_then_linear`: a `let` product feeding a linear map plus a skip connection."""
    ops = fusionc.load(KERNELS)
    diagram = next(d for d in ops.diagrams if d.name == "tp_then_linear")
    check_derivatives(ops.tp_then_linear(dtype=torch.float64), diagram)


# --------------------------------------------------------------------------------------------
# force training

ENERGY = """
diagram pair_energy {
    in  h : 4x0e + 4x1o + 4x2e
    in  sh : 0e + 1o + 2e
    out e : 3x0e
    e = fuse(h, sh) mix uvw
}
"""
SH = o3.Irreps("0e + 1o + 2e")


def edge_features(pos: torch.Tensor, channels: list[torch.Tensor]):
    """Per edge i -> j of a fully connected cloud: the source atom's density features
    h_i = sum_k exp(-|r_ik|^2) Y(r_ik), spread over channels per l, and the edge's Y(r_ij)."""
    n = pos.shape[0]
    src, dst = (~torch.eye(n, dtype=torch.bool)).nonzero(as_tuple=True)
    vectors = pos[dst] - pos[src]
    sh = o3.spherical_harmonics(SH, vectors, normalize=True, normalization="component")
    radial = torch.exp(-(vectors ** 2).sum(-1, keepdim=True))
    density = torch.zeros(n, SH.dim, dtype=pos.dtype).index_add(0, src, radial * sh)
    h = torch.cat([(c[:, None] * density[:, None, sl]).reshape(n, -1)
                   for c, sl in zip(channels, SH.slices())], dim=1)
    return h[src], sh * radial


def test_force_training() -> None:
    module, _ = compiled(ENERGY)
    g = torch.Generator().manual_seed(7)
    channels = [torch.randn(4, generator=g, dtype=torch.float64) for _ in SH]
    target = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def energy(pos: torch.Tensor) -> torch.Tensor:
        return module(*edge_features(pos, channels)).sum()

    pos = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    e = energy(pos)
    (forces,) = torch.autograd.grad(-e, pos, create_graph=True)
    assert forces.abs().max() > 0

    # forces against central differences of the energy
    eps = 1e-6
    numeric = torch.zeros_like(forces)
    with torch.no_grad():
        for index in range(pos.numel()):
            step = torch.zeros(pos.numel(), dtype=torch.float64)
            step[index] = eps
            step = step.view_as(pos)
            numeric.view(-1)[index] = -(energy(pos + step) - energy(pos - step)) / (2 * eps)
    torch.testing.assert_close(forces.detach(), numeric, rtol=1e-6, atol=1e-8)

    # a loss on the forces reaches the weights through the double backward
    loss = ((forces - target) ** 2).mean() + 0.1 * e ** 2
    loss.backward()
    grad = module.weight.grad
    assert grad is not None and grad.shape == module.weight.shape
    assert torch.isfinite(grad).all() and grad.abs().max() > 0

    # the weight gradient of the force term alone matches a finite difference along a direction
    direction = torch.randn(module.weight_numel, generator=g, dtype=torch.float64)

    def force_loss() -> torch.Tensor:
        p = pos.detach().requires_grad_()
        (f,) = torch.autograd.grad(-energy(p), p, create_graph=True)
        return ((f - target) ** 2).mean()

    module.weight.grad = None
    force_loss().backward()
    analytic = (module.weight.grad * direction).sum()
    with torch.no_grad():
        module.weight += eps * direction
    plus = force_loss().detach()
    with torch.no_grad():
        module.weight -= 2 * eps * direction
    minus = force_loss().detach()
    with torch.no_grad():
        module.weight += eps * direction
    torch.testing.assert_close(analytic, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-9)

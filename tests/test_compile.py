"""torch.compile(fullgraph=True) over a model built from fusionc ops: no graph break, and the
same outputs and gradients as eager mode."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import fusionc
from conftest import REPO, slow


class SmallModel(torch.nn.Module):
    """fc_tp, conv_tp (per-row weights from a small MLP) and the MACE product, chained."""

    def __init__(self) -> None:
        super().__init__()
        tp = fusionc.load(REPO / "kernels" / "tensor_products.fus")
        mace = fusionc.load(REPO / "kernels" / "mace_product.fus")
        self.fc = tp.fc_tp()
        self.conv = tp.conv_tp()
        self.radial = torch.nn.Linear(4, self.conv.input_weight_numel["w"])
        self.product = mace.mace_product_2()
        self.embed = torch.nn.Linear(992, 1024)

    def forward(self, x, sh, r, species):
        h = self.fc(x, sh)
        m = self.conv(h, sh, self.radial(r))
        return self.product(self.embed(m), species).pow(2).sum()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _inputs(generator: torch.Generator):
    return (torch.randn(6, 288, generator=generator), torch.randn(6, 16, generator=generator),
            torch.randn(6, 4, generator=generator), torch.randint(0, 10, (6,), generator=generator))


@slow
def test_compiled_model_has_no_graph_break_and_matches_eager() -> None:
    torch.manual_seed(0)
    model = SmallModel()
    args = _inputs(torch.Generator().manual_seed(1))
    eager = model(*args)
    eager.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    out.backward()
    assert sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_ops_are_registered_with_torch_library() -> None:
    ops = fusionc.load(REPO / "kernels" / "tensor_products.fus")
    namespace = ops.module._ops.namespace
    packet = getattr(getattr(torch.ops, namespace), "fc_tp")
    x, y = torch.randn(3, 288), torch.randn(3, 16)
    module = ops.fc_tp()
    rows = packet([x, y], module.weight, module.constants())
    torch.testing.assert_close(rows[0], module(x, y))


def test_fake_tensors_give_output_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = fusionc.load(REPO / "kernels" / "mace_product.fus")
    module = ops.mace_product()
    real = [torch.randn(5, 1024), torch.zeros(5, dtype=torch.long), module.weight.detach(), *module.constants()]
    with FakeTensorMode() as mode:
        a, z, weight, *constants = (mode.from_tensor(t) for t in real)
        (out,) = ops.module._ops["mace_product"]([a, z], weight, constants)
        assert out.shape == (5, 256)

"""Numerical parity of compiled fusionc modules with e3nn, plus the call-time contract.

Every comparison builds the e3nn reference independently of fusionc's path enumeration: the
instruction list is every (i1, i2, i_out) block triple whose irreps couple according to e3nn's
own `Irreps` (`ir_out in ir1 * ir2`), in lexicographic order. fusionc's flat weight is copied
into e3nn's weight (after checking that the sizes agree), both modules run on the same inputs,
and the relative error (max |difference| / max |reference|) must stay within 1e-12 in float64
and 1e-5 in float32.

Covered: random two-input diagrams for every mode (`uvw`, `uvu`, `uuu`, `uvuv`, `none`), with
internal and with per-row (`by w`) weights; random `o3.Linear` maps; the e3nn-expressible
diagrams of `kernels/tensor_products.fus`; leading batch shapes; and the ValueErrors raised by
bad calls. The quick subset (`pytest -m "not slow"`) keeps the first seeds of each random family.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
import torch
from e3nn import o3

import fusionc
from conftest import default_dtype, slow_unless
from fusionc.testing import random_diagram, random_inputs

MODES = ("uvw", "uvu", "uuu", "uvuv", "none")
WEIGHTED_MODES = ("uvw", "uvu", "uuu", "uvuv")
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
BATCH = 5
KERNELS = Path(__file__).parents[1] / "kernels" / "tensor_products.fus"


# --------------------------------------------------------------------------------------------
# helpers


def e3nn_instructions(irreps_x: o3.Irreps, irreps_y: o3.Irreps, irreps_out: o3.Irreps,
                      mode: str) -> list[tuple[int, int, int, str, bool]]:
    """Every coupling block triple, lexicographically, as e3nn instructions; fusionc's `none` is
    e3nn's `uuu` without a weight."""
    e3nn_mode, has_weight = ("uuu", False) if mode == "none" else (mode, True)
    return [(i1, i2, i_out, e3nn_mode, has_weight)
            for i1, (_, ir1) in enumerate(irreps_x)
            for i2, (_, ir2) in enumerate(irreps_y)
            for i_out, (_, ir_out) in enumerate(irreps_out)
            if ir_out in ir1 * ir2]


def e3nn_tensor_product(module: torch.nn.Module, mode: str, dtype: torch.dtype,
                        per_row: bool = False) -> o3.TensorProduct:
    """The e3nn TensorProduct matching a two-input fusionc module, with its weight copied over."""
    irreps_x, irreps_y = map(o3.Irreps, module.irreps_in)
    (irreps_out,) = map(o3.Irreps, module.irreps_out)
    instructions = e3nn_instructions(irreps_x, irreps_y, irreps_out, mode)
    options = dict(shared_weights=False, internal_weights=False) if per_row else {}
    with default_dtype(dtype):
        # opt_einsum_fx only reorders contractions; skipping it keeps e3nn's construction cheap
        tp = o3.TensorProduct(irreps_x, irreps_y, irreps_out, instructions, **options,
                              _optimize_einsums=False)
    if per_row:
        assert module.weight_numel == 0
        assert tp.weight_numel == sum(module.input_weight_numel.values())
    else:
        assert tp.weight_numel == module.weight_numel
        if tp.weight_numel:
            with torch.no_grad():
                tp.weight.copy_(module.weight)
    return tp


def relative_error(reference: torch.Tensor, result: torch.Tensor) -> float:
    assert reference.shape == result.shape and reference.dtype == result.dtype
    return ((reference - result).abs().max() / reference.abs().max()).item()


def assert_parity(reference: torch.Tensor, result: torch.Tensor, dtype: torch.dtype) -> None:
    error = relative_error(reference, result)
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} > {TOLERANCE[dtype]:.0e}"


@functools.lru_cache(maxsize=None)
def _loads(source: str):
    return fusionc.loads(source)


def compiled(source: str, dtype: torch.dtype):
    """(module, diagram) for the single diagram of `source`, compiled once for both dtypes."""
    ops = _loads(source)
    (diagram,) = ops.diagrams
    return getattr(ops, diagram.name)(dtype=dtype), diagram


def check_two_input(module: torch.nn.Module, diagram, mode: str, dtype: torch.dtype, per_row: bool,
                    seed: int) -> None:
    tp = e3nn_tensor_product(module, mode, dtype, per_row)
    args = random_inputs(module, diagram, BATCH, torch.Generator().manual_seed(seed), dtype)
    with torch.no_grad():
        assert_parity(tp(*args), module(*args), dtype)


# --------------------------------------------------------------------------------------------
# random tensor products


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", slow_unless(range(30), lambda s: s < 1), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("mode", MODES)
def test_random_tensor_product(mode: str, seed: int, dtype: torch.dtype) -> None:
    module, diagram = compiled(random_diagram(seed, mode), dtype)
    check_two_input(module, diagram, mode, dtype, per_row=False, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", slow_unless(range(10), lambda s: s < 1), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("mode", WEIGHTED_MODES)
def test_random_tensor_product_per_row_weights(mode: str, seed: int, dtype: torch.dtype) -> None:
    module, diagram = compiled(random_diagram(seed, mode, by=True), dtype)
    assert [i.kind for i in diagram.inputs] == ["irreps", "irreps", "weights"]
    check_two_input(module, diagram, mode, dtype, per_row=True, seed=seed)


# --------------------------------------------------------------------------------------------
# random linear maps


def random_linear_source(seed: int) -> str:
    """`y = x mix uvw` between random irreps; every output irrep also occurs in the input (the
    input may hold irreps the output lacks, and the output may repeat an irrep or be unsorted)."""
    rng = random.Random(seed)
    pool = [f"{l}{p}" for l in range(5) for p in "eo"]
    inputs = rng.sample(pool, rng.randint(1, 5))
    outputs = rng.sample(inputs, rng.randint(1, len(inputs)))
    if rng.random() < 0.3:
        outputs.append(rng.choice(outputs))
    x = " + ".join(f"{rng.randint(1, 16)}x{ir}" for ir in sorted(inputs))
    y = " + ".join(f"{rng.randint(1, 16)}x{ir}" for ir in outputs)
    return f"diagram linear_{seed} {{\n    in  x : {x}\n    out y : {y}\n    y = x mix uvw\n}}\n"


def e3nn_linear(module: torch.nn.Module, dtype: torch.dtype) -> o3.Linear:
    with default_dtype(dtype):
        linear = o3.Linear(o3.Irreps(module.irreps_in[0]), o3.Irreps(module.irreps_out[0]),
                           _optimize_einsums=False)
    assert linear.weight_numel == module.weight_numel
    with torch.no_grad():
        linear.weight.copy_(module.weight)
    return linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", slow_unless(range(30), lambda s: s < 2), ids=lambda s: f"seed{s}")
def test_random_linear(seed: int, dtype: torch.dtype) -> None:
    module, _ = compiled(random_linear_source(seed), dtype)
    linear = e3nn_linear(module, dtype)
    x = torch.randn(BATCH, linear.irreps_in.dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        assert_parity(linear(x), module(x), dtype)


# --------------------------------------------------------------------------------------------
# kernels/tensor_products.fus


@pytest.fixture(scope="module")
def kernels():
    return fusionc.load(KERNELS)


KERNEL_CASES = {  # diagram name -> (mode, per-row weights)
    "fc_tp": ("uvw", False),
    "conv_tp": ("uvu", True),
    "elementwise_tp": ("uuu", False),
    "full_tp": ("uvuv", False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_kernel_tensor_product(kernels, name: str, dtype: torch.dtype) -> None:
    mode, per_row = KERNEL_CASES[name]
    module = getattr(kernels, name)(dtype=dtype)
    diagram = next(d for d in kernels.diagrams if d.name == name)
    check_two_input(module, diagram, mode, dtype, per_row, seed=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_linear(kernels, dtype: torch.dtype) -> None:
    module = kernels.linear(dtype=dtype)
    linear = e3nn_linear(module, dtype)
    x = torch.randn(BATCH, linear.irreps_in.dim, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.no_grad():
        assert_parity(linear(x), module(x), dtype)


def test_kernel_dtype_move_matches_direct_construction(kernels) -> None:
    """A float32 module moved to float64 rebuilds exact CG tables: still within float64 parity."""
    module = kernels.fc_tp(dtype=torch.float32).to(torch.float64)
    diagram = next(d for d in kernels.diagrams if d.name == "fc_tp")
    check_two_input(module, diagram, "uvw", torch.float64, per_row=False, seed=3)


# --------------------------------------------------------------------------------------------
# leading batch shapes


@pytest.mark.parametrize("name", ["fc_tp", "conv_tp", "linear", "tp_then_linear"])
def test_leading_batch_shape(kernels, name: str) -> None:
    module = getattr(kernels, name)(dtype=torch.float64)
    diagram = next(d for d in kernels.diagrams if d.name == name)
    flat = random_inputs(module, diagram, 6, torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = module(*flat)
        result = module(*(a.reshape(2, 3, -1) for a in flat))
    assert result.shape == (2, 3, expected.shape[-1])
    torch.testing.assert_close(result, expected.reshape(2, 3, -1), rtol=0, atol=1e-13)


def test_broadcast_batch_shapes(kernels) -> None:
    """Leading shapes broadcast like torch: (2, 1, dim) with (3, dim) gives (2, 3, dim_out), and a
    single (numel,) weight vector is shared by every row."""
    module = kernels.conv_tp(dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 1, 288, generator=g, dtype=torch.float64)
    sh = torch.randn(3, 16, generator=g, dtype=torch.float64)
    w = torch.randn(768, generator=g, dtype=torch.float64)
    with torch.no_grad():
        result = module(h, sh, w)
        expected = module(h.expand(2, 3, 288).reshape(6, 288), sh.repeat(2, 1), w.expand(6, 768))
    assert result.shape == (2, 3, 992)
    torch.testing.assert_close(result, expected.reshape(2, 3, 992), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------------
# bad calls


@pytest.fixture(scope="module")
def conv(kernels):
    return kernels.conv_tp(dtype=torch.float64)


def _good(batch: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    return {"h": torch.randn(batch, 288, generator=g, dtype=torch.float64),
            "sh": torch.randn(batch, 16, generator=g, dtype=torch.float64),
            "w": torch.randn(batch, 768, generator=g, dtype=torch.float64)}


def _call(module, **replace: torch.Tensor):
    args = _good() | replace
    return module(args["h"], args["sh"], args["w"])


def test_wrong_last_dimension(conv) -> None:
    with pytest.raises(ValueError, match=re.escape("input 'sh' must have shape (..., 16), got (4, 15)")):
        _call(conv, sh=torch.randn(4, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape("input 'h' must have shape (..., 288), got (4, 289)")):
        _call(conv, h=torch.randn(4, 289, dtype=torch.float64))


def test_wrong_dtype(conv) -> None:
    with pytest.raises(ValueError, match=r"input 'h' has dtype torch\.float32 but the module is torch\.float64"):
        _call(conv, h=torch.randn(4, 288, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"input 'w' has dtype torch\.float32"):
        _call(conv, w=torch.randn(4, 768, dtype=torch.float32))


def test_non_broadcastable_batch_shapes(conv) -> None:
    with pytest.raises(ValueError, match=r"do not broadcast: 'h' \(4, 288\), 'sh' \(3, 16\)"):
        _call(conv, sh=torch.randn(3, 16, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(4, 767), (768 * 4,), (3, 768), (2, 4, 768)],
                         ids=["short-row", "flat", "wrong-rows", "extra-leading"])
def test_wrong_weights_size(conv, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"input 'w' must have shape \(768,\) or "):
        _call(conv, w=torch.randn(*shape, dtype=torch.float64))

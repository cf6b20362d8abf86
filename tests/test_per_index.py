"""Per-index weights: `mix … per z` with `in z : index(K)` selects one of K weight sets per row.

A module with `per z` equals, row by row, the same diagram without `per` whose weight is the
selected set (the internal parameter of a `per` term is laid out [K][term numel], terms in
order); bad index inputs — values outside [0, K), a float or bool tensor, a shape that does not
fit the batch — raise a ValueError naming the input; leading batch shapes apply to the index too.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

import fusionc
from conftest import slow
from fusionc.ir.diagram import Diagram
from fusionc.testing import random_nary_diagram

SPECIES = """
diagram species {
    in  A : 2x(0e + 1o + 2e)
    in  z : index(3)
    out B : 2x(0e + 1o)
    B = A mix uuu per z + fuse(A, A) mix uuu + fuse(A, A, A) mix uuu per z
}
"""

#: (id, source with `per z`): the hand-written diagram mixes per-index and shared terms
PER_SOURCES = [("species", SPECIES)] + [(f"nary{seed}", random_nary_diagram(seed)) for seed in range(20)
                                        if " per z" in random_nary_diagram(seed)][:4]
QUICK = {"species", "nary0", "nary4"}  # the others take seconds each: slow


def without_per(source: str) -> str:
    """The same diagram with no index input and shared weights."""
    return re.sub(r"\n\s*in\s+z\s*:\s*index\(\d+\)", "", source).replace(" per z", "")


@functools.lru_cache(maxsize=None)
def _ops(source: str):
    return fusionc.loads(source)


def compiled(source: str) -> tuple[torch.nn.Module, Diagram]:
    ops = _ops(source)
    (diagram,) = ops.diagrams
    return getattr(ops, diagram.name)(dtype=torch.float64), diagram


def selected_weight(diagram: Diagram, weight: torch.Tensor, species: int) -> torch.Tensor:
    """The flat weight of the diagram without `per` that species `species` sees."""
    parts, offset = [], 0
    for t in diagram.vertices:
        chunk = weight[offset:offset + t.parameter_numel]
        parts.append(chunk.view(t.weight_sets, t.weight_numel)[species] if t.per else chunk)
        offset += t.parameter_numel
    assert offset == weight.numel()
    return torch.cat(parts)


def features(diagram: Diagram, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, i.irreps.dim, generator=generator, dtype=torch.float64)
            for i in diagram.inputs if i.kind == "irreps"]


@pytest.mark.parametrize("source", [s if name in QUICK else pytest.param(s, marks=slow) for name, s in PER_SOURCES],
                         ids=[name for name, _ in PER_SOURCES])
def test_per_index_equals_selected_weights_row_by_row(source: str) -> None:
    module, diagram = compiled(source)
    shared, shared_diagram = compiled(without_per(source))
    sets = next(i.size for i in diagram.inputs if i.kind == "index")
    assert shared.weight_numel * sets >= module.weight_numel > shared.weight_numel
    generator = torch.Generator().manual_seed(1)
    xs = features(diagram, (7,))
    z = torch.randint(0, sets, (7,), generator=generator)
    z[:sets] = torch.arange(sets)  # every species at least once
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight_numel, generator=generator, dtype=torch.float64))
        args = [z if i.kind == "index" else xs.pop(0) for i in diagram.inputs]
        out = module(*args)
        for row in range(len(z)):
            shared.weight.copy_(selected_weight(diagram, module.weight, int(z[row])))
            expected = shared(*(a[row:row + 1] for i, a in zip(diagram.inputs, args) if i.kind == "irreps"))
            torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-12, atol=1e-12)


def _call(z: torch.Tensor, batch: tuple[int, ...] = (4,)) -> torch.Tensor:
    module, diagram = compiled(SPECIES)
    (x,) = features(diagram, batch)
    return module(x, z)


@pytest.mark.parametrize("values", [[0, 1, 3, 2], [0, -1, 2, 1], [5, 0, 0, 0]], ids=["K", "negative", "above"])
def test_index_out_of_range(values: list[int]) -> None:
    with pytest.raises(ValueError, match=r"'z'.*\[0, 3\)"):
        _call(torch.tensor(values))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_index_must_be_integer(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="'z'"):
        _call(torch.zeros(4, dtype=dtype))


@pytest.mark.parametrize("shape", [(3,), (5,), (4, 2), (2, 4)], ids=str)
def test_index_shape_must_fit_batch(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="'z'"):
        _call(torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
def test_index_with_leading_batch_shape(dtype: torch.dtype) -> None:
    module, diagram = compiled(SPECIES)
    (x,) = features(diagram, (2, 3))
    z = torch.tensor([[0, 2, 1], [1, 1, 0]], dtype=dtype)
    with torch.no_grad():
        out = module(x, z)
        flat = module(x.reshape(6, -1), z.reshape(6).long())
    assert out.shape == (2, 3, diagram.outputs[0].irreps.dim)
    torch.testing.assert_close(out.reshape(6, -1), flat, rtol=1e-12, atol=1e-12)

"""Generated modules leave the process they were built in, each checked against the eager module on
the same inputs: pickled (`torch.save`, `copy.deepcopy`) and loaded in a new process that never
imports fusionc itself, with the cache emptied or not; exported (`torch.export`, strict) and loaded
in a new process after `import fusionc`; scripted (`torch.jit.script`), saved and loaded."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import pytest
import torch

import fusionc
from conftest import REPO
from fusionc.testing import random_inputs

KERNELS = sorted(p.name for p in (REPO / "kernels").glob("*.fus"))


@pytest.mark.parametrize("name", KERNELS)
def test_every_standard_diagram_scripts_and_saves(name, tmp_path) -> None:
    ops = fusionc.load(REPO / "kernels" / name)
    for diagram in ops.diagrams:
        module = getattr(ops, diagram.name)(dtype=torch.float64)
        args = random_inputs(module, diagram, 4, torch.Generator().manual_seed(0))
        scripted = torch.jit.script(module)
        scripted.save(str(tmp_path / f"{diagram.name}.pt"))
        loaded = torch.jit.load(str(tmp_path / f"{diagram.name}.pt"))
        expected = module(*args)
        for got in (scripted(*args), loaded(*args)):
            got = got if isinstance(got, tuple) else (got,)
            want = expected if isinstance(expected, tuple) else (expected,)
            assert len(got) == len(want), diagram.name
            for g, e in zip(got, want):
                assert g.shape == e.shape and torch.equal(g, e), diagram.name


def test_scripted_module_broadcasts_as_eager() -> None:
    ops = fusionc.loads("diagram tp { in x : 4x0e + 2x1o  in y : 1x1o  in w : weights  out z : 3x1o\n"
                        "  z = fuse(x, y) mix uvw by w }")
    module = ops.tp(dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 5, 10, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    w = torch.randn(module.input_weight_numel["w"], generator=g, dtype=torch.float64)
    scripted = torch.jit.script(module)
    got = scripted(x, y, w)
    assert got.shape == (2, 5, 9) and torch.equal(got, module(x, y, w))
    # leading shapes broadcast as in eager mode, whichever input is the larger
    x1, y1 = x[:1, :1], y[:1]
    for args in ((x1, y, w), (x, y1, w)):
        got = scripted(*args)
        assert got.shape == (2, 5, 9) and torch.equal(got, module(*args))


def _mace_product_4():
    ops = fusionc.load(REPO / "kernels" / "mace_product.fus")
    module = ops.mace_product_4(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    return module, torch.randn(6, 288, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)


def _fresh(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


UNPICKLE = """
import sys, torch
saved = torch.load(sys.argv[1], weights_only=False)
print(torch.equal(saved["module"](saved["x"], saved["z"]), saved["out"]), "fusionc" in sys.modules)
"""


@pytest.mark.parametrize("cache", ["kept", "emptied"])
def test_pickled_module_loads_in_a_fresh_process(tmp_path, cache) -> None:
    """`torch.save(module)` → a new process: `torch.load` rebuilds it from its source (from the cache,
    or compiled again where the cache was emptied) with its weights."""
    module, x, z = _mace_product_4()
    with torch.no_grad():
        module.weight.mul_(0.5)  # the loaded weights are the saved ones, not a new initialisation
    torch.save({"module": module, "x": x, "z": z, "out": module(x, z)}, tmp_path / "saved.pt")
    if cache == "emptied":
        shutil.rmtree(fusionc.loader.cache_root())
    assert _fresh(UNPICKLE, str(tmp_path / "saved.pt")).split() == ["True", "True"]


def test_deepcopy_is_an_independent_module() -> None:
    module, x, z = _mace_product_4()
    twin = copy.deepcopy(module)
    assert type(twin) is type(module) and twin.weight is not module.weight
    assert torch.equal(twin(x, z), module(x, z))
    with torch.no_grad():
        twin.weight.zero_()
    assert not torch.equal(twin(x, z), module(x, z))


def test_state_of_another_weight_layout_is_refused() -> None:
    module, _, _ = _mace_product_4()
    state = module.__getstate__().copy()
    state["_parameters"] = {"weight": torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))}
    with pytest.raises(ValueError, match="saved with 10 internal weights, but this compiler's module has 7424"):
        type(module).__new__(type(module)).__setstate__(state)


EXPORT_LOAD = """
import sys, torch, fusionc
program = torch.export.load(sys.argv[1])
saved = torch.load(sys.argv[2])
print(torch.equal(program.module()(saved["x"], saved["z"]), saved["out"]))
"""


def test_exported_module_loads_in_a_fresh_process(tmp_path) -> None:
    """`torch.export` (strict) → `torch.export.save` → a new process: after `import torch, fusionc`,
    `torch.export.load` resolves the ops by their namespace, which the cache records."""
    module, x, z = _mace_product_4()
    program = torch.export.export(module, (x, z), strict=True)
    torch.export.save(program, tmp_path / "module.pt2")
    torch.save({"x": x, "z": z, "out": module(x, z)}, tmp_path / "ref.pt")
    assert _fresh(EXPORT_LOAD, str(tmp_path / "module.pt2"), str(tmp_path / "ref.pt")).split() == ["True"]


JIT_LOAD = """
import sys, torch
try:
    torch.jit.load(sys.argv[1])
    raise SystemExit("loaded without fusionc's ops")
except RuntimeError as e:
    assert "Unknown builtin op: fusionc_" in str(e), e
import fusionc
assert fusionc.register_ops(), "no namespace recorded"
scripted = torch.jit.load(sys.argv[1])
saved = torch.load(sys.argv[2])
print(torch.equal(scripted(saved["x"], saved["z"]), saved["out"]))
"""


def test_scripted_module_loads_in_a_fresh_process_once_its_ops_are_registered(tmp_path) -> None:
    """A saved TorchScript module names fusionc's ops, which C++ looks up as the file loads: without
    them it fails ("Unknown builtin op"), as in a libtorch-only program; after
    `fusionc.register_ops()` it loads and computes the same."""
    module, x, z = _mace_product_4()
    torch.jit.script(module).save(str(tmp_path / "module.pt"))
    torch.save({"x": x, "z": z, "out": module(x, z)}, tmp_path / "ref.pt")
    assert _fresh(JIT_LOAD, str(tmp_path / "module.pt"), str(tmp_path / "ref.pt")).split() == ["True"]


def test_register_ops_names_an_unknown_namespace() -> None:
    with pytest.raises(ValueError, match="no module for the op namespace 'fusionc_0000'"):
        fusionc.register_ops("fusionc_0000")

"""Generated modules need only torch and `fusionc.runtime`: one imports and runs in a process where
the compiler and its dependencies cannot be imported, and gives what `fusionc.loads` gives; and
`fusionc.loads` of a cached source imports no part of the compiler."""

from __future__ import annotations

import subprocess
import sys

import torch

import fusionc
from conftest import REPO
from fusionc.testing import random_inputs

#: What a generated module loads without: the compiler's dependencies and its own packages.
COMPILER = ("sympy", "networkx", "opt_einsum", "lark", "fusionc.backends", "fusionc.analysis", "fusionc.frontend",
            "fusionc.pipeline", "fusionc.algebra.cg", "fusionc.algebra.recoupling")

#: A batched product (its CG tables stacked in a constant matrix) and a product with a CG table.
SOURCE = """\
diagram tp { in x : 4x0e + 4x1o + 2x2e  in y : 0e + 1o + 2e  out z : 4x0e + 4x1o + 2x2e  z = fuse(x, y) mix uvw }
diagram d { in x : 1x2e  in y : 2x3o  out z : 1x1o  z = fuse(x, y) mix uvw }
"""

#: Each name in sys.modules as None: importing it raises ImportError (torch does without opt_einsum).
BLOCK = f"""
import sys
for name in {COMPILER!r}:
    sys.modules[name] = None
"""

RUN = BLOCK + r"""
import importlib.util
import torch
module_path, data_path, out_path = sys.argv[1:]
spec = importlib.util.spec_from_file_location("generated", module_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
outputs = {}
for name, (state, inputs) in torch.load(data_path).items():
    op = getattr(module, name)(dtype=torch.float64)
    op.load_state_dict(state)
    outputs[name] = op(*inputs)
torch.save(outputs, out_path)
"""

#: The fusionc modules a cache hit may import: the loader and what it needs, and the runtime.
LOADER = {"fusionc", "fusionc.errors", "fusionc.version", "fusionc.source", "fusionc.loader", "fusionc.algebra",
          "fusionc.algebra.cache", "fusionc.machine", "fusionc.runtime", "fusionc.runtime.torch_ops",
          "fusionc.runtime.native", "fusionc.runtime.tables", "fusionc.runtime.grouping"}

HIT = BLOCK + r"""
import fusionc
ops = fusionc.loads(open(sys.argv[1]).read(), filename="hit.fus")
assert repr(ops) == "CompiledOps(tp, d)", repr(ops)
print(" ".join(sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "fusionc")))
"""


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _same_outputs(ops, module_path, tmp_path) -> None:
    """Every diagram of `ops` on the same float64 inputs and weights, run here and from
    `module_path` in a process that cannot import the compiler."""
    g = torch.Generator().manual_seed(0)
    data, expected = {}, {}
    for d in ops.diagrams:
        op = getattr(ops, d.name)(dtype=torch.float64)
        inputs = random_inputs(op, d, 7, g)
        data[d.name] = (op.state_dict(), inputs)
        expected[d.name] = op(*inputs)
    torch.save(data, tmp_path / "inputs.pt")
    _run(RUN, str(module_path), str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt"))
    outputs = torch.load(tmp_path / "outputs.pt")
    assert outputs.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(outputs[name], value, rtol=0, atol=1e-12)


def test_a_generated_module_runs_without_the_compiler(tmp_path) -> None:
    ops = fusionc.loads(SOURCE, filename="runtime.fus")
    text = ops.path.read_text()
    assert "cg_tables = {" in text and "matrices = {" in text and "rt.NativeKernels(" in text
    module_path = tmp_path / "generated.py"
    module_path.write_text(text)
    _same_outputs(ops, module_path, tmp_path)


def test_the_checked_in_modules_run_without_the_compiler(tmp_path) -> None:
    ops = fusionc.load(REPO / "kernels" / "tensor_products.fus")
    _same_outputs(ops, REPO / "kernels" / "generated" / "tensor_products_torch.py", tmp_path)


def test_a_cache_hit_imports_no_part_of_the_compiler(tmp_path) -> None:
    fusionc.loads(SOURCE, filename="hit.fus")
    (tmp_path / "hit.fus").write_text(SOURCE)
    imported = set(_run(HIT, str(tmp_path / "hit.fus")).split())
    assert imported <= LOADER, imported - LOADER

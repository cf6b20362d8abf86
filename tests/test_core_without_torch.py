"""The core (parse, IR, algebra, analyses, code generation, CLI checks) runs with torch unavailable."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import sys
sys.modules["torch"] = None
sys.modules["triton"] = None
import fusionc
from fusionc.pipeline import compile_diagrams, compile_source
from fusionc.backends import get_backend
from fusionc.show import to_svg
from fusionc.cli import main
src = open("kernels/tensor_products.fus").read()
diagrams = compile_source(src, "kernels/tensor_products.fus")
code = get_backend("torch")(compile_diagrams(diagrams, src, "kernels/tensor_products.fus", "torch"))
assert "class fc_tp(rt.FusionModule)" in code
assert to_svg(diagrams).startswith("<svg")
assert main(["check", "kernels/tensor_products.fus"]) == 0
assert not any(m == "torch" or m.startswith("torch.") for m, v in sys.modules.items() if v is not None)
print("core ok")
"""


def test_core_imports_and_runs_without_torch(tmp_path) -> None:
    env = {"PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "core ok" in result.stdout


def test_torch_is_refused_when_blocked(tmp_path) -> None:
    """The probe above is meaningful: with torch blocked, the runtime cannot import."""
    env = {"PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    script = 'import sys; sys.modules["torch"] = None\nimport fusionc.runtime.torch_ops'
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "torch" in result.stderr

"""`fusionc check --numeric` on the standard library, and proof that the check can fail."""

from __future__ import annotations

import pytest
import torch

import fusionc
from conftest import KERNELS, REPO, slow_unless
from fusionc.cli import main
from fusionc.testing import assert_equivariant, equivariance_error


# the quick subset checks the two smaller files (the README's first command checks them all)
@pytest.mark.parametrize("path", slow_unless(KERNELS, lambda p: p.stem in ("cormorant", "tensor_products")),
                         ids=lambda p: p.stem)
def test_check_numeric_passes_on_kernels(path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--numeric", str(path)]) == 0
    report = capsys.readouterr().out
    lines = [line for line in report.splitlines() if "equivariance" in line]
    assert len(lines) == report.count("\ndiagram ") + report.startswith("diagram ")
    assert all(line.endswith("ok") for line in lines)


def test_check_catches_a_corrupted_cg_table() -> None:
    ops = fusionc.load(REPO / "kernels" / "tensor_products.fus")
    diagram = next(d for d in ops.diagrams if d.name == "fc_tp")
    module = ops.fc_tp().double()
    assert_equivariant(module, diagram)
    # fc_tp runs as batched products: its CG tables are stacked into one matrix G (rows: the
    # components of y); swap two m components of y's 2e block there: no longer an intertwiner
    (name,) = [n for n, _ in module.named_buffers() if n.startswith("_g_")]
    table = getattr(module, name)
    with torch.no_grad():
        table.copy_(table[[0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
    assert equivariance_error(module, diagram) > 1e-3


class _SquaresVectors(torch.nn.Module):
    """Deliberately not equivariant: squares each component of a 1o feature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def test_check_catches_a_nonlinear_non_equivariant_module() -> None:
    diagram = fusionc.loads("diagram d { in x : 2x1o  out y : 2x1o  y = x }").diagrams[0]
    assert equivariance_error(_SquaresVectors(), diagram) > 1e-2
    with pytest.raises(AssertionError, match="equivariance error"):
        assert_equivariant(_SquaresVectors(), diagram)


def test_check_numeric_exit_status_on_failure(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The CLI exits 1 when the numeric check fails (here: the CG tables the torch code reads are
    corrupted; native kernels carry their own copy in C, so they are switched off)."""
    import fusionc.runtime.torch_ops as rt

    real = rt.FusionModule._constants

    def wrong(self, dtype, device):
        return {name: table.flip(0) if name.startswith("cg_1_") else table
                for name, table in real(self, dtype, device).items()}

    monkeypatch.setattr(rt.FusionModule, "_constants", wrong)
    monkeypatch.setenv("FUSIONC_NATIVE", "0")
    src = tmp_path / "d.fus"
    src.write_text("diagram d {\n  in x : 2x1o\n  in y : 2x1o\n  out z : 2x0e + 2x1e\n  z = fuse(x, y) mix uvw\n}\n")
    assert main(["check", "--numeric", str(src)]) == 1
    monkeypatch.setattr(rt.FusionModule, "_constants", real)
    assert main(["check", "--numeric", str(src)]) == 0


def test_so3_diagrams_check_rotations_only() -> None:
    ops = fusionc.loads("group SO3\ndiagram d { in x : 4x1  in y : 2  out z : 4x(1 + 2 + 3)  z = fuse(x, y) mix uvu }")
    assert_equivariant(ops.d(), ops.diagrams[0])

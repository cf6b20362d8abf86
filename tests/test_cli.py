"""The fusionc command line: check, compile, show, --dump-ir."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO
from fusionc.cli import main

TP = str(REPO / "kernels" / "tensor_products.fus")


def test_check_reports_paths_parameters_and_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TP]) == 0
    out = capsys.readouterr().out
    assert "diagram fc_tp" in out
    assert "z.0 = fuse(x, y) mix uvw: 13 paths, 13312 weights," in out
    assert "32x1o ⊗ 1x1o -> 32x0e   weights 32×1×32   FLOPs/row" in out
    assert "parameters: 13312 learnable" in out
    assert "FLOPs per row:" in out


def test_compile_writes_an_importable_module(tmp_path) -> None:
    out = tmp_path / "ops.py"
    assert main(["compile", TP, "-o", str(out), "--backend", "torch"]) == 0
    namespace: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    assert {"fc_tp", "conv_tp", "linear"} <= set(namespace)


def test_compile_rejects_unknown_backend(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ops.py"
    assert main(["compile", TP, "-o", str(out), "--backend", "tpu"]) == 2
    assert "unknown backend 'tpu'; available back ends: torch" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("stage", ["check", "prune"])
def test_dump_ir_prints_the_ir_after_a_pass(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TP, "--dump-ir", stage]) == 0
    out = capsys.readouterr().out
    assert "diagram tp_then_linear" in out and "let t : 8x0e+8x1o+8x1e" in out
    # pruning drops the paths into t's 1e block, which nothing reads
    assert ("1x1o -> 8x1e" in out) == (stage == "check")


def test_show_svg_is_well_formed_and_labelled(tmp_path) -> None:
    out = tmp_path / "d.svg"
    assert main(["show", TP, "-o", str(out), "--diagram", "conv_tp"]) == 0
    root = ET.parse(out).getroot()
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"conv_tp", "h", "sh", "w", "fuse uvu", "32x0e+32x1o+32x2e", "768 weights"} <= texts


def test_show_dot(tmp_path) -> None:
    out = tmp_path / "d.dot"
    assert main(["show", TP, "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph fusionc {") and '"fc_tp.x" -> "fc_tp.z.0" [label="32x0e+32x1o+32x2e"]' in text


def test_show_rejects_other_formats(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", TP, "-o", str(tmp_path / "d.png")]) == 2
    assert "must end in .svg or .dot" in capsys.readouterr().err


def test_missing_file_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "no/such/file.fus"]) == 2
    assert "cannot read no/such/file.fus" in capsys.readouterr().err


def test_console_script_runs_from_any_directory(tmp_path) -> None:
    exe = [sys.executable, "-m", "fusionc"]
    result = subprocess.run(exe + ["check", TP], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(tmp_path / "c"),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "6 diagrams, well typed" in result.stdout


SMALL = """\
diagram scalar { in x : 2x0e  in y : 0e  out z : 2x0e  z = fuse(x, y) mix uvw }
diagram vector { in x : 2x1o  out z : 2x1o  z = x mix uvw }
"""


def test_check_ends_with_a_summary_over_all_files(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.fus"
    small.write_text(SMALL)
    assert main(["check", TP, str(small)]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == "2 files, 8 diagrams: well typed"


def test_check_numeric_summary_counts_equivariant_diagrams(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.fus"
    small.write_text(SMALL)
    assert main(["check", "--numeric", "--rotations", "1", str(small)]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == "1 file, 2 diagrams: well typed, all equivariant"


def test_check_numeric_summary_counts_failures(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import fusionc.testing

    small = tmp_path / "small.fus"
    small.write_text(SMALL)
    # a broken back end, as the check would see it: the vector diagram's outputs do not rotate
    monkeypatch.setattr(fusionc.testing, "equivariance_error", lambda module, d, rotations: 0.5 * (d.name == "vector"))
    assert main(["check", "--numeric", str(small), str(small)]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED (tolerance") == 2
    assert out.rstrip().splitlines()[-1] == "2 files, 4 diagrams: well typed; 2 of 4 FAILED the equivariance check"


def test_check_explain_has_one_legend_and_no_hint_to_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TP, "--explain"]) == 0
    out = capsys.readouterr().out
    assert "see --explain" not in out
    assert out.count("FLOPs per row:") == 6  # every diagram still reports its cost
    legend = out[:out.index("tensor_products.fus: 6 diagrams")]
    for term in ("FLOPs per row", "naive", "chosen", "pN", "z the row", "u, v, w", "i, j, k", "as it runs"):
        assert term in legend, term
    assert out.count("How to read") == 1


def test_check_without_explain_points_to_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TP]) == 0
    out = capsys.readouterr().out
    assert out.count("(see --explain for the plan)") == 6 and "How to read" not in out

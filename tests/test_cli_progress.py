"""Long work shows progress: `fusionc compile --target` prints each kernel's row as soon as that
kernel is compiled, not all of them at the end."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, slow

# Runs the CLI with triton.compile wrapped to print a marker line before each compilation: a row
# printed as it comes sits between the markers of its own kernel and of the next.
_WRAPPED_CLI = """
import sys
import triton
compile_kernel = triton.compile
def marked(*args, **kwargs):
    print("COMPILING", flush=True)
    return compile_kernel(*args, **kwargs)
triton.compile = marked
from fusionc.cli import main
sys.exit(main(sys.argv[1:]))
"""


@slow
def test_compile_for_a_target_prints_each_row_when_its_kernel_is_done(tmp_path) -> None:
    source = tmp_path / "small.fus"
    source.write_text("diagram small { in x : 2x0e + 2x1o  in y : 0e + 1o  out z : 2x0e + 2x1o  "
                      "z = fuse(x, y) mix uvw }\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real, ahead of time
    env.update(PYTHONPATH=str(REPO), FUSIONC_CACHE_DIR=str(tmp_path / "cache"))
    # stdout is a pipe, as under `| tee`: rows must be flushed, not left in the buffer to the end
    result = subprocess.run([sys.executable, "-c", _WRAPPED_CLI, "compile", str(source), "--backend", "triton",
                             "--target", "sm_90", "--kernels", "forward", "--jobs", "1"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    assert lines[header - 1] == f"{source}: kernels compiled ahead of time for sm_90 (float32)"
    events = ["row" if line.startswith("_small__kernel[") else line for line in lines[header + 1:]]
    assert events.count("row") >= 2, result.stdout
    assert events == ["COMPILING", "row"] * events.count("row"), result.stdout


@slow
def test_kernels_compiled_in_parallel_report_what_one_at_a_time_reports(tmp_path) -> None:
    """`--jobs 2` compiles kernels in two processes: the same rows (registers, shared and local
    memory, stack), in the same order."""
    source = tmp_path / "small.fus"
    source.write_text("diagram small { in x : 2x0e + 2x1o  in y : 0e + 1o  out z : 2x0e + 2x1o  "
                      "z = fuse(x, y) mix uvw }\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), FUSIONC_CACHE_DIR=str(tmp_path / "cache"))
    rows = []
    for jobs in ("1", "2"):
        env["TRITON_CACHE_DIR"] = str(tmp_path / f"triton{jobs}")  # each compiles every kernel itself
        result = subprocess.run([sys.executable, "-m", "fusionc.cli", "compile", str(source), "--backend", "triton",
                                 "--target", "sm_90", "--jobs", jobs], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr
        rows.append([line for line in result.stdout.splitlines() if line.startswith(("_small", "_table_kernel"))])
    assert len(rows[0]) >= 3 and rows[0][-1].startswith("_table_kernel")
    assert rows[0] == rows[1]


def test_unknown_target_is_a_usage_error(tmp_path, capsys) -> None:
    from fusionc.cli import main

    assert main(["compile", str(REPO / "kernels" / "cormorant.fus"), "--backend", "triton",
                 "--target", "sm90"]) == 2
    assert capsys.readouterr().err == "fusionc: error: unknown target 'sm90'; expected sm_80, sm_90, …\n"

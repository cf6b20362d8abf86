"""The Python API and the compiled-module cache."""

from __future__ import annotations

import pytest
import torch

import fusionc
import fusionc.backends
from conftest import REPO
from fusionc.algebra.cache import cache_root

SOURCE = "diagram lin {\n  in x : 4x0e + 2x1o\n  out y : 3x0e + 2x1o\n  y = x mix uvw\n}\n"


def _entries():
    return sorted((cache_root() / "modules").glob("*.py"))


def test_load_exposes_one_class_per_diagram() -> None:
    ops = fusionc.load(REPO / "kernels" / "tensor_products.fus")
    assert [d.name for d in ops.diagrams] == ["fc_tp", "conv_tp", "elementwise_tp", "full_tp", "linear",
                                              "tp_then_linear"]
    tp = ops.fc_tp()
    assert tp.irreps_in == ("32x0e+32x1o+32x2e", "1x0e+1x1o+1x2e+1x3o")
    assert tp.irreps_out == ("32x0e+32x1o+32x2e",)
    assert tp.weight.shape == (tp.weight_numel,)
    z = tp(torch.randn(3, 288), torch.randn(3, 16))
    assert z.shape == (3, 288)


def test_same_source_hits_the_cache() -> None:
    before = set(_entries())
    fusionc.loads(SOURCE, filename="hit.fus")
    first = set(_entries())
    ops = fusionc.loads(SOURCE, filename="hit.fus")
    assert len(first - before) == 1 and set(_entries()) == first
    # a hit compiles nothing; the diagrams are compiled when asked for
    assert "diagrams" not in vars(ops) and [d.name for d in ops.diagrams] == ["lin"]


def test_corrupt_module_entry_is_rebuilt() -> None:
    ops = fusionc.loads(SOURCE, filename="corrupt.fus")
    ops.path.write_text(ops.path.read_text()[:100])
    import sys
    for name in [m for m in sys.modules if m.startswith("fusionc_generated_")]:
        del sys.modules[name]
    again = fusionc.loads(SOURCE, filename="corrupt.fus")
    assert again.path == ops.path
    assert again.lin()(torch.randn(2, 10)).shape == (2, 9)


def test_crash_mid_compile_leaves_no_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args):
        raise RuntimeError("simulated crash in the back end")

    monkeypatch.setitem(fusionc.backends.BACKENDS, "torch", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        fusionc.loads(SOURCE, filename="crash.fus")
    assert not any("crash" in p.read_text() for p in _entries())
    assert not list((cache_root() / "modules").glob(".*")) if (cache_root() / "modules").exists() else True
    monkeypatch.undo()
    assert fusionc.loads(SOURCE, filename="crash.fus").lin()(torch.randn(1, 10)).shape == (1, 9)


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown backend 'cuda'; available back ends: torch"):
        fusionc.loads(SOURCE, backend="cuda")


def test_type_errors_surface_as_fusion_errors() -> None:
    with pytest.raises(fusionc.FusionError, match=r"<string>:2:11: error: unknown name 'q'"):
        fusionc.loads("diagram d { in x : 0e  out y : 0e\n  y = x + q mix uvw }")


def test_dtype_and_device_moves_keep_cg_exact() -> None:
    ops = fusionc.loads("diagram d { in x : 1x2e  in y : 2x3o  out z : 1x1o  z = fuse(x, y) mix uvw }")
    module = ops.d().float().double()
    exact = torch.tensor(fusionc.algebra.wigner_3j(2, 3, 1))
    assert torch.equal(module.cg_2_3_1, exact)
    assert module.float().cg_2_3_1.dtype == torch.float32
    # a batched product keeps its CG tables stacked in one matrix, rebuilt exactly too
    ops = fusionc.loads("diagram b { in x : 1x2e  in y : 1x3o  out z : 1x1o  z = fuse(x, y) mix uvw }")
    module = ops.b().float().double()
    (name,) = module.matrices
    entries = module.matrices[name][1]
    table = getattr(module, name)
    assert table.dtype == torch.float64 and len(entries) == int((table != 0).sum())
    assert all(table[i, j].item() == v for i, j, v in entries)
    # one path: G[j, i·3 + k] = c · cg[i, j, k], with c the path's normalisation
    stacked = table.reshape(7, 5, 3).permute(1, 0, 2)
    c = stacked.abs().max() / exact.abs().max()
    torch.testing.assert_close(stacked, c * exact, rtol=1e-15, atol=0)


def test_generated_module_is_plain_readable_python() -> None:
    text = fusionc.loads(SOURCE).path.read_text()
    # each contraction a matrix product, its labelled equation beside it
    assert "torch.mm(" in text and "  # zui,uw->zwi" in text and "# 4x0e -> 3x0e" in text


REUSE = r"""
import sys
import fusionc
ops = fusionc.loads(open(sys.argv[1]).read(), filename="reuse.fus")
print(ops.path, "fusionc.pipeline" in sys.modules, "fusionc.backends" in sys.modules)
"""


def test_another_process_reuses_the_entry_without_compiling(tmp_path) -> None:
    """The entry is found from the source alone: another process imports it as it is, and imports
    neither the compiler nor a back end (nor rewrites the entry)."""
    import os
    import subprocess
    import sys

    ops = fusionc.loads(SOURCE, filename="reuse.fus")
    before = os.stat(ops.path)
    (tmp_path / "reuse.fus").write_text(SOURCE)
    result = subprocess.run([sys.executable, "-c", REUSE, str(tmp_path / "reuse.fus")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(ops.path), "False", "False"]
    after = os.stat(ops.path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


CONCURRENT = r"""
import sys
import fusionc
ops = fusionc.loads(open(sys.argv[1]).read(), filename="concurrent.fus")
print(ops.path)
"""


def test_two_processes_compiling_at_once_share_one_entry(tmp_path) -> None:
    import os
    import subprocess
    import sys

    source = tmp_path / "concurrent.fus"
    source.write_text("diagram c { in x : 4x(0e + 1o + 2e)  in y : 0e + 1o + 2e  out z : 4x(0e + 1o + 2e)\n"
                      "  z = fuse(x, y) mix uvw }\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(source)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), [err for _, err, _ in results]
    paths = {out.strip() for out, _, _ in results}
    assert len(paths) == 1
    entries = [e for e in (tmp_path / "cache" / "modules").iterdir() if e.name != "__pycache__"]
    assert [e.name for e in entries] == [os.path.basename(paths.pop())]  # one entry, no temporary files
    bytecode = list((tmp_path / "cache" / "modules" / "__pycache__").iterdir())
    assert [e.suffix for e in bytecode] == [".pyc"]  # and its bytecode, whole


def test_an_entry_has_its_bytecode_even_where_python_writes_none(monkeypatch) -> None:
    """Loading writes the module's bytecode beside the entry although PYTHONDONTWRITEBYTECODE is
    set (Python would compile a large module again at every import: fusion_block's Triton module,
    2 s), valid for the entry as it is, so that the import reads it."""
    import importlib.util
    import sys

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    ops = fusionc.loads(SOURCE, filename="bytecode.fus")
    with open(importlib.util.cache_from_source(str(ops.path)), "rb") as f:
        header = f.read(16)
    # Python uses a timestamp pyc whose recorded source mtime and size are the entry's
    stat = ops.path.stat()
    assert header[:4] == importlib.util.MAGIC_NUMBER and header[4:8] == bytes(4)
    assert int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
    assert int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF

"""The Triton back end under TRITON_INTERPRET=1 on the CPU, and compiled ahead of time for GPUs.

Outputs are poisoned with NaN before each kernel runs, so an element a kernel fails to write
fails the comparison with the torch back end.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest
import torch

import fusionc
from conftest import REPO, slow, slow_unless
from fusionc.backends.triton_backend import tile_configs
from fusionc.testing import random_diagram, random_inputs, random_nary_diagram

pytest.importorskip("triton", reason="the triton back end needs triton")
assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET=1"

KERNEL_FILES = sorted(p.name for p in (REPO / "kernels").glob("*.fus"))


@pytest.fixture(autouse=True)
def _poison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONC_POISON_OUTPUTS", "1")
    # the reference is the torch back end's torch code (its native CPU kernels: test_native)
    monkeypatch.setenv("FUSIONC_NATIVE", "0")


def _pair(source: str, filename: str):
    return fusionc.loads(source, "torch", filename), fusionc.loads(source, "triton", filename)


def _modules(torch_ops, triton_ops, name: str, dtype: torch.dtype):
    reference = getattr(torch_ops, name)(dtype=dtype)
    kernel = getattr(triton_ops, name)(dtype=dtype)
    kernel.load_state_dict(reference.state_dict())
    return reference, kernel


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _compare(torch_ops, triton_ops, diagram, dtype: torch.dtype, tol: float, rows: int = 5) -> None:
    reference, kernel = _modules(torch_ops, triton_ops, diagram.name, dtype)
    args = random_inputs(reference, diagram, rows, torch.Generator().manual_seed(0), dtype)
    floats = [a.requires_grad_() if a.is_floating_point() else a for a in args]
    out, expected = kernel(*floats), reference(*floats)
    assert not out.isnan().any(), "the kernel left output elements unwritten"
    assert _relative(out, expected) <= tol
    # backward and double backward through the op: d/dx of |f|², then of the gradients' norm
    results = []
    for module, result in ((kernel, out), (reference, expected)):
        targets = [a for a in floats if a.is_floating_point()]
        targets += [module.weight] if module.weight.requires_grad else []
        grads = torch.autograd.grad(result.pow(2).sum(), targets, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), targets)
        results.append(grads + second)
    for a, b in zip(*results):
        assert _relative(a, b) <= tol


@slow
@pytest.mark.parametrize("file", KERNEL_FILES)
def test_kernels_equal_the_torch_back_end(file: str) -> None:
    """float32; float64 runs through the same kernels in the gradcheck test (the interpreter takes
    minutes per file: the derivative kernels of fusion_block have over a thousand statements)."""
    path = REPO / "kernels" / file
    torch_ops, triton_ops = _pair(path.read_text(), f"kernels/{file}")
    for diagram in torch_ops.diagrams:
        _compare(torch_ops, triton_ops, diagram, torch.float32, 1e-5)


PRODUCTS = [(mode, by) for mode in ("uvw", "uvu", "uuu", "uvuv", "none") for by in (False, True)
            if not (mode == "none" and by)]  # mix none has no weights to take by an input


@slow
@pytest.mark.parametrize("mode,by", PRODUCTS, ids=[f"{m}-{'by' if b else 'internal'}" for m, b in PRODUCTS])
def test_two_input_products_equal_the_torch_back_end(mode: str, by: bool) -> None:
    for seed in range(3):
        source = random_diagram(seed, mode, lmax=2, max_mul=6, by=by)
        torch_ops, triton_ops = _pair(source, f"{mode}{seed}.fus")
        _compare(torch_ops, triton_ops, torch_ops.diagrams[0], torch.float32, 1e-5, rows=19)


def test_a_small_two_input_product_equals_the_torch_back_end() -> None:
    """The quick subset's two-input product: uvw with per-row weights, l <= 1, forward, backward and
    double backward."""
    source = random_diagram(0, "uvw", lmax=1, max_mul=2, by=True)
    torch_ops, triton_ops = _pair(source, "small.fus")
    # the derivative programs are tables the runtime's one kernel interprets: no kernel code of theirs
    module = inspect.getsource(triton_ops.module)
    assert module.count("= rt.TableProgram(") == 2 and module.count("@triton.jit") == 1  # the forward's
    _compare(torch_ops, triton_ops, torch_ops.diagrams[0], torch.float32, 1e-5, rows=7)


def test_the_table_kernel_in_the_gpus_tiles_equals_the_torch_back_end(monkeypatch) -> None:
    """Under the interpreter the table kernel runs in large tiles (`FUSIONC_TABLE_TILES`); here in
    the GPU's: this product has statements of each tile shape that step through M or K in several
    tiles, on 19 rows (two program instances, the second partly empty)."""
    monkeypatch.setenv("FUSIONC_TABLE_TILES", "gpu")
    source = "diagram tiles { in x : 30x0e + 8x1o  in y : 0e + 1o  out z : 30x0e + 8x1o  z = fuse(x, y) mix uvw }"
    torch_ops, triton_ops = _pair(source, "gpu_tiles.fus")
    _compare(torch_ops, triton_ops, torch_ops.diagrams[0], torch.float32, 1e-5, rows=19)


# the quick subset: seeds whose diagrams the interpreter runs in about a second or less (others take up to a minute)
@pytest.mark.parametrize("seed", slow_unless(range(20), lambda s: s in (1, 3, 4, 15)), ids=lambda s: f"seed{s}")
def test_random_diagrams_equal_the_torch_back_end(seed: int) -> None:
    source = random_nary_diagram(seed)
    torch_ops, triton_ops = _pair(source, f"random{seed}.fus")
    _compare(torch_ops, triton_ops, torch_ops.diagrams[0], torch.float32, 1e-5, rows=7)


@slow
def test_gradcheck_through_the_kernels() -> None:
    """float64 through the forward kernel and the derivative programs' kernels (gathers and
    scatters of per-index weights included). Fast mode (random projections): the interpreter runs
    every perturbed evaluation."""
    source = """diagram g { in A : 2x(0e + 1o + 2e)  in z : index(3)  out B : 2x(0e + 1o)
                B = A mix uuu per z + fuse(A, A) mix uuu per z + fuse(A, A, A) mix uuu per z }"""
    _, triton_ops = _pair(source, "gradcheck.fus")
    module = triton_ops.g(dtype=torch.float64)
    a = torch.randn(3, 18, dtype=torch.float64, requires_grad=True)
    z = torch.tensor([0, 2, 0])

    def f(a, weight):
        return triton_ops.module._ops["g"]([a, z], weight, module.constants())[0]

    weight = module.weight.detach().requires_grad_()
    assert torch.autograd.gradcheck(f, (a, weight), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (a, weight), fast_mode=True)


def _aot(path: str, kernels: str, tmp_path) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """`fusionc compile --target sm_80 --target sm_90`: {(kernel, target): (registers, shared, local, stack)}."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), FUSIONC_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "fusionc", "compile", path, "--backend", "triton",
                             "--target", "sm_80", "--target", "sm_90", "--kernels", kernels], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^(_\w+_kernel\d*(?:\[\w+,\w+\])?)\s+(sm_\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", result.stdout,
                      re.MULTILINE)
    return {(kernel, target): tuple(map(int, usage)) for kernel, target, *usage in rows}


@slow
@pytest.mark.parametrize("file", [f for f in KERNEL_FILES if f != "interaction.fus"])
def test_forward_kernels_ahead_of_time_for_sm80_and_sm90(file: str, tmp_path) -> None:
    """Every autotuning configuration of every forward kernel compiles without spilling (diagrams with
    index spaces, the interactions, run all their programs in the table kernel: the test below)."""
    report = _aot(f"kernels/{file}", "forward", tmp_path)
    diagrams = [d for d in fusionc.load(REPO / "kernels" / file).diagrams if not d.spaces]
    assert set(report) == {(f"_{d.name}__kernel[{z}x{u},{w}w]", t) for d in diagrams for z, u, w in tile_configs(d)
                           for t in ("sm_80", "sm_90")}
    assert all(local == 0 and stack == 0 and 0 < registers <= 255
               for registers, _, local, stack in report.values()), report


def test_every_autotuning_configuration_equals_the_torch_back_end() -> None:
    """The interpreter runs each kernel's first configuration (nothing can be timed there:
    `rt.tuning_configs`); each of the others, made the only one, writes the same outputs, with
    row counts that leave every tile size a partial last tile."""
    source = ("diagram mixed { in x : 3x0e + 3x1o  in y : 0e + 1o  out z : 3x0e + 3x1o  z = fuse(x, y) mix uvw }\n"
              "diagram wise { in a : 4x(0e + 1o)  in b : 4x(0e + 1o)  out c : 4x(0e + 1o)  c = fuse(a, b) mix uuu }\n")
    torch_ops, triton_ops = _pair(source, "configs.fus")
    for diagram in torch_ops.diagrams:
        tuned = getattr(triton_ops.module, f"_{diagram.name}__kernel")
        configs = list(tuned.configs)
        assert len(configs) > 1
        reference, kernel = _modules(torch_ops, triton_ops, diagram.name, torch.float32)
        args = random_inputs(reference, diagram, 37, torch.Generator().manual_seed(0), torch.float32)
        try:
            for config in configs:
                tuned.configs, tuned.cache = [config], {}
                with torch.no_grad():
                    out = kernel(*args)
                assert not out.isnan().any(), f"{config}: output elements left unwritten"
                assert _relative(out, reference(*args)) <= 1e-5, config
        finally:
            tuned.configs, tuned.cache = configs, {}


@slow
def test_derivative_kernels_ahead_of_time(tmp_path) -> None:
    """The table kernel, which runs every derivative program (of a diagram with a gather and a
    scatter here: per-index weights), compiles without spilling (no local memory, no stack frame)."""
    path = tmp_path / "small.fus"
    path.write_text("diagram small { in x : 4x0e + 4x1o  in s : index(3)  out y : 4x0e + 4x1o\n"
                    "  y = fuse(x, x) mix uuu per s + x mix uvw }\n")
    report = _aot(str(path), "derivatives", tmp_path)
    assert set(report) == {("_table_kernel", "sm_80"), ("_table_kernel", "sm_90")}
    assert all(local == 0 and stack == 0 and 0 < registers <= 255 for registers, _, local, stack in report.values()), \
        report


def test_derivative_programs_are_tables_and_the_kernel_is_imported_at_the_first_launch(monkeypatch) -> None:
    """Importing a generated module makes no Triton function of any derivative program (triton
    tokenizes a kernel's source: fusion_block's hundreds took 6.5 s at every import); the first
    backward imports the one table kernel, and the gradient is right."""
    monkeypatch.delitem(sys.modules, "fusionc.runtime.table_kernel", raising=False)
    source = "diagram lazy { in x : 2x0e + 2x1o  in y : 0e + 1o  out z : 2x1o  z = fuse(x, y) mix uvw }"
    torch_ops, triton_ops = _pair(source, "lazy.fus")
    assert "fusionc.runtime.table_kernel" not in sys.modules
    reference, kernel = _modules(torch_ops, triton_ops, "lazy", torch.float64)
    x, y = torch.randn(3, 8, dtype=torch.float64, requires_grad=True), torch.randn(3, 4, dtype=torch.float64)
    (got,) = torch.autograd.grad(kernel(x, y).sum(), x)
    (want,) = torch.autograd.grad(reference(x, y).sum(), x)
    torch.testing.assert_close(got, want)
    assert "fusionc.runtime.table_kernel" in sys.modules


def test_third_derivatives_differentiate_the_forward_torch_code() -> None:
    """The last derivative programs' kernels are opaque to autograd: their own derivative (a third
    one) differentiates the forward's torch code twice (`rt.second_order`), and gives what the torch
    back end gives, for every input and the weight."""
    source = "diagram third { in x : 2x0e + 2x1o  in y : 0e + 1o  out z : 2x0e + 2x1o  z = fuse(x, y) mix uvw }"
    torch_ops, triton_ops = _pair(source, "third.fus")
    reference, kernel = _modules(torch_ops, triton_ops, "third", torch.float64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    results = []
    for module in (kernel, reference):
        xs = [x.clone().requires_grad_(), y.clone().requires_grad_()]
        (first,) = torch.autograd.grad(module(*xs).pow(2).sum(), xs[0], create_graph=True)
        (second,) = torch.autograd.grad(first.pow(2).sum(), xs[1], create_graph=True)
        results.append(torch.autograd.grad(second.pow(2).sum(), [*xs, module.weight]))
    for got, want in zip(*results):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want)

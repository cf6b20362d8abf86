"""Native CPU kernels: every program's CPU version (its row-local statements as compiled C) gives
what its torch code gives (a derivative program without any: what autograd through the forward's
torch code gives), for every diagram of the standard library and random diagrams of each mode, in
float64 and float32; the ops run them on the CPU by default; a missing compiler, a failing one
and FUSIONC_NATIVE=0 behave as documented. The torch code itself is checked against autograd
(test_derivatives), dense einsums and e3nn (test_numeric, test_e3nn_parity)."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import warnings
from dataclasses import replace

import pytest
import torch

import fusionc
from fusionc import machine
from fusionc.pipeline import generate
from fusionc.runtime import native
from fusionc.runtime.torch_ops import first_order, second_order
from fusionc.testing import random_diagram, random_inputs, random_nary_diagram

from conftest import KERNELS, mask_cases, slow


def _programs(module, diagram):
    """(name, reference, CPU function) of every program of `diagram` that has a CPU version; the
    reference is the program's torch code or, for a derivative program without any, the forward's
    torch code differentiated by autograd (what its op runs where native kernels do not)."""
    forward = getattr(module, f"_{diagram.name}")
    for attribute, cpu in sorted(vars(module).items()):
        name = attribute.removesuffix("__cpu")
        if name == attribute or not callable(cpu) or not (
                name == f"_{diagram.name}" or name.startswith(f"_{diagram.name}__d")):
            continue
        reference = getattr(module, name, None)
        if reference is None:
            output = name.removesuffix("__d2")[len(f"_{diagram.name}__d"):].lstrip("_")
            k = [o.name for o in diagram.outputs].index(output) if output else 0
            count = list(inspect.signature(forward).parameters).index("weight")
            reference = (second_order if name.endswith("__d2") else first_order)(forward, k, count)
        yield name, reference, cpu


def _arguments(fn, diagram, module_cls, rows: int, dtype: torch.dtype, g: torch.Generator) -> list:
    """Inputs for a program: the diagram's rows, then cotangents of the sizes its docstring gives."""
    module = module_cls(dtype=dtype)
    inputs = random_inputs(module, diagram, rows, g, dtype)
    names = list(inspect.signature(fn).parameters)
    given = {i.name: x for i, x in zip(diagram.inputs, inputs)}
    counts = {f"n_{i.space}" if i.space else "n": x.shape[0] for i, x in zip(diagram.inputs, inputs)}
    doc = fn.__doc__.split("->")[0]
    args = []
    for name in names[:names.index("weight")]:
        with_rows = re.search(rf"\b{name} \((n(?:_\w+)?), (\d+)\)", doc)
        if name in given:
            args.append(given[name])
        elif with_rows:  # a cotangent with rows: of its space
            args.append(torch.randn(counts[with_rows.group(1)], int(with_rows.group(2)), generator=g, dtype=dtype))
        else:
            size = int(doc.split(f"{name} (")[1].split(",)")[0])
            args.append(torch.randn(size, generator=g, dtype=dtype))
    weight = torch.randn(module.weight.shape, generator=g, dtype=dtype)
    return args + [weight, *module.constants()]


def _check_module(ops, rows: int = 37) -> int:
    if hasattr(ops.module, "_native") and native.NativeKernels.usable(torch.float32):
        ops.module._native.build(torch.float64, torch.float32)  # every CPU compiling at once
    checked = 0
    for diagram in ops.diagrams:
        for name, reference, cpu in _programs(ops.module, diagram):
            for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
                g = torch.Generator().manual_seed(7)
                args = _arguments(cpu, diagram, getattr(ops, diagram.name), rows, dtype, g)
                cases = [(-1, args, None)] + mask_cases(name, cpu, args)
                for mask, arguments, compared in cases:  # whole, and per mask bit as it computes
                    want = reference(*arguments)
                    got = cpu(*arguments) if mask == -1 else cpu(*arguments, _mask=mask)
                    assert len(got) == len(want)
                    for k, (a, b) in enumerate(zip(got, want)):
                        assert a.shape == b.shape and a.dtype == b.dtype
                        if compared is not None and k not in compared:
                            continue
                        scale = b.abs().max() if b.numel() else 0
                        assert not b.numel() or (a - b).abs().max() <= tolerance * max(float(scale), 1.0), (name, mask)
            checked += 1
    return checked


@slow
@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.stem)
def test_every_program_of_the_standard_library(path):
    assert _check_module(fusionc.load(path)) > 0


def test_every_program_of_a_small_product():
    """The quick subset's check of the C kernels: forward, backward and double backward of a small
    uvw product (native compiling takes seconds per program), in float64 and float32."""
    assert _check_module(fusionc.loads(random_diagram(0, "uvw", lmax=1, max_mul=2)), rows=7) > 0


def test_statement_tables_give_what_the_statements_written_out_give(tmp_path, monkeypatch):
    """Long kernels run their statements from a table, a function per form (`fusionc.backends.native`):
    with a machine model where every kernel is long, a small product's kernels all do, and give
    what its reference gives (forward, backward, double backward, per mask bit)."""
    model = machine.Machine()
    model = replace(model, cpu_native=replace(model.cpu_native, o3_lines=0))
    path = tmp_path / "machine.json"
    path.write_text(model.to_json())
    monkeypatch.setenv("FUSIONC_MACHINE", str(path))
    ops = fusionc.loads(random_diagram(0, "uvw", lmax=1, max_mul=2))
    sources = ops.module._native.sources
    assert any("switch (_t[0])" in source for source in sources.values())
    assert _check_module(ops, rows=7) > 0


def test_programs_cut_into_units_give_what_one_unit_gives(tmp_path, monkeypatch):
    """A program's C is cut into translation units compiled in parallel (`runtime.native.units`):
    with a machine model where units are short, on 4 CPUs, a program of several kernels (every
    kernel tabled) is cut, each kernel in one unit, and still gives what its reference gives."""
    model = machine.Machine()
    model = replace(model, cpu_native=replace(model.cpu_native, o3_lines=0, unit_lines=40))
    path = tmp_path / "machine.json"
    path.write_text(model.to_json())
    monkeypatch.setenv("FUSIONC_MACHINE", str(path))
    monkeypatch.setattr(machine, "cpus", lambda: 4)
    ops = fusionc.loads(random_diagram(1, "uvw", lmax=1, max_mul=2))
    split = [s for s in ops.module._native.sources.values() if len(re.findall(r"^/\* kernel ", s, re.M)) > 1]
    assert split, "some program should have several kernels"
    for source in split:
        units = native.units(source)
        assert len(units) > 1
        assert sorted(name for unit in units for name in re.findall(r"^/\* kernel (\w+) \*/$", unit, re.M)) == \
            sorted(re.findall(r"^/\* kernel (\w+) \*/$", source, re.M))  # each kernel in one unit
    assert _check_module(ops, rows=7) > 0


def test_a_program_too_long_for_o3_compiles_each_mask_that_is_not_at_o3(tmp_path, monkeypatch):
    """A masked program too long for -O3 compiles, for a call whose mask leaves few enough of its
    statements, a library of its own for that mask, at -O3 (`runtime.native.for_mask`): with a
    machine model where a small product's second derivative is too long and one cotangent's share
    of it is not, that library is built, and every program still gives what its reference gives."""
    ops = fusionc.loads(random_diagram(0, "uvw", lmax=1, max_mul=2))
    kernels = ops.module._native
    name, source = next((p, s) for p, s in kernels.sources.items() if p.endswith("__d2"))
    model = machine.Machine()
    size = lambda text: sum(native._size(kernel, model.cpu_native) for kernel in native.kernels(text))
    live = max(size(native.live(source, bit)) for bit in (1, 2, 4))
    assert live < size(source) and "if (mask & " not in native.live(source, 0)
    model = replace(model, cpu_native=replace(model.cpu_native, o3_lines=live))
    path = tmp_path / "machine.json"
    path.write_text(model.to_json())
    monkeypatch.setenv("FUSIONC_MACHINE", str(path))
    assert native.flags_for(source)[0] == "-O1" and native.flags_for(native.live(source, 1))[0] == "-O3"
    assert "const int64_t mask = 1;" in native.for_mask(source, 1) and native.for_mask(source, 7) is None
    assert _check_module(ops, rows=7) > 0
    assert {(name, torch.float64, 1), (name, torch.float64, None)} <= set(kernels.libraries)


def test_narrow_kernels_count_more_towards_o3():
    """gcc -O3 unrolls whole loop nests around channel loops that fit one vector, and takes 5 times
    as long per statement there (`CpuNative.narrow_weight`): the same kernel with 16 channels
    compiles at -O1 where with 32 it compiles at -O3."""
    limit = machine.current().cpu_native.o3_lines
    statement = "for (int _u = 0; _u < {}; ++_u) x[_u] += y[_u];\n"
    count = int(limit / 6)  # three `;` a line
    assert native.flags_for(statement.format(32) * count)[0] == "-O3"
    assert native.flags_for(statement.format(16) * count)[0] == "-O1"


@slow
@pytest.mark.parametrize("mode", ["uvw", "uvu", "uuu", "uvuv"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_products(mode, seed):
    assert _check_module(fusionc.loads(random_diagram(seed, mode, lmax=3, max_mul=8)), rows=19) > 0


@slow
def test_random_product_whose_float64_kernels_faulted():
    """gcc placed a per-row buffer 16 bytes off the alignment its vector stores assumed (before
    buffers were declared aligned): a segmentation fault in float64."""
    assert _check_module(fusionc.loads(random_diagram(24, "uvw")), rows=8) > 0


@slow
@pytest.mark.parametrize("seed", [0, 1])
def test_random_nary_diagrams(seed):
    assert _check_module(fusionc.loads(random_nary_diagram(seed)), rows=19) > 0


_SOURCE = """
group O3
diagram tp {
    in  x : 8x0e + 8x1o + 8x2e
    in  y : 0e + 1o + 2e
    out z : 8x0e + 8x1o + 8x2e
    z = fuse(x, y) mix uvw
}
"""


def _counting(monkeypatch) -> list[str]:
    calls: list[str] = []
    run = native.NativeKernels.run

    def counted(self, name, n, *tensors):
        calls.append(name)
        return run(self, name, n, *tensors)

    monkeypatch.setattr(native.NativeKernels, "run", counted)
    return calls


def test_cpu_ops_run_native_kernels_by_default_and_torch_code_when_disabled(monkeypatch):
    ops = fusionc.loads(_SOURCE)
    module = ops.tp(dtype=torch.float64)
    x = torch.randn(50, 72, dtype=torch.float64, requires_grad=True)
    y = torch.randn(50, 9, dtype=torch.float64, requires_grad=True)
    calls = _counting(monkeypatch)
    out = module(x, y)
    grads = torch.autograd.grad(out.pow(2).sum(), (x, y, module.weight))
    assert any(c.startswith("tp__s") for c in calls) and any(c.startswith("tp__d__s") for c in calls)
    calls.clear()
    monkeypatch.setenv("FUSIONC_NATIVE", "0")
    out0 = module(x, y)
    grads0 = torch.autograd.grad(out0.pow(2).sum(), (x, y, module.weight))
    assert calls == []
    torch.testing.assert_close(out, out0, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@slow  # the ops run native kernels by default: test_gradients' gradchecks go through them too
def test_gradcheck_through_native_kernels():
    ops = fusionc.loads(_SOURCE)
    module = ops.tp(dtype=torch.float64)
    x = torch.randn(4, 72, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x, y))
    assert torch.autograd.gradgradcheck(module, (x, y))


def test_strided_inputs_and_thread_counts_give_the_same_result():
    ops = fusionc.loads(_SOURCE)
    module = ops.tp(dtype=torch.float64)
    wide = torch.randn(300, 100, dtype=torch.float64)
    x, y = wide[:, 3:75], wide[:, 80:89]  # rows of a wider tensor: a row stride of 100
    want = module(x.contiguous(), y.contiguous())
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            torch.testing.assert_close(module(x, y), want, rtol=1e-13, atol=1e-13)
    finally:
        torch.set_num_threads(threads)
    assert module(x[:0], y[:0]).shape == (0, 72)


def test_without_a_compiler_ops_warn_once_and_run_torch_code(monkeypatch):
    ops = fusionc.loads(_SOURCE)
    module = ops.tp(dtype=torch.float32)
    x, y = torch.randn(20, 72), torch.randn(20, 9)
    want = module(x, y)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(native, "_warned", False)
    calls = _counting(monkeypatch)
    with pytest.warns(UserWarning, match="no C compiler"):
        got = module(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(x, y)  # once only
    assert calls == []
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_failing_compile_is_an_error_and_leaves_no_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSIONC_NATIVE_FLAGS", "-O1 -this-flag-does-not-exist")
    ops = fusionc.loads(_SOURCE.replace("tp", "tq"))
    module = ops.tq(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="compiling native kernels"):
        module(torch.randn(3, 72), torch.randn(3, 9))
    assert not list((tmp_path / "native").glob("*.so"))
    assert not [p for p in (tmp_path / "native").iterdir() if p.name.startswith(".build")]
    monkeypatch.delenv("FUSIONC_NATIVE_FLAGS")
    assert module(torch.randn(3, 72), torch.randn(3, 9)).shape == (3, 72)
    assert list((tmp_path / "native").glob("*.so"))


def test_kernel_arguments_are_checked():
    ops = fusionc.loads(_SOURCE)
    kernels = ops.module._native
    name = next(n for n in kernels.kinds if n.startswith("tp__s"))
    tensors = [torch.zeros(4, 200) for _ in kernels.kinds[name]]
    tensors[-1] = tensors[-1].double()
    with pytest.raises(ValueError, match="must be torch.float32 on the CPU, got torch.float64"):
        kernels.run(name, 4, -1, *tensors)


@slow
def test_kernels_using_wide_vector_registers_clear_their_upper_halves(tmp_path, monkeypatch):
    """Code that leaves the upper halves of the AVX registers dirty slows the SSE code that runs
    after it (MKL's matrix products ran 2.5x slower after a kernel): every compiled kernel library
    that touches ymm or zmm registers executes vzeroupper."""
    objdump = shutil.which("objdump")
    if objdump is None or native._compiler() is None:
        pytest.skip("needs objdump and a C compiler")
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(tmp_path))
    kernels = fusionc.loads(_SOURCE).module._native
    for program, source in kernels.sources.items():
        library = native._build(native.HEADER + kernels.prelude, source, "float")
        code = subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True, check=True).stdout
        if "ymm" in code or "zmm" in code:
            assert "vzeroupper" in code, program


def test_modules_whose_native_kernels_differ_register_different_ops(monkeypatch, tmp_path):
    """Ops are named by a hash of their module's code: two modules with the same torch code but
    different C kernels (another fusionc's) must not share ops, or the second runs the first's kernels."""
    def namespace_and_c(text: str) -> tuple[str, str]:
        return text.split('OpNamespace("')[1].split('"')[0], text.split("rt.NativeKernels(")[1]

    before = namespace_and_c(generate(_SOURCE, "native.fus"))
    model = json.loads(machine.DEFAULT_PATH.read_text())
    model["cpu_native"]["accumulator_max"] = 0  # sums accumulate in memory: other C, same torch code
    (tmp_path / "machine.json").write_text(json.dumps(model))
    monkeypatch.setenv("FUSIONC_MACHINE", str(tmp_path / "machine.json"))
    after = namespace_and_c(generate(_SOURCE, "native.fus"))
    assert before[1] != after[1], "the change should have changed the C source"
    assert before[0] != after[0]


@slow
def test_build_compiles_every_program_before_its_first_call(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("needs a C compiler")
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(tmp_path))
    ops = fusionc.loads(_SOURCE + "# built ahead\n")  # a module of its own: nothing compiled yet
    kernels = ops.module._native
    assert not kernels.libraries
    kernels.build(torch.float32, torch.float64)
    assert set(kernels.libraries) == {(p, d, None) for p in kernels.sources for d in (torch.float32, torch.float64)}
    assert len(list((tmp_path / "native").glob("*.so"))) == 2 * len(kernels.sources)
    assert _check_module(ops, rows=5) > 0


def test_sums_over_rows_are_deterministic_and_zero_over_no_rows():
    """Weight gradients summed over rows by the kernels (each thread its block of rows, then the
    threads' sums in order) are the same bits run after run, and zero when there are no rows."""
    ops = fusionc.loads(_SOURCE)
    assert any("O" in kinds for kinds in ops.module._native.kinds.values())  # some sum runs natively
    module = ops.tp(dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(500, 72, generator=g), torch.randn(500, 9, generator=g)
    grads = []
    for _ in range(3):
        module.zero_grad()
        module(x, y).pow(2).sum().backward()
        grads.append(module.weight.grad.clone())
    assert all(torch.equal(grads[0], other) for other in grads[1:])
    module.zero_grad()
    module(x[:0], y[:0]).sum().backward()
    assert torch.equal(module.weight.grad, torch.zeros_like(module.weight))

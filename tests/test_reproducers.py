"""Defects found by fuzzing and by a new user's run (issue 17), one reproducer each: silent wrong
results, crashes, hangs and names that broke the generated code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import fusionc
from conftest import REPO, slow, slow_unless
from fusionc.algebra.cache import cache_root
from fusionc.backends import native
from fusionc.runtime import native as runtime_native
from fusionc.runtime.native import NativeKernels
from fusionc.testing import random_inputs

INTEGER_DTYPES = [torch.int8, torch.int16, torch.int32, torch.uint8, torch.uint16, torch.uint32, torch.uint64]


def _run(code: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh Python process with this test's cache (a crash there does not take pytest down)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(cache_root()), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=environment)


# -- silent wrong results ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def species_module():
    """A per-species linear map on 3 species: row r's output is x_r times species z_r's weights."""
    ops = fusionc.loads("diagram s { in x : 2x0e  in z : index(3)  out y : 2x0e  y = x mix uvw per z }")
    return ops.s(dtype=torch.float64)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_every_integer_dtype_selects_the_species_its_values_name(species_module, dtype) -> None:
    """uint8 species were read as a boolean mask (row 0 got species 0's weights); int8/int16 raised
    IndexError, uint16+ NotImplementedError. The reference: each row times its species' 2 × 2 block."""
    x = torch.randn(6, 2, dtype=torch.float64)
    z = torch.tensor([1, 2, 0, 1, 2, 2])
    blocks = species_module.weight.detach().reshape(3, 2, 2) / 2 ** 0.5  # e3nn's fan-in normalisation
    expected = torch.einsum("zu,zuw->zw", x, blocks[z])
    torch.testing.assert_close(species_module(x, z.to(dtype)), expected, rtol=1e-12, atol=1e-12)


def test_boolean_species_are_refused(species_module) -> None:
    with pytest.raises(ValueError, match="input 'z' must be an integer tensor"):
        species_module(torch.randn(2, 2, dtype=torch.float64), torch.tensor([True, False]))


def test_an_unsigned_value_beyond_int64_is_out_of_range(species_module) -> None:
    with pytest.raises(ValueError, match="input 'z' has values outside"):
        species_module(torch.randn(1, 2, dtype=torch.float64), torch.tensor([2 ** 64 - 1], dtype=torch.uint64))


def test_species_on_another_device_are_refused(species_module) -> None:
    """On `meta` the values were never checked (z = 999 accepted) and the output was uninitialised."""
    with pytest.raises(ValueError, match="input 'z' is on meta but the module is on cpu"):
        species_module(torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 999, device="meta"))


def test_a_diagram_named_like_anothers_derivative_runs_its_own_program() -> None:
    """`a_d` ran `a`'s derivative program (10·w·x instead of w·x + y): generated names derive
    from source names with '__', which no source name contains."""
    ops = fusionc.loads("diagram a { in x : 1x0e  out y : 1x0e  y = x mix uvw }\n"
                        "diagram a_d { in x : 1x0e  in y : 1x0e  out z : 1x0e  z = x mix uvw + y }")
    x, y = torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    for native in ("1", "0"):
        os.environ["FUSIONC_NATIVE"] = native
        try:
            module = ops.a_d(dtype=torch.float64)
            torch.testing.assert_close(module(x, y), module.weight.detach() * x + y, rtol=1e-12, atol=1e-12)
        finally:
            del os.environ["FUSIONC_NATIVE"]


def test_diagrams_of_one_name_in_two_sources_stay_apart() -> None:
    """Across files loaded in one process, each diagram runs its own program."""
    first = fusionc.loads("diagram d { in x : 1x0e  out y : 1x0e  y = x mix uvw }", filename="a.fus")
    second = fusionc.loads("diagram d { in x : 1x0e  in s : 1x0e  out y : 1x0e  y = x mix uvw + s }",
                           filename="b.fus")
    x, s = torch.randn(3, 1, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    a, b = first.d(dtype=torch.float64), second.d(dtype=torch.float64)
    torch.testing.assert_close(a(x), a.weight.detach() * x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b(x, s), b.weight.detach() * x + s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["register", "library", "namespace", "kernels", "annotations"])
def test_diagrams_named_like_the_runtimes_attributes_run(name: str) -> None:
    """Found by the fuzzer: a diagram named `register` (or `library`, …) replaced that attribute of
    the module's op namespace, breaking every diagram after it in the file."""
    ops = fusionc.loads(f"diagram {name} {{ in x : 1x0e  out y : 1x0e  y = x mix uvw }}\n"
                        f"diagram b {{ in x : 1x0e  out y : 1x0e  y = x }}")
    x = torch.randn(2, 1, dtype=torch.float64)
    module = getattr(ops, name)(dtype=torch.float64)
    torch.testing.assert_close(module(x), module.weight.detach() * x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ops.b(dtype=torch.float64)(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ops", "native", "module", "diagrams", "path", "super", "max"])
def test_diagram_names_the_generated_module_needs_are_reserved(name: str) -> None:
    with pytest.raises(fusionc.FusionError, match=f"'{name}' is reserved for a diagram"):
        fusionc.loads(f"diagram {name} {{ in x : 1x0e  out y : 1x0e  y = x mix uvw }}")


def test_a_weights_input_whose_term_is_pruned_takes_no_weights() -> None:
    """Found by the fuzzer: the term reading `w` feeds only a block nothing reads, so `w` has 0
    weights per row; the call raised (a reshape to (-1, 0))."""
    ops = fusionc.loads("diagram d { in x : 2x0e  in z : 0e + 1o  in w : weights  out o : 2x0e\n"
                        "  let t = fuse(x, z) -> 2x0e + 2x1o mix uvu + fuse(x, z) -> 2x1o mix uvu by w\n"
                        "  o = fuse(x, t) -> 2x0e mix uvu }")
    module = ops.d(dtype=torch.float64)
    assert module.input_weight_numel == {"w": 0}
    x, z = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert module(x, z, torch.zeros(3, 0, dtype=torch.float64)).shape == (3, 2)


@slow
def test_numeric_check_passes_an_output_that_symmetry_makes_zero(tmp_path) -> None:
    """Found by the fuzzer: 2e from 1e ⊗ 1e ⊗ 1e is zero; its rounding noise relative to itself
    made `check --numeric` report a failure (exit 1)."""
    path = tmp_path / "zero.fus"
    path.write_text("diagram d { in x : 1e  out p : 2e  let t = fuse(x, x) -> 2e  p = fuse(t, x) }\n")
    result = subprocess.run([sys.executable, "-m", "fusionc", "check", "--numeric", str(path)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_names_are_reserved_where_they_would_collide() -> None:
    for name in ("a__d", "class"):
        with pytest.raises(fusionc.FusionError, match=f"'{name}' is reserved"):
            fusionc.loads(f"diagram {name} {{ in x : 0e  out y : 0e  y = x mix uvw }}")
    with pytest.raises(fusionc.FusionError, match="'x__1' is reserved"):
        fusionc.loads("diagram d { in x__1 : 0e  out y : 0e  y = x__1 mix uvw }")


#: Source names chosen to equal names the back ends derived before: locals of the module's forward
#: (`batch`, `outputs`), gradient and piece names (`d_x`, `y_0`), per-term temporaries (`w_t_0_0`),
#: Triton locals (`rows`, `mask`, `zero`, `chans`, `sum1_0`, `p0_1`, `t__out`) and program suffixes.
ADVERSARIAL = {"x": "batch", "s": "d_x", "t": "outputs", "z": "w_t_0_0", "y": "y_0"}
MORE = ["rows", "row_mask", "mask", "zero", "chans", "chan_mask", "sum1_0", "p0_1", "y_cpu", "d_only_x", "ch4"]


def _renamed(source: str, names: dict[str, str]) -> str:
    return re.sub(r"\b(" + "|".join(names) + r")\b", lambda m: names[m.group(1)], source)


@slow
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_source_names_never_change_the_numbers(backend: str) -> None:
    """The same diagram with every name replaced by one the generated code used itself gives the
    same outputs and gradients, on every path (torch code, native kernels, Triton)."""
    plain = textwrap.dedent("""\
        diagram d {
            in x : 4x0e + 4x1o
            in s : 0e + 1o
            in z : index(2)
            out y : 4x0e + 4x1o
            let t = fuse(x, s) -> 4x0e + 4x1o mix uvu per z
            y = fuse(t, s) mix uvw + fuse(x, x) mix uuu + t mix uvw
        }
        """)
    extra = "".join(f"diagram {name} {{ in a : 2x0e  out b : 2x0e  b = a mix uvw }}\n" for name in MORE)
    hostile = _renamed(plain, ADVERSARIAL) + extra
    results = []
    for source in (plain, hostile):
        ops = fusionc.loads(source, backend=backend)
        module = ops.d(dtype=torch.float64)
        module.weight.data = torch.linspace(-1, 1, module.weight_numel, dtype=torch.float64)
        args = random_inputs(module, ops.diagrams[0], 5, torch.Generator().manual_seed(0))
        floats = [a.requires_grad_() for a in args if a.is_floating_point()]
        for native in (("1", "0") if backend == "torch" else ("0",)):
            os.environ["FUSIONC_NATIVE"] = native
            try:
                out = module(*args)
                grads = torch.autograd.grad(out.pow(2).sum(), floats + [module.weight])
            finally:
                del os.environ["FUSIONC_NATIVE"]
            results.append([out, *grads])
    half = len(results) // 2
    for mine, theirs in zip(results[:half], results[half:]):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


#: That gradient's miscompiled statements, alone: x's (6 values a row) from the cotangent and y · G.
#: Integer values, so every compiler and flag must give exactly -O0's numbers.
_GCC_REPRODUCER = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
static void f(int64_t n, const double *restrict y, const double *restrict G, const double *restrict dz,
              double *restrict out)
{
  for (int64_t z = 0; z < n; ++z) {
    const double *restrict a3 = y + z * 4;
    const double *restrict a5 = dz + z * 6;
    double l0[16] __attribute__((aligned(64)));
    memset(l0, 0, sizeof(double) * 16);
    double l1[6] __attribute__((aligned(64)));
    memset(l1, 0, sizeof(double) * 6);
    double acc[16] __attribute__((aligned(64))) = {0};
    for (int j = 0; j < 4; ++j) for (int c = 0; c < 16; ++c)
      acc[c] += a3[j] * G[j * 16 + c];
    for (int c = 0; c < 16; ++c)
      l0[c] += acc[c];
    for (int i = 0; i < 3; ++i) for (int w = 0; w < 2; ++w) for (int k = 0; k < 3; ++k)
      l1[i * 2 + w] += a5[w * 3 + k] * (l0 + 7)[i * 3 + k];
    for (int i = 0; i < 6; ++i) out[z * 6 + i] = l1[i];
  }
}
int main(void)
{
  double y[64], G[64], dz[96], out[96];
  uint32_t s = 1;
  for (int i = 0; i < 64; ++i) { s = s * 1103515245u + 12345u; y[i] = (int)(s >> 16) % 7 - 3; }
  for (int i = 0; i < 64; ++i) { s = s * 1103515245u + 12345u; G[i] = (int)(s >> 16) % 5 - 2; }
  for (int i = 0; i < 96; ++i) { s = s * 1103515245u + 12345u; dz[i] = (int)(s >> 16) % 5 - 2; }
  f(16, y, G, dz, out);
  for (int i = 0; i < 96; ++i) printf("%g ", out[i]);
  return 0;
}
"""


@pytest.mark.parametrize("flags", ["FLAGS", "O3_FLAGS"])
def test_the_native_flags_compile_a_gcc_miscompilation_right(flags, tmp_path) -> None:
    """gcc 12.2 at -O1 or -O2 with -fpeel-loops, vectorising with 512-bit vectors (-march=native on
    this AVX-512 machine), got 28 of these 96 values wrong, as it did the gradient below: the
    loop and SLP vectorisers over completely peeled component loops. Neither of the flag sets the
    native kernels compile with may: each must print what -O0 prints."""
    compiler = runtime_native._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    (tmp_path / "r.c").write_text(_GCC_REPRODUCER)
    outputs = []
    for name, options in (("O0", ["-O0"]), (flags, getattr(runtime_native, flags))):
        options = [o for o in options if o not in ("-shared", "-fPIC")]
        subprocess.run([compiler, *options, "r.c", "-o", name], cwd=tmp_path, check=True)
        outputs.append(subprocess.run([str(tmp_path / name)], capture_output=True, text=True, check=True).stdout)
    expected, got = ([float(v) for v in output.split()] for output in outputs)
    assert len(expected) == 96 and any(expected)
    assert got == expected


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)], ids=str)
def test_native_gradients_of_a_small_product_equal_the_torch_code(dtype, tolerance, monkeypatch) -> None:
    """gcc 12 miscompiled this gradient at -O1 with -fpeel-loops and the vectoriser (x's and the
    weights' gradients off by 5-400%, differently from run to run); the forward was right."""
    ops = fusionc.loads("diagram d { in x : 2x0e + 2x1o  in y : 0e + 1o  out z : 2x0e + 2x1o  z = fuse(x, y) mix uvw }")
    module = ops.d(dtype=dtype)
    for rows in (1, 3, 16, 100):
        g = torch.Generator().manual_seed(rows)
        x, y = (torch.randn(rows, dim, dtype=dtype, generator=g, requires_grad=True) for dim in (8, 4))
        cotangent = torch.randn(rows, 8, dtype=dtype, generator=g)
        results = []
        for native in ("1", "0"):
            monkeypatch.setenv("FUSIONC_NATIVE", native)
            results.append(torch.autograd.grad(module(x, y), [x, y, module.weight], cotangent))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


# -- crashes and hangs ------------------------------------------------------------------------------

@slow
def test_a_large_per_row_buffer_lives_on_the_heap() -> None:
    """The backward of a 40000x4e uvuv product needed a 1.8-million-element per-row buffer, which
    was declared on the stack: SIGSEGV. Its gradients equal the torch code's."""
    result = _run("""
        import os, torch, fusionc
        ops = fusionc.loads("diagram d { in x : 200x2e  in y : 200x2e  out z : 40000x4e  z = fuse(x, y) mix uvuv }")
        m = ops.d(dtype=torch.float64)
        g = torch.Generator().manual_seed(0)
        x, y = (torch.randn(2, 1000, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
        c = torch.randn(2, 360000, dtype=torch.float64, generator=g)
        native = torch.autograd.grad(m(x, y), [x, y, m.weight], c)
        os.environ["FUSIONC_NATIVE"] = "0"
        reference = torch.autograd.grad(m(x, y), [x, y, m.weight], c)
        print(max(float((a - b).abs().max()) for a, b in zip(native, reference)))
        """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) < 1e-10


def test_a_failed_allocation_is_a_memory_error() -> None:
    """A kernel whose heap buffer cannot be had (8 TiB per thread) raises a MemoryError naming it,
    not a crash or a silent wrong result; so does a sum over rows whose partial sums cannot be."""
    for arguments, locals_ in (([native.Argument("a0", True, 4, "o")], {"l0": (1 << 40, None)}),
                               ([native.Argument("a0", False, 1 << 40, "O")], {})):
        source = native.segment_function("t__s0", arguments, locals_, native.SegmentWriter())
        kernels = NativeKernels({"t": source}, {"t__s0": arguments[0].kind})
        with pytest.raises(MemoryError, match="native kernel t__s0 could not allocate"):
            kernels.run("t__s0", 3, -1, torch.zeros(3, 4) if arguments[0].rows else torch.zeros(1))


@slow
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_native_library_is_rebuilt(damage: str, tmp_path, monkeypatch) -> None:
    """A truncated or overwritten cached library crashed every later process that loaded it. (A
    cache of its own: this process has the session cache's libraries mapped, and damaging one in
    place would crash it.)"""
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(tmp_path))
    call = """
        import torch, fusionc
        ops = fusionc.loads("diagram d { in x : 4x1o  in y : 1o  out z : 4x0e  z = fuse(x, y) mix uvw }")
        m = ops.d(dtype=torch.float64)
        m.weight.data = torch.arange(16, dtype=torch.float64)
        x = torch.arange(12, dtype=torch.float64).reshape(1, 12)
        y = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
        print(m(x, y).tolist())
        """
    first = _run(call)
    assert first.returncode == 0, first.stderr[-2000:]
    libraries = sorted((cache_root() / "native").glob("*.so"))
    assert libraries
    for path in libraries:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if damage == "truncated" else bytes(len(data)))
    again = _run(call)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == first.stdout


# a Python process each: the quick subset runs the first
@pytest.mark.parametrize("source, limit", slow_unless([
    ("diagram d { in A : 1000e  out B : 0e  B = fuse(A, A) mix none }", "FUSIONC_MAX_L"),
    ("diagram d { in A : 2e  out B : 99999999999999999999e  B = fuse(A, A) mix none }", "FUSIONC_MAX_L"),
    ("diagram d { in A : 200000x0e  out B : 200000x0e  B = A mix uuu }", "FUSIONC_MAX_MUL"),
    ("diagram d { in A : 8e  out B : 8e  B = fuse(A, A, A) mix none }", "FUSIONC_MAX_L"),  # an inner label
    ("diagram d { in A : 1e + 1o + 2e + 2o  out B : 0e  B = fuse(A, A, A, A, A, A, A, A) mix none }",
     "FUSIONC_MAX_PATHS"),
    ("diagram d { in A : " + " + ".join(["0e"] * 400) + "  out B : 0e  B = fuse(A, A) mix none }",
     "FUSIONC_MAX_PATHS"),
    ("diagram d { in A : 20000x0e  out B : 20000x0e  B = A mix uvw }", "FUSIONC_MAX_WEIGHTS"),
], lambda case: " 1000e " in case[0]))
def test_sizes_nobody_can_run_fail_fast_with_the_limit_named(source: str, limit: str) -> None:
    """These hung (or would have exhausted memory); a subprocess with a time-out catches a hang."""
    result = subprocess.run([sys.executable, "-c", "import sys, fusionc; fusionc.loads(sys.stdin.read())"],
                            input=source, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert re.search(rf"<string>:1:\d+: error: .*over fusionc's limit of [\d,]+ .*set {limit} to raise it",
                     result.stderr), result.stderr[-1000:]


def test_only_ascii_digits_are_numbers() -> None:
    """Found by the fuzzer: `1١` (an Arabic-Indic one) read as l = 11, and the fusion of four such
    operands ran for minutes."""
    with pytest.raises(fusionc.FusionError) as caught:
        fusionc.loads("diagram d { in A : 1x1١  out B : 1x1  B = A mix uvw }")
    assert re.match(r"<string>:1:\d+: error: ", str(caught.value))


def test_a_limit_can_be_raised(monkeypatch) -> None:
    source = "diagram d { in A : 17e  out B : 17e  B = A mix uvw }"
    with pytest.raises(fusionc.FusionError, match="FUSIONC_MAX_L"):
        fusionc.loads(source)
    monkeypatch.setenv("FUSIONC_MAX_L", "17")
    assert fusionc.loads(source).d().weight_numel == 1


@pytest.mark.parametrize("native", ["1", "0"])
def test_an_empty_batch_gives_empty_outputs_and_gradients(native: str, monkeypatch) -> None:
    """conv_tp's backward on the torch path raised on 0 rows (a reshape to (0, -1))."""
    monkeypatch.setenv("FUSIONC_NATIVE", native)
    ops = fusionc.load(REPO / "kernels" / "tensor_products.fus")
    for d in ops.diagrams:
        module = getattr(ops, d.name)(dtype=torch.float64)
        args = random_inputs(module, d, 0, torch.Generator().manual_seed(0))
        floats = [a.requires_grad_() for a in args if a.is_floating_point()]
        out = module(*args)
        assert out.shape == (0, d.outputs[0].irreps.dim)
        weights = [module.weight] if module.weight_numel else []
        grads = torch.autograd.grad(out.sum(), floats + weights, create_graph=True, allow_unused=True)
        for a, g in zip(floats, grads):
            assert g is None or g.shape == a.shape
        if weights:  # a sum over no rows
            assert torch.equal(grads[-1], torch.zeros_like(module.weight))


# -- names and sources that broke the generated code ------------------------------------------------

@pytest.mark.parametrize("native", ["1", "0"])
def test_an_output_equal_to_an_input_is_a_copy(native: str, monkeypatch) -> None:
    """`y = x` made the torch path's custom op return its own input, which torch refuses."""
    monkeypatch.setenv("FUSIONC_NATIVE", native)
    module = fusionc.loads("diagram d { in x : 2x1o  out y : 2x1o  y = x }").d(dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g, torch.ones_like(x))


@slow
def test_a_sum_of_thousands_of_terms_compiles_and_runs() -> None:
    """3,000 terms overflowed Python's parser (one nesting level per '+'); with native kernels,
    a kernel took 6,006 ctypes arguments, over ctypes' 1,024."""
    module = fusionc.loads("diagram d { in x : 2x1o  out y : 2x1o  y = " + " + ".join(["x mix uvw"] * 3000)
                           + " }").d(dtype=torch.float64)
    x = torch.randn(2, 6, dtype=torch.float64)
    blocks = module.weight.detach().reshape(3000, 2, 2).sum(0) / 2 ** 0.5
    expected = torch.einsum("zui,uw->zwi", x.reshape(2, 2, 3), blocks).reshape(2, 6)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("source, message", [
    ("diagram d {}", "diagram 'd' has no outputs"),
    ("diagram d { in x : 2x1o  in s : 1o  in w : weights  out y : 2x1o  y = x mix uvw + fuse(x, s) mix uvu by w }",
     "'fuse\\(x, s\\) mix uvu by w' gives no block of 'y' \\(2x1o\\): it has no path"),
    ("diagram d { in feats : 2x1o  out y : 2x1o  y = feat mix uvw }", "unknown name 'feat'; did you mean 'feats'\\?"),
    ("diagram d { in x : 2x1o  in z : index(" + "9" * 5000 + ")  out y : 2x1o  y = x mix uvw per z }",
     "has 5000 digits; fusionc reads at most 18"),
])
def test_located_errors_instead_of_crashes(source: str, message: str) -> None:
    with pytest.raises(fusionc.FusionError, match=message) as caught:
        fusionc.loads(source)
    assert re.match(r"<string>:1:\d+: error: ", str(caught.value))


@slow
def test_first_call_of_a_cached_op_does_not_import_dynamo() -> None:
    """torch.library.custom_op's first call imports torch._dynamo (0.9 s of a cached fc_tp's 2 s
    first use); the ops are registered without it."""
    code = """
        import sys, torch, fusionc
        ops = fusionc.load(%r)
        ops.fc_tp()(torch.randn(2, 288), torch.randn(2, 16))
        print("torch._dynamo" in sys.modules)
        """ % str(REPO / "kernels" / "tensor_products.fus")
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"

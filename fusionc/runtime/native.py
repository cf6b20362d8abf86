"""Compile, cache and call the native CPU kernels of a generated module.

A module's C source (`fusionc.backends.native`) is compiled on first use, once per dtype, with the
system C compiler (`$CC`, else `cc`): `-O1` with the vectoriser, -O3 for the smaller programs
(`FLAGS`, `O3_FLAGS`, `flags_for`), `-march=native -fopenmp`, `real` defined as float or double; a long
program as several translation units compiled in parallel (`units`); a masked program too long for
-O3, for a mask whose statements are not, as a library of its own for that mask, at -O3 (`for_mask`).
The shared library is cached under `$FUSIONC_CACHE_DIR/native/`, keyed by the source, the flags,
the compiler and the CPU, and written atomically: a compile that fails or is interrupted leaves no
entry. OpenMP runs on the libgomp torch has loaded, so kernels and torch share one
thread pool (`torch.get_num_threads()` threads).

Where there is no C compiler, or `FUSIONC_NATIVE=0`, the ops run their torch code on the CPU as
well: slower, the same results; a warning says so once (not for `FUSIONC_NATIVE=0`). A compiler
that is there but fails is an error, with its message.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from fusionc import machine

from fusionc.algebra.cache import cache_root
from fusionc.runtime.grouping import groups

#: What goes before a program's functions when they are compiled. It lives here, with the flags and
#: the `real` it leaves open, not with the code generator: generated modules carry their functions
#: only, and loading one imports no part of the compiler.
HEADER = """\
/* Row-local statements of a fusionc program as C (fusionc/backends/native.py): per function,
 * one loop over rows. `real` is float or double, defined when the runtime compiles. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define ALIGNED __attribute__((aligned(64)))
"""

#: The first line of a kernel function's definition: the signature `NativeKernels` calls.
_DEFINITION = re.compile(r"^int (\w+)\(int64_t n, int threads, int64_t mask, void \*const \*ptr, "
                         r"const int64_t \*stride\)$",
                         re.MULTILINE)

#: -O1 with the vectoriser: its compile time grows with the program (about 0.6 ms per line of C:
#: fc_tp's gradient 1 s, fusion_block's largest second derivative 9 s); -O3 takes 4× as long there.
#: -fexpensive-optimizations makes gcc end AVX code with vzeroupper (its -O1 does not): without it
#: the dirty upper halves of the vector registers left by a kernel slowed every matrix product MKL
#: ran after it 2.5× (fusion_block's (16,000 × 35)·(35 × 5) CG products: 1.15 ms against 0.45),
#: until a torch kernel cleared them.
FLAGS = ("-O1", "-fexpensive-optimizations", "-ftree-vectorize", "-march=native", "-fopenmp", "-shared", "-fPIC",
         "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-ffp-contract=fast")
TYPES = {torch.float32: "float", torch.float64: "double"}

_lock = threading.Lock()
_warned = False


@functools.lru_cache(maxsize=None)
def _find(cc: str) -> str | None:
    return shutil.which(cc)


def _compiler() -> str | None:
    return _find(os.environ.get("CC", "cc"))


def enabled() -> bool:
    """Whether CPU ops run native kernels: FUSIONC_NATIVE is not 0 and a C compiler is there."""
    global _warned
    if os.environ.get("FUSIONC_NATIVE", "1") == "0":
        return False
    if _compiler() is None:
        if not _warned:
            warnings.warn("fusionc: no C compiler found ($CC or cc); CPU ops run as torch code, several times "
                          "slower. Install one (e.g. gcc), or set FUSIONC_NATIVE=0 to silence this.", stacklevel=3)
            _warned = True
        return False
    return True


@functools.lru_cache(maxsize=None)
def _version(cc: str) -> str:
    return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.split("\n")[0]


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    """What -march=native depends on: the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "\n".join(sorted({line for line in info.splitlines() if line.startswith(("model name", "flags"))}))
    except OSError:
        import platform
        return platform.processor() + platform.machine()


#: How a loop over a statement table starts (`fusionc.backends.native`): gcc -O3 made those of
#: fusion_block's forward 2.7x slower than -O1 did (7.6 ms against 2.7 for 1,000 rows)
_STATEMENT_TABLE = "for (const int *_t = "
_TABLE_LOOP = re.compile(r"for \(int _e = 0; _e < (\d+); \+\+_e\)")
_CHANNEL_LOOP = re.compile(r"for \(int _[uvw] = 0; _[uvw] < (\d+); ")
#: The first line of each kernel's C (`fusionc.backends.native.KERNEL_MARK`).
_KERNEL = re.compile(r"^/\* kernel \w+ \*/$", re.MULTILINE)


def kernels(source: str) -> list[str]:
    """A program's C cut where `_KERNEL` marks it, a kernel a piece; a source without marks is one."""
    bounds = [0] + [m.start() for m in list(_KERNEL.finditer(source))[1:]] + [len(source)]
    return [source[a:b].strip("\n") for a, b in zip(bounds, bounds[1:])]


def _size(kernel: str, model: machine.CpuNative) -> float:
    """A kernel's C statements as gcc -O3 spends its time on them (`CpuNative`): `;` however the
    lines are laid out, `sparse_weight` per non-zero of a loop over a CG table, all of it
    `narrow_weight` times where every channel loop fits one vector."""
    size = kernel.count(";") + model.sparse_weight * sum(map(int, _TABLE_LOOP.findall(kernel)))
    channels = [int(c) for c in _CHANNEL_LOOP.findall(kernel)]
    return size * (model.narrow_weight if channels and max(channels) <= model.narrow_channels else 1)


#: -O3 for the smaller programs, without its predictive commoning (which keeps values loaded on one
#: trip of a loop in registers for the next; measured, not analysed, to slow these kernels): without
#: it fc_tp's forward runs 1.6x as fast (float32, 1,000 rows: 1.4 ms against 2.3), its forward+
#: backward 1.2-1.4x, and no benchmarked program slower (conv_tp's double backward 1.1-1.2x faster).
#: Not -O1 or -O2 with -O3's loop peeling instead, as fusionc did before: gcc 12.2 miscompiles that
#: pipeline when it vectorises with 512-bit vectors (its loop and SLP vectorisers over completely
#: peeled component loops; tests/test_reproducers.py).
O3_FLAGS = ("-O3", "-fno-predictive-commoning", *FLAGS[1:])


def flags_for(source: str) -> tuple[str, ...]:
    """The compiler flags for a program's C source: O3_FLAGS up to `CpuNative.o3_lines` C
    statements (as `_size` counts them), else FLAGS (see `fusionc.machine`)."""
    model = machine.current().cpu_native
    small = sum(_size(kernel, model) for kernel in kernels(source)) <= model.o3_lines
    return O3_FLAGS if small and _STATEMENT_TABLE not in source else FLAGS


#: A statement that runs for some mask bits only (`fusionc.backends.native`): `if (mask & K)`, then
#: the statement on the same line, or a block (`{` to the `}` at the if's indentation), or the lines
#: indented under it.
_GUARD = re.compile(r"^( *)if \(mask & (\d+)\)(.*)$", re.MULTILINE)
#: A kernel's parameters and the start of its body (`_DEFINITION`).
_BODY = re.compile(r"int64_t mask, (void \*const \*ptr, const int64_t \*stride\)\n\{\n)")


def live(source: str, mask: int) -> str:
    """`source` without the statements a call with `mask` skips: what gcc optimises when a library
    is built for that mask (`for_mask`), and what `_size` counts to choose its flags."""
    out, skip = [], None  # skip: (indentation of the if being skipped, whether it opened a block)
    for line in source.splitlines():
        depth = len(line) - len(line.lstrip(" "))
        if skip is not None:
            if depth > skip[0]:
                continue
            closing = skip[1] and depth == skip[0] and line.strip() == "}"
            skip = None
            if closing:
                continue
        guard = _GUARD.match(line)
        if guard and not int(guard[2]) & mask:
            skip = (len(guard[1]), guard[3].strip() == "{")
            continue
        out.append(line)
    return "\n".join(out)


def for_mask(source: str, mask: int) -> str | None:
    """A program's C as a library for calls with `mask` alone, where that buys -O3: in each kernel
    `mask` is a constant, so gcc drops what the mask skips before its costly passes and the rest
    compiles at O3_FLAGS (a constant local: setting the parameter instead, gcc compiled conv_tp's
    second derivative 2.7x as long, OpenMP's outlined loop taking it as a variable). None where
    `flags_for` gives the whole program -O3 already, where it runs statement tables, and where
    even this mask's statements are too many for -O3. conv_tp's second
    derivative, 3,882 statements, is 1,832 for the forces' mask (a cotangent on the gradient with
    respect to sh alone): 15.5 ms against 23.6 at -O1 (float32, 2,000 rows), compiled in 4.1 s."""
    if flags_for(source) == O3_FLAGS or _STATEMENT_TABLE in source or not _GUARD.search(source):
        return None
    if flags_for(live(source, mask)) != O3_FLAGS:
        return None
    return _BODY.sub(rf"int64_t mask_given, \g<1>  const int64_t mask = {mask};\n", source)


def units(source: str) -> list[str]:
    """A program's C as translation units of about `CpuNative.unit_lines` C statements, at most
    one per CPU (gcc's time grows with a unit, and each runs on its own CPU): its kernels dealt
    the largest first, each to the unit with the fewest statements so far, in their order within
    a unit."""
    own = kernels(source)
    sizes = [kernel.count(";") for kernel in own]
    count = max(1, min(machine.cpus(), len(own), round(sum(sizes) / machine.current().cpu_native.unit_lines)))
    loads, members = [0] * count, [[] for _ in range(count)]
    for k in sorted(range(len(own)), key=lambda k: (-sizes[k], k)):
        unit = loads.index(min(loads))
        loads[unit] += sizes[k]
        members[unit].append(k)
    return ["\n\n".join(own[k] for k in sorted(unit)) for unit in members]


#: Every cached library ends with this and the sha256 of the bytes before it (the dynamic loader
#: reads only the parts the ELF headers point at): a truncated or overwritten library, which
#: would crash the process that loads it, is seen as damaged and built again.
_TRAILER = b"\nfusionc sha256 "


def _whole(path: Path) -> bool:
    """Whether a cached library is the one its trailer vouches for."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    body, found, digest = data.rpartition(_TRAILER)
    return bool(found) and digest == hashlib.sha256(body).hexdigest().encode()


#: Compiler processes running at once in this process, at most one per CPU: `NativeKernels.build`
#: compiles programs side by side, and each program's units side by side.
_SLOTS = threading.BoundedSemaphore(machine.cpus())


def _run(command: list[str]) -> subprocess.CompletedProcess:
    with _SLOTS:
        return subprocess.run(command, capture_output=True, text=True)


def _build(prelude: str, source: str, real: str, flags: tuple[str, ...] | None = None) -> Path:
    """The cached library of a program's C: its translation units (`units`, each after `prelude`)
    compiled in parallel, then linked; with `flags`, else `flags_for(source)` (either replaced by
    `$FUSIONC_NATIVE_FLAGS`)."""
    cc = _compiler()
    flags = (*(os.environ.get("FUSIONC_NATIVE_FLAGS") or " ".join(flags or flags_for(source))).split(),
             f"-Dreal={real}")
    key = hashlib.sha256("\0".join((prelude, source, " ".join(flags), _version(cc), _machine())).encode()).hexdigest()
    path = cache_root() / "native" / f"{key[:32]}.so"
    if _whole(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as build:
        so = Path(build) / "kernels.so"
        parts, objects = units(source), []
        for k, unit in enumerate(parts):
            (Path(build) / f"kernels{k}.c").write_text(prelude + unit + "\n")
            objects.append(str(Path(build) / f"kernels{k}.o"))
        steps = ([[[cc, *flags, "-o", str(so), str(Path(build) / "kernels0.c")]]] if len(parts) == 1 else
                 [[[cc, *flags, "-c", "-o", o, o[:-2] + ".c"] for o in objects], [[cc, *flags, "-o", str(so), *objects]]])
        for step in steps:  # the units at once, then the link
            with ThreadPoolExecutor(max_workers=len(step)) as pool:
                errors = [r.stderr for r in pool.map(_run, step) if r.returncode != 0]
            if errors:
                raise RuntimeError(f"fusionc: compiling native kernels with {cc} failed:\n{errors[0][-4000:]}")
        data = so.read_bytes()
        so.write_bytes(data + _TRAILER + hashlib.sha256(data).hexdigest().encode())
        os.replace(so, path)  # whole or absent: readers never see a partial library
    return path


def _row_major(t: torch.Tensor) -> bool:
    """Whether every axis after the first (rows) is laid out contiguously."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def cg_declarations(tables: dict[tuple[int, int, int], tuple[tuple[int, int, int, float], ...]]) -> str:
    """C declarations of CG tables, each `cg_<l1>_<l2>_<l3>` an array of its non-zeros (i, j, k,
    value), the values exact doubles (Python's repr round-trips), for kernels that loop over them."""
    lines = ["struct fusionc_cg { int i, j, k; double c; };"]
    for ls, entries in sorted(tables.items()):
        texts = [f"{{{i}, {j}, {k}, {v!r}}}," for i, j, k, v in entries]
        lines.append("static const struct fusionc_cg cg_{}_{}_{}[{}] = {{".format(*ls, len(entries)))
        lines += ["    " + " ".join(texts[start:start + 4]) for start in range(0, len(texts), 4)]
        lines.append("};")
    return "\n".join(lines) + "\n"


class NativeKernels:
    """The C functions of one generated module, by program: `sources[program]` holds its
    functions (compiled into one library, after the declarations of the module's `cg_tables`
    (`cg_declarations`), on the first call of one of them, per dtype); `kinds[name]`
    gives, per argument of function `name`, `r` (rows in, (n, ...) with a row stride), `s` (shared
    in, no rows), `o` (rows out, overwritten), `a` (rows, accumulated into), `O` (shared out, the
    sum over rows) or `A` (shared, the sum over rows added to it)."""

    def __init__(self, sources: dict[str, str], kinds: dict[str, str],
                 cg_tables: dict[tuple[int, int, int], tuple[tuple[int, int, int, float], ...]] | None = None) -> None:
        self.sources, self.kinds = sources, kinds
        self.prelude = cg_declarations(cg_tables) if cg_tables else ""
        #: by (program, dtype, mask): the mask a library was built for (`for_mask`), else None
        self.libraries: dict[tuple[str, torch.dtype, int | None], ctypes.CDLL] = {}
        self.functions: dict[tuple[str, torch.dtype, int | None], object] = {}
        self.variants: dict[tuple[str, int], int | None] = {}  # (program, mask) -> the library's mask

    @functools.cached_property
    def programs(self) -> dict[str, str]:
        """The program whose source defines each function: read from the sources, not from the
        code generator's names for functions (the runtime imports no part of the compiler), and
        at the first call, so that importing a module scans no C."""
        return {name: program for program, source in self.sources.items() for name in _DEFINITION.findall(source)}

    @staticmethod
    def groups(index: torch.Tensor, count: int) -> torch.Tensor:
        """Rows grouped by `index` for a kernel that scatters by it (`fusionc.runtime.grouping`)."""
        return groups(index, count)

    @staticmethod
    def usable(dtype: torch.dtype) -> bool:
        """Whether ops of this dtype run native kernels."""
        return dtype in TYPES and enabled()

    def build(self, *dtypes: torch.dtype) -> None:
        """Compile every program's kernels for these dtypes now, a compiler process per CPU at
        once, rather than each at its program's first call."""
        todo = [(program, dtype, None) for dtype in dtypes for program in self.sources
                if (program, dtype, None) not in self.libraries]
        with ThreadPoolExecutor(max_workers=machine.cpus()) as pool:
            paths = list(pool.map(lambda key: self._compiled(*key), todo))
        with _lock:
            for key, path in zip(todo, paths):
                self.libraries.setdefault(key, ctypes.CDLL(str(path)))

    def _variant(self, program: str, mask: int) -> int | None:
        """The mask of the library that runs `program` for calls with `mask`: that mask's own
        (`for_mask`, the bits no statement tests cleared), or None for the program's library."""
        key = (program, mask)
        if key not in self.variants:
            source = self.sources[program]
            tested = functools.reduce(int.__or__, (int(bits) for _, bits, _ in _GUARD.findall(source)), 0)
            self.variants[key] = mask & tested if for_mask(source, mask & tested) is not None else None
        return self.variants[key]

    def _compiled(self, program: str, dtype: torch.dtype, mask: int | None) -> Path:
        if mask is None:
            return _build(HEADER + self.prelude, self.sources[program], TYPES[dtype])
        return _build(HEADER + self.prelude, for_mask(self.sources[program], mask), TYPES[dtype], O3_FLAGS)

    def _function(self, name: str, dtype: torch.dtype, mask: int):
        program = self.programs[name]
        key = (program, dtype, self._variant(program, mask))
        f = self.functions.get((name, *key[1:]))
        if f is None:
            with _lock:
                if key not in self.libraries:
                    self.libraries[key] = ctypes.CDLL(str(self._compiled(*key)))
            f = getattr(self.libraries[key], name)
            f.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
            f.restype = ctypes.c_int
            self.functions[(name, *key[1:])] = f
        return f

    def run(self, name: str, n: int, mask: int, *tensors: torch.Tensor | None) -> None:
        """Run kernel `name` on n rows, its statements that serve some mask bits only where `mask`
        has one of them; its outputs (the `o`, `a`, `O` and `A` arguments) are written. An input
        that is None (torch code the mask skipped) is read by no statement that runs: NULL."""
        kinds = self.kinds[name]
        dtype = next(t for t, kind in zip(tensors, kinds) if t is not None and kind not in "ig").dtype
        if n == 0:  # nothing to run: sums over no rows are zero
            for t, kind in zip(tensors, kinds):
                if kind == "O":
                    t.zero_()
            return
        pointers, strides = [], []
        keep = []  # copies made here live until the call returns
        for t, kind in zip(tensors, kinds):
            if t is None and kind in "rs":
                pointers.append(None)
                strides.append(0)
                continue
            if kind in "ig":  # an index (n,), or rows grouped by one (`groups`): int64, contiguous
                if t.dtype is not torch.int64 or not t.is_contiguous():
                    raise ValueError(f"native kernel {name}: an index must be contiguous int64, got {t.dtype}")
                pointers.append(t.data_ptr())
                strides.append(t.numel() - n - 1 if kind == "g" else 1)
                continue
            if t.dtype is not dtype or not t.is_cpu:
                raise ValueError(f"native kernel {name}: every tensor must be {dtype} on the CPU, got {t.dtype} "
                                 f"on {t.device}")
            if kind in "OA" and not t.is_contiguous():
                raise ValueError(f"native kernel {name}: a sum over rows must be contiguous, got strides {t.stride()}")
            if kind in "sOA":
                if not t.is_contiguous():
                    t = t.contiguous()
                    keep.append(t)
                pointers.append(t.data_ptr())
                strides.append(0)
                continue
            if not t.is_contiguous() and not _row_major(t):
                if kind in "oa":
                    raise ValueError(f"native kernel {name}: an output must be row-major, got strides {t.stride()}")
                t = t.contiguous()
                keep.append(t)
            pointers.append(t.data_ptr())
            strides.append(t.stride(0))
        count = len(pointers)
        if self._function(name, dtype, mask)(n, torch.get_num_threads(), mask, (ctypes.c_void_p * count)(*pointers),
                                       (ctypes.c_int64 * count)(*strides)):
            raise MemoryError(f"fusionc: native kernel {name} could not allocate its scratch buffers")

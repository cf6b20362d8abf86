"""Compile `.fus` sources to Python modules, cache them on disk, and import them.

An entry's key is a hash of the compiler's files, the back end, the filename and the source: all
known before compiling, so a cache hit imports the cached module and nothing else, no parser,
analysis or code generator (a generated module needs only `fusionc.runtime` and torch). Only a
source that compiles ever makes an entry, so a hit needs no check of the source; its diagrams
are compiled again only if `CompiledOps.diagrams` is read.

A module it imports leaves the process with its source: pickling one of its modules (`torch.save`,
`copy.deepcopy`) stores the source and the class name, and unpickling imports the module from the
cache again (compiling it on a miss). Its ops are found by name in a new process too: each import
records the namespace of its ops (`fusionc_<hash>`) under `ops/` in the cache, and after
`import torch; import fusionc` a lookup of such a namespace on `torch.ops` (as `torch.export.load`
does) imports the module that registers it. `register_ops` imports them ahead, for what looks ops
up in C++ (`torch.jit.load`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import py_compile
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from fusionc.algebra.cache import atomic_write, cache_root
from fusionc.source import decode_source
from fusionc.version import __version__

if TYPE_CHECKING:
    from fusionc.ir.diagram import Diagram

_TRAILER = "# fusionc cache entry sha256: "


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of the compiler's own files, so that a changed compiler never reuses stale code."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256(__version__.encode())
    # fusionc.nn builds models from generated modules and takes no part in making them
    files = (p for p in root.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts
             and p.relative_to(root).parts[0] != "nn")
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    # the grammar by its text: a wheel ships it as fusionc/grammar/, a source checkout as ../grammar/,
    # and an installed copy and its checkout must agree
    shipped = root / "grammar" / "fusion.lark"
    digest.update((shipped if shipped.exists() else root.parent / "grammar" / "fusion.lark").read_bytes())
    return digest.hexdigest()


class CompiledOps:
    """The ops of one source: one attribute per diagram, each an `nn.Module` class, named by the
    module's `__all__`."""

    def __init__(self, module: ModuleType, path: Path, source: str, filename: str,
                 diagrams: tuple[Diagram, ...] | None = None) -> None:
        self.module = module
        self.path = path
        self._source, self._filename = source, filename  # private: no diagram name starts with '_'
        if diagrams is not None:
            self.diagrams = diagrams
        for name in module.__all__:
            setattr(self, name, getattr(module, name))

    @functools.cached_property
    def diagrams(self) -> tuple[Diagram, ...]:
        """The compiled diagrams; after a cache hit, compiled when first read."""
        from fusionc.pipeline import compile_source

        return compile_source(self._source, self._filename)

    def __repr__(self) -> str:
        return f"CompiledOps({', '.join(self.module.__all__)})"


def _read_entry(path: Path) -> bool:
    """Whether a cache entry is whole: its trailer holds the hash of the text before it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    body, _, digest = text.rpartition(_TRAILER)
    return bool(body) and digest.strip() == hashlib.sha256(body.encode()).hexdigest()


def _bytecode(path: Path) -> None:
    """Write the entry's bytecode, even where Python writes none (PYTHONDONTWRITEBYTECODE=1, as on
    this machine): compiling fusion_block's Triton module took 2 s at every import, its bytecode
    loads in 0.2 s. py_compile writes it atomically; Python ignores one older than its source."""
    try:
        py_compile.compile(str(path), doraise=True)
    except (OSError, py_compile.PyCompileError):
        pass  # a read-only cache: Python compiles the module in memory


def _module_name(key: str) -> str:
    return f"fusionc_generated_{key[:16]}"


def _import(path: Path, key: str) -> ModuleType:
    name = _module_name(key)
    if name in sys.modules:
        return sys.modules[name]
    if not Path(importlib.util.cache_from_source(str(path))).exists():
        _bytecode(path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _record_ops(module, path)
    return module


def _ops_index() -> Path:
    return cache_root() / "ops"


def _record_ops(module: ModuleType, path: Path) -> None:
    """Record which cache entry registers the module's op namespace (its name: the entry's file name)."""
    ops = getattr(module, "_ops", None)
    if ops is None:
        return
    record = _ops_index() / ops.namespace
    try:
        if not record.exists() or record.read_text() != path.name:
            atomic_write(record, path.name.encode())
    except OSError:
        pass  # a read-only cache: the ops are registered in this process all the same


def register_ops(*namespaces: str) -> list[str]:
    """Import the cached modules whose ops are in `namespaces` (every recorded one if none is
    given), registering their ops; the namespaces registered. An unknown namespace is a ValueError."""
    index = _ops_index()
    wanted = namespaces or sorted(p.name for p in index.glob("fusionc_*"))
    done = []
    for namespace in wanted:
        try:
            entry = cache_root() / "modules" / (index / namespace).read_text()
        except OSError:
            raise ValueError(f"no module for the op namespace '{namespace}' is recorded in the cache "
                             f"{cache_root()}; load the .fus source that defines it once (fusionc.load)") from None
        if not _read_entry(entry):
            raise ValueError(f"the cache entry {entry} of op namespace '{namespace}' is missing or damaged; "
                             f"load its .fus source again")
        # the entry's name holds the first 32 hex digits of its key, the module's name the first 16
        _import(entry, entry.stem.split("_", 1)[1])
        done.append(namespace)
    return done


def install_op_resolver() -> None:
    """Make each recorded op namespace on `torch.ops` import its module on first lookup."""
    import torch

    class _Namespace(torch._ops._OpNamespace):
        __module__ = torch._ops._OpNamespace.__module__  # its ops' names, as serialised, are torch's

        def __getattr__(self, op_name: str):
            if not self.__dict__.get("_fusionc_loaded", False) and not op_name.startswith("__"):
                self._fusionc_loaded = True
                try:
                    register_ops(self.name)
                except ValueError:
                    pass  # not (any more) in the cache: the lookup fails as torch's would
            return super().__getattr__(op_name)

    index = _ops_index()
    if not index.is_dir():
        return
    for record in index.glob("fusionc_*"):
        if record.name not in torch.ops.__dict__:
            setattr(torch.ops, record.name, _Namespace(record.name))


def _unpickle(origin: tuple[str, str, str, str], name: str):
    """A new, uninitialised module of class `name` from the source in `origin` (pickle then sets its
    state): the inverse of `FusionModule.__reduce_ex__`."""
    key, source, backend, filename = origin
    module = sys.modules.get(_module_name(key)) or loads(source, backend, filename).module
    cls = getattr(module, name)
    return cls.__new__(cls)


def _key(source: str, backend: str, filename: str) -> str:
    from fusionc import machine

    # the machine model the planner reads (`FUSIONC_MACHINE`) shapes the code as much as the compiler
    parts = [compiler_fingerprint(), machine.path().read_text(), backend, filename, source]
    if backend == "triton":  # kernels compile differently under another Triton
        import importlib.metadata

        parts.append(importlib.metadata.version("triton"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def loads(source: str, backend: str = "torch", filename: str = "<string>") -> CompiledOps:
    """Compile a `.fus` source (cached by source, options and compiler) and import it.

    >>> ops = loads("diagram lin { in x : 4x1o  out y : 2x1o  y = x mix uvw }")
    >>> ops.lin().weight_numel
    8
    """
    key = _key(source, backend, filename)
    path = cache_root() / "modules" / f"{backend}_{key[:32]}.py"
    diagrams = None
    if not _read_entry(path):  # a miss: an unknown back end or a bad source raises here
        from fusionc import pipeline
        from fusionc.backends import get_backend

        programs = pipeline.compile(source, filename, backend)
        body = get_backend(backend)(programs)
        atomic_write(path, (body + _TRAILER + hashlib.sha256(body.encode()).hexdigest() + "\n").encode())
        _bytecode(path)
        diagrams = programs.diagrams
    module = _import(path, key)
    module.__fusionc_origin__ = (key, source, backend, filename)  # what pickling a module of it stores
    return CompiledOps(module, path, source, filename, diagrams)


def load(path: str | Path, backend: str = "torch") -> CompiledOps:
    """Compile and import a `.fus` file."""
    path = Path(path)
    return loads(decode_source(path.read_bytes(), str(path)), backend, str(path))

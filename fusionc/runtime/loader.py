"""Compile `.fus` sources to Python modules, cache them on disk, and import them."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fusionc.algebra.cache import atomic_write, cache_root
from fusionc.backends import get_backend
from fusionc.frontend.parser import decode_source
from fusionc.ir.diagram import Diagram
from fusionc.pipeline import compile_source
from fusionc.version import __version__

_TRAILER = "# fusionc cache entry sha256: "


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of the compiler's own files, so that a changed compiler never reuses stale code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".lark") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class CompiledOps:
    """The ops of one source: one attribute per diagram, each an `nn.Module` class."""

    def __init__(self, module: ModuleType, diagrams: tuple[Diagram, ...], path: Path) -> None:
        self.module = module
        self.diagrams = diagrams
        self.path = path
        for d in diagrams:
            setattr(self, d.name, getattr(module, d.name))

    def __repr__(self) -> str:
        return f"CompiledOps({', '.join(d.name for d in self.diagrams)})"


def _read_entry(path: Path) -> bool:
    """Whether a cache entry is whole: its trailer holds the hash of the text before it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    body, _, digest = text.rpartition(_TRAILER)
    return bool(body) and digest.strip() == hashlib.sha256(body.encode()).hexdigest()


def _import(path: Path, key: str) -> ModuleType:
    name = f"fusionc_generated_{key[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def loads(source: str, backend: str = "torch", filename: str = "<string>") -> CompiledOps:
    """Compile a `.fus` source (cached by source, options and compiler) and import it.

    >>> ops = loads("diagram lin { in x : 4x1o  out y : 2x1o  y = x mix uvw }")
    >>> ops.lin().weight_numel
    8
    """
    emit = get_backend(backend)
    diagrams = compile_source(source, filename)
    parts = [compiler_fingerprint(), backend, filename, source]
    if backend == "triton":  # kernels compile differently under another Triton
        parts.append(importlib.metadata.version("triton"))
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    path = cache_root() / "modules" / f"{backend}_{key[:32]}.py"
    if not _read_entry(path):
        body = emit(diagrams, source, filename)
        atomic_write(path, (body + _TRAILER + hashlib.sha256(body.encode()).hexdigest() + "\n").encode())
    return CompiledOps(_import(path, key), diagrams, path)


def load(path: str | Path, backend: str = "torch") -> CompiledOps:
    """Compile and import a `.fus` file."""
    path = Path(path)
    return loads(decode_source(path.read_bytes(), str(path)), backend, str(path))

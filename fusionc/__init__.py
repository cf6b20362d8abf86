"""fusionc: a compiler for O(3)-equivariant fusion diagrams.

The core (parsing, IR, algebra, analyses) imports neither torch nor triton; `load` and `loads`
import the torch runtime when called, and the compiler only when the source is not in the cache.
"""

from __future__ import annotations

from fusionc.errors import FusionError
from fusionc.version import __version__

__all__ = ["FusionError", "__version__", "load", "loads"]


def load(path, backend: str = "torch"):
    """Compile a `.fus` file and return its ops: one `nn.Module` class per diagram."""
    from fusionc.loader import load as _load

    return _load(path, backend)


def loads(source: str, backend: str = "torch", filename: str = "<string>"):
    """Compile `.fus` text and return its ops: one `nn.Module` class per diagram."""
    from fusionc.loader import loads as _loads

    return _loads(source, backend, filename)

"""fusionc: a compiler for O(3)-equivariant fusion diagrams.

The core (parsing, IR, algebra, analyses) imports neither torch nor triton; `load` and `loads`
import the torch runtime when called, and the compiler only when the source is not in the cache.
"""

from __future__ import annotations

import sys

from fusionc.errors import FusionError
from fusionc.version import __version__

__all__ = ["FusionError", "__version__", "load", "loads", "register_ops"]

if sys.modules.get("torch") is not None:  # torch.ops finds the ops of modules in the cache (`fusionc.loader`)
    from fusionc.loader import install_op_resolver

    install_op_resolver()


def load(path, backend: str = "torch"):
    """Compile a `.fus` file and return its ops: one `nn.Module` class per diagram."""
    from fusionc.loader import load as _load

    return _load(path, backend)


def loads(source: str, backend: str = "torch", filename: str = "<string>"):
    """Compile `.fus` text and return its ops: one `nn.Module` class per diagram."""
    from fusionc.loader import loads as _loads

    return _loads(source, backend, filename)


def register_ops(*namespaces: str) -> list[str]:
    """Register the ops of cached modules (`fusionc_<hash>` namespaces; all, if none is given): for
    `torch.jit.load` of a scripted model, which looks its ops up in C++."""
    from fusionc.loader import register_ops as _register_ops

    return _register_ops(*namespaces)

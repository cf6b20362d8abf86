"""Back ends by name; an unknown or unavailable one is a clear error, never a silent fallback."""

from __future__ import annotations

from typing import Callable

from fusionc.backends import torch_backend, triton_backend
from fusionc.ir.diagram import Diagram

Emitter = Callable[[tuple[Diagram, ...], str, str], str]

#: Code generation needs neither torch nor triton; running the triton modules needs triton.
BACKENDS: dict[str, Emitter] = {"torch": torch_backend.emit, "triton": triton_backend.emit}


def get_backend(name: str) -> Emitter:
    """The code emitter of back end `name`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available back ends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]

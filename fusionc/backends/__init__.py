"""Back ends by name; an unknown or unavailable one is a clear error, never a silent fallback."""

from __future__ import annotations

from typing import Callable

from fusionc.analysis.program import ProgramSet
from fusionc.backends import torch_backend, triton_backend

Renderer = Callable[[ProgramSet], str]

#: Code generation needs neither torch nor triton; running the triton modules needs triton.
BACKENDS: dict[str, Renderer] = {"torch": torch_backend.render, "triton": triton_backend.render}


def get_backend(name: str) -> Renderer:
    """The renderer of back end `name`: a `ProgramSet` (from `fusionc.pipeline.compile` for that
    back end) as the text of a Python module."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available back ends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]

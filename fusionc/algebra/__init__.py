"""Exact group-theory tables: real-basis CG tensors and the real-basis rotation generators.

The CG functions are imported on first use: the runtime imports `fusionc.algebra.cache` from
this package, and a generated module must load without sympy, which `fusionc.algebra.cg` needs.
"""

import importlib

__all__ = ["exact_wigner_3j", "nonzeros", "wigner_3j"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("fusionc.algebra.cg"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Exact group-theory tables: real-basis CG tensors and the real-basis rotation generators."""

from fusionc.algebra.cg import exact_wigner_3j, nonzeros, wigner_3j

__all__ = ["exact_wigner_3j", "nonzeros", "wigner_3j"]

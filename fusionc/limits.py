"""The sizes the checker accepts, so that a diagram nobody could run fails at once, at its place in
the text, instead of hanging the compiler or exhausting memory.

Each limit is far above what equivariant models use (MACE and NequIP stop at l = 3 to 6; the
standard library's largest term has 64 fusion trees) and can be raised through the environment
variable named in its error.

>>> limit("l")
8
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """One bound: what it counts, its default, and the environment variable that raises it."""

    what: str
    default: int
    variable: str


LIMITS = {
    # of declared irreps and of fusion trees' inner labels: each CG table is computed exactly with
    # sympy (0.2 s at l = 8, 0.5 s at 10), and a fusion of four operands up to l = 11 needed 307
    # of them (140 s); Triton kernels unroll over their non-zeros, which grow as l³
    "l": Limit("the degree l of an irrep", 8, "FUSIONC_MAX_L"),
    "mul": Limit("a multiplicity", 100_000, "FUSIONC_MAX_MUL"),
    # Generated code grows with the paths and fusion trees (each one or a few statements per
    # program, times the derivative programs): this bounds the size of what a diagram generates.
    "paths": Limit("the number of paths and fusion trees of a diagram", 10_000, "FUSIONC_MAX_PATHS"),
    # float32 parameters: 400 MB
    "weights": Limit("the number of learnable weights of a diagram", 100_000_000, "FUSIONC_MAX_WEIGHTS"),
}


def limit(name: str) -> int:
    """The bound in force: the environment's value, else the default."""
    spec = LIMITS[name]
    text = os.environ.get(spec.variable, "")
    return int(text) if text.strip().isdigit() else spec.default


def over(name: str, value: int | str, what: str | None = None) -> str | None:
    """Why `value` is over the limit `name` (a message naming the limit and how to raise it), or None;
    `what` says what was counted, where it is not the limit's own quantity."""
    bound = limit(name)
    number = value if isinstance(value, int) else (int(value) if len(value) <= 18 else None)
    if number is not None and number <= bound:
        return None
    spec = LIMITS[name]
    shown = f"{number:,}" if number is not None else f"a number of {len(value)} digits"
    return f"{what or spec.what} is {shown}, over fusionc's limit of {bound:,} (set {spec.variable} to raise it)"

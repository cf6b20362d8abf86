"""Irreducible representations of O(3) and SO(3), and direct sums of them.

>>> Irreps.parse("32x(0e + 1o) + 2e")
Irreps('32x0e+32x1o+1x2e')
>>> Irreps.parse("32x(0e + 1o)").dim
128
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from fusionc.errors import FusionError, Span
from fusionc.limits import over

#: Parity of an SO(3) irrep: the group has no inversion, so parity is absent.
NO_PARITY = 0
_PARITY_LETTER = {1: "e", -1: "o", NO_PARITY: ""}


@dataclass(frozen=True, order=True)
class Irrep:
    """Degree l and parity p (+1 even, -1 odd, 0 for SO(3), which has no parity)."""

    l: int
    p: int

    def __post_init__(self) -> None:
        if self.l < 0 or self.p not in (-1, 0, 1):
            raise ValueError(f"invalid irrep l={self.l}, p={self.p}")

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    def couples(self, other: Irrep, out: Irrep) -> bool:
        """Whether self ⊗ other contains `out` (triangle rule and parity)."""
        return abs(self.l - other.l) <= out.l <= self.l + other.l and self.p * other.p == out.p

    def __mul__(self, other: Irrep) -> list[Irrep]:
        p = self.p * other.p
        return [Irrep(l, p) for l in range(abs(self.l - other.l), self.l + other.l + 1)]

    def __str__(self) -> str:
        return f"{self.l}{_PARITY_LETTER[self.p]}"


@dataclass(frozen=True)
class MulIrrep:
    """`mul` copies of one irrep, stored as a (mul, 2l+1) block in the `mul_ir` layout."""

    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        return self.mul * self.ir.dim

    def __str__(self) -> str:
        return f"{self.mul}x{self.ir}"


_ATOM = re.compile(r"\s*(?:([0-9]+)\s*x\s*)?(?:([0-9]+)([eo]?)|\()")


@dataclass(frozen=True)
class Irreps:
    """A direct sum of irreps blocks, in order; `Irreps.parse` reads e3nn's notation."""

    blocks: tuple[MulIrrep, ...]

    @staticmethod
    def parse(text: str, *, so3: bool = False, span: Span | None = None, check_parity: bool = True) -> Irreps:
        """Parse `32x0e + 1o`, with grouping `32x(0e + 1o)`; SO(3) irreps carry no parity."""
        return _IrrepsParser(text, so3, span, check_parity).parse()

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.blocks)

    @property
    def num_irreps(self) -> int:
        return sum(b.mul for b in self.blocks)

    def slices(self) -> list[tuple[int, int]]:
        """Start and stop offsets of each block in a `mul_ir` row."""
        out, start = [], 0
        for b in self.blocks:
            out.append((start, start + b.dim))
            start += b.dim
        return out

    def __iter__(self) -> Iterator[MulIrrep]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> MulIrrep:
        return self.blocks[i]

    def __str__(self) -> str:
        return "+".join(str(b) for b in self.blocks)

    def __repr__(self) -> str:
        return f"Irreps('{self}')"


class _IrrepsParser:
    def __init__(self, text: str, so3: bool, span: Span | None, check_parity: bool) -> None:
        self.text, self.so3, self.span, self.check_parity, self.pos = text, so3, span, check_parity, 0

    def error(self, message: str, at: int) -> FusionError:
        return FusionError(message, self.span.advanced(self.text, at) if self.span else None)

    def irrep(self, l_text: str, parity: str, at: int) -> Irrep:
        if (problem := over("l", l_text)) is not None:
            raise self.error(problem, at)
        if not self.check_parity:
            return Irrep(int(l_text), NO_PARITY)
        if self.so3 and parity:
            raise self.error(f"SO(3) irreps carry no parity: write '{l_text}', not "
                             f"'{l_text}{parity}' (or declare 'group O3')", at)
        if not self.so3 and not parity:
            raise self.error(f"O(3) irrep '{l_text}' needs a parity: '{l_text}e' (even) or "
                             f"'{l_text}o' (odd); declare 'group SO3' to drop parity", at)
        return Irrep(int(l_text), {v: k for k, v in _PARITY_LETTER.items()}[parity])

    def atom(self, inner: bool) -> list[MulIrrep]:
        m = _ATOM.match(self.text, self.pos)
        if not m:
            raise self.error("expected an irrep such as '0e', '32x1o' or '32x(0e + 1o)'", self.pos)
        start = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
        if m.group(1) and (problem := over("mul", m.group(1))) is not None:
            raise self.error(problem, start)
        mul = int(m.group(1)) if m.group(1) else 1
        if m.group(1) and mul == 0:
            raise self.error("a multiplicity must be at least 1", start)
        self.pos = m.end()
        if m.group(2) is not None:
            return [MulIrrep(mul, self.irrep(m.group(2), m.group(3), m.start(2)))]
        if inner:
            raise self.error("groups cannot be nested", start)
        blocks = self.sum(inner=True)
        close = re.compile(r"\s*\)").match(self.text, self.pos)
        if not close:
            raise self.error("expected ')' to close the group", self.pos)
        self.pos = close.end()
        if (problem := over("mul", mul * max(b.mul for b in blocks))) is not None:
            raise self.error(problem, start)
        return [MulIrrep(mul * b.mul, b.ir) for b in blocks]

    def sum(self, inner: bool) -> list[MulIrrep]:
        blocks = self.atom(inner)
        plus = re.compile(r"\s*\+")
        while (m := plus.match(self.text, self.pos)):
            self.pos = m.end()
            blocks += self.atom(inner)
        return blocks

    def parse(self) -> Irreps:
        blocks = self.sum(inner=False)
        rest = self.text[self.pos:]
        if rest.strip():
            raise self.error(f"unexpected '{rest.strip()[0]}' in irreps", self.pos + len(rest) - len(rest.lstrip()))
        return Irreps(tuple(blocks))

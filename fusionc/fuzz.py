"""A grammar-aware fuzzer: random and mutated `.fus` programs against the CLI and `fusionc.loads`.

    python -m fusionc.fuzz --minutes 10 [--seed N] [--target cli|loads|both] [--out DIR]

Programs come from two generators built on the grammar's productions (`grammar/fusion.lark`):
`strict_program` writes programs that are meant to type-check (every input and let used, channel
multiplicities that fit each mix mode, explicit `-> IRREPS` targets only where the term reaches
them, symmetric fusions only onto irreps the symmetric power contains), `loose_program` walks the
grammar with random names, modes, options and irreps. `mutate` then deletes, duplicates, swaps and
replaces tokens, inserts keywords, reserved names, unicode, form feeds, invalid UTF-8, huge
numbers and deep sums. Sizes stay small (multiplicities 1-3, l <= 3) so a program compiles and
runs in well under a second.

Oracles (each case runs in a worker process with a time limit; a hang or a signal is a finding):
- CLI (`fusionc check [--explain|--numeric|--dump-ir]`, `compile -o`, `show`), in process or,
  for a fraction, as a subprocess: exit status 0 or 2 (1, a failed `--numeric`, is a finding too:
  generated programs are equivariant), never a traceback or a signal; on exit 2 the first line of stderr is `FILE:LINE:COL: error: ` or `fusionc: error: `,
  LINE:COL lies in the file, the next lines show that line and a caret under COL; generated code
  parses as Python.
- library: `fusionc.loads` raises `FusionError` located as above, or returns ops whose modules,
  called on random float64 rows (0 rows sometimes, batch shapes, shared weights), give finite
  outputs of the right shape equal to a dense einsum reference built from the IR (forward,
  gradients and sometimes second derivatives, to 1e-8), the same numbers with and without native
  kernels, equivariant outputs, and a ValueError naming the input for a wrong shape or dtype.

Each distinct finding (by target, kind and key) is minimised and written to the output directory
as `NNN-target-kind.fus` plus a `.txt` saying what went wrong and how to reproduce it.
Runs are deterministic per seed (the number of programs depends on the time given).

>>> from fusionc.pipeline import compile_source
>>> source = strict_program(RandomChooser(random.Random(3)))
>>> len(compile_source(source)) >= 1
True
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import io
import itertools
import json
import keyword
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from fusionc.analysis.build import DIAGRAM_RESERVED
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep

T = TypeVar("T")

#: Words of the language: they can never be names.
GRAMMAR_KEYWORDS = ("group", "convention", "diagram", "in", "out", "let", "fuse", "mix", "by", "per", "weights",
                    "index")
MODES = ("uvw", "uvu", "uuu", "uvuv", "none")
#: An equivariance error above this is a wrong result, not float64 rounding.
ROUNDING = 1e-6
#: Names the generated code uses itself, which the language reserves (README, "The language").
RESERVED = ("weight", "n", "self", "torch", "rt", "triton", "tl")
#: Legal names that generated Python or C might still trip on: locals, builtins, module and
#: class attributes, the prefixes of generated program names.
TRICKY_NAMES = ("batch", "outputs", "inputs", "constants", "grads", "grad", "ctx", "op", "ops", "module", "dtype",
                "device", "forward", "backward", "rows", "math", "np", "F", "nn", "len", "range", "sum", "max",
                "min", "abs", "print", "super", "int", "float", "list", "dict", "tuple", "object", "type", "str",
                "t_0", "y_0", "p0", "p1", "c0", "l0", "a0", "A0", "z", "d_x", "d_y", "d_weight", "cg", "cg_1_1",
                "recouple", "kernels", "cpu", "native", "register", "annotations", "Tensor", "diagrams", "path",
                "irreps_in", "irreps_out", "weight_numel", "input_weight_numel", "cg_tables", "training",
                "parameters", "buffers", "to", "double", "cuda", "eval", "apply", "state_dict", "real", "restrict",
                "int64_t", "threads", "memset", "i", "j", "k", "u", "v", "w", "N", "weights_", "index_", "mix_",
                "FusionModule", "OpNamespace", "NativeKernels", "namespace", "library", "e", "o", "x0e", "e3nn", "O3", "SO3")
PLAIN_NAMES = ("x", "y", "h", "A", "B", "C", "D", "sh", "feat", "x1", "x2", "x3", "node", "edge", "Y", "m", "q", "r",
               "s", "t", "out1", "msg", "attr", "V", "H")
DIAGRAM_NAMES = ("d", "tp", "conv", "lin", "block", "prod", "fc_tp", "mace", "a", "b", "layer")
#: Suffixes and prefixes of names the generated code derives from a diagram or value name.
DERIVED = ("{}_d", "{}_d_d2", "{}_d2_x", "{}_cpu", "{}_s0", "{}_0", "{}_1", "d_{}", "{}_d_d")
PYTHON_WORDS = tuple(keyword.kwlist) + tuple(keyword.softkwlist)
LMAX_IN = 3      # largest l of an input block
LMAX_OUT = 4     # largest l of a value block the strict generator declares
TIME_LIMIT_S = 20.0
NATIVE_TIME_LIMIT_S = 120.0
#: Sizes above which the library oracle only compiles (constructing modules would allocate too much).
MAX_DIM, MAX_WEIGHTS, MAX_PATHS = 4000, 200_000, 3000
#: Relative difference from the dense reference, which sums in another order: random fusions of
#: fusions (polynomials of degree 20 and more) differ from it by up to about 1e-10 through float64
#: rounding alone; a wrong result is off by far more (gcc's miscompiled gradient: 5e-2 and up).
TOLERANCE = 1e-8


def _is_reserved(name: str) -> bool:
    return (name in PYTHON_WORDS or name in RESERVED or name in GRAMMAR_KEYWORDS or name.startswith("_")
            or "__" in name or bool(re.fullmatch(r"cg_\d+_\d+_\d+|recouple_\w*", name)))


# --------------------------------------------------------------------------- random choices


class Chooser:
    """The random decisions of the generators, so that random.Random and Hypothesis can drive them."""

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def chance(self, p: float) -> bool:
        """True with probability p (Hypothesis shrinks it towards False)."""
        return self.integer(0, 999) >= round(1000 * (1 - p))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def sample(self, options: Sequence[T], k: int) -> list[T]:
        pool, out = list(options), []
        for _ in range(min(k, len(pool))):
            out.append(pool.pop(self.integer(0, len(pool) - 1)))
        return out

    def shuffled(self, items: Sequence[T]) -> list[T]:
        return self.sample(items, len(items))


class RandomChooser(Chooser):
    """Decisions from a seeded `random.Random`: the same seed gives the same program."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


class HypothesisChooser(Chooser):
    """Decisions drawn from Hypothesis's `st.data()`, so that failing programs shrink."""

    def __init__(self, data) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


# --------------------------------------------------------------------------- text of irreps and terms


def irreps_text(c: Chooser, blocks: Sequence[MulIrrep]) -> str:
    """An irreps string for `blocks`, written one of the ways the language allows: `1x0e` or `0e`,
    spaces or none around `+` and `x`, and grouping `2x(0e + 1o)` (or `2x(2x0e)`) where it fits."""
    plus = c.choice((" + ", "+", " +", "  +  "))
    times = "x" if c.chance(0.9) else " x "

    def atom(b: MulIrrep) -> str:
        if b.mul == 1 and c.chance(0.6):
            return str(b.ir)
        if b.mul % 2 == 0 and b.mul > 2 and c.chance(0.1):
            return f"2{times}({b.mul // 2}x{str(b.ir)})"
        return f"{b.mul}{times}{str(b.ir)}"

    parts, i = [], 0
    blocks = list(blocks)
    while i < len(blocks):
        run = 1
        while i + run < len(blocks) and blocks[i + run].mul == blocks[i].mul:
            run += 1
        if run > 1 and blocks[i].mul > 1 and c.chance(0.5):
            take = c.integer(2, run)
            inner = plus.join(str(b.ir) for b in blocks[i:i + take])
            parts.append(f"{blocks[i].mul}{times}({inner})")
            i += take
        else:
            parts.append(atom(blocks[i]))
            i += 1
    return plus.join(parts)


@dataclass
class _Term:
    """One term of a strict program and what it can produce: irrep -> required multiplicity
    (None: any), and irreps it reaches with incompatible channel counts."""

    kind: str  # linear | fuse | tree
    operands: tuple[str, ...]
    mode: str
    write_mix: bool = True
    by: str | None = None
    per: str | None = None
    lmax: int | None = None
    offers: dict[Irrep, int | None] = field(default_factory=dict)
    conflicts: set[Irrep] = field(default_factory=set)
    target: list[MulIrrep] | None = None
    wants_target: bool = False

    def compatible(self, block: MulIrrep) -> bool:
        return block.ir in self.offers and self.offers[block.ir] in (None, block.mul)

    def reaches(self, ir: Irrep) -> bool:
        return ir in self.offers or ir in self.conflicts

    def offer(self, ir: Irrep, mul: int | None) -> None:
        if ir in self.conflicts:
            return
        if ir in self.offers and self.offers[ir] != mul:
            del self.offers[ir]
            self.conflicts.add(ir)
        else:
            self.offers[ir] = mul


def _mix_text(c: Chooser, mode: str, write: bool, by: str | None, per: str | None) -> str:
    if mode == "none" and not write and by is None and per is None:
        return ""
    text = f" mix {mode}"
    if by:
        text += f" by {by}"
    if per:
        text += f" per {per}"
    return text


def _term_text(c: Chooser, t: _Term) -> str:
    mix = _mix_text(c, t.mode, t.write_mix, t.by, t.per)
    if t.kind == "linear":
        return t.operands[0] + mix
    comma = c.choice((", ", ",", " , "))
    options = f"; lmax={t.lmax}" if t.lmax is not None else ""
    if options and c.chance(0.2):
        options = f" ;lmax = {t.lmax} "
    target = f" -> {irreps_text(c, t.target)}" if t.target else ""
    return f"fuse({comma.join(t.operands)}{options}){target}{mix}"


# --------------------------------------------------------------------------- the strict generator


@functools.lru_cache(maxsize=4096)
def _tree_outputs(names: tuple[str, ...], irreps: tuple[Irreps, ...], mul: int, so3: bool,
                  lmax: int | None) -> tuple[Irrep, ...]:
    """Irreps that the (symmetrised) fusion trees of these operands reach."""
    from fusionc.analysis.trees import canonical_order, symmetric_trees

    order = canonical_order(names)
    by_name = dict(zip(names, irreps))
    parities = (0,) if so3 else (1, -1)
    candidates = Irreps(tuple(MulIrrep(mul, Irrep(l, p)) for l in range(LMAX_OUT + 1) for p in parities))
    trees = symmetric_trees(order, tuple(by_name[n] for n in order), candidates, lmax)
    return tuple(sorted({candidates[t.out_block].ir for t in trees}))


class _DiagramWriter:
    """One strict diagram: inputs, lets and outputs whose terms type-check by construction."""

    def __init__(self, c: Chooser, name: str, so3: bool, taken: set[str]) -> None:
        self.c, self.name, self.so3 = c, name, so3
        self.names: set[str] = set(taken) | {name}
        self.env: dict[str, Irreps] = {}
        self.unused: list[str] = []
        self.in_lines: list[str] = []
        self.out_lines: list[str] = []
        self.body: list[str] = []
        self.weights: str | None = None
        self.weights_used = False
        self.weights_claimed = False  # by a term not yet kept
        self.index: tuple[str, int] | None = None
        self.index_used = False
        self.uniform = c.integer(1, 3) if c.chance(0.6) else None

    def fresh(self, pool: Sequence[str] = PLAIN_NAMES) -> str:
        c = self.c
        for _ in range(50):
            roll = c.integer(0, 99)
            if roll < 12:
                name = c.choice(TRICKY_NAMES)
            elif roll < 20 and self.names:
                name = c.choice(DERIVED).format(c.choice(sorted(self.names)))
            else:
                name = c.choice(pool)
                if c.chance(0.2):
                    name += str(c.integer(0, 9))
            if name not in self.names and not _is_reserved(name):
                self.names.add(name)
                return name
        name = f"v{len(self.names)}"
        self.names.add(name)
        return name

    def random_irreps(self, max_blocks: int = 3) -> Irreps:
        c = self.c
        parities = (0,) if self.so3 else (1, -1)
        irs: set[Irrep] = set()
        for _ in range(c.integer(1, max_blocks)):
            l = c.choice((0, 0, 1, 1, 1, 2, 2, 3)) if LMAX_IN >= 3 else c.integer(0, LMAX_IN)
            irs.add(Irrep(l, c.choice(parities)))
        mul = self.uniform
        blocks = [MulIrrep(mul or c.choice((1, 1, 2, 3)), ir) for ir in sorted(irs)]
        if c.chance(0.15):
            blocks = c.shuffled(blocks)
        return Irreps(tuple(blocks))

    def declare_inputs(self) -> None:
        for _ in range(self.c.choice((1, 1, 2, 2, 2, 3))):
            name = self.fresh()
            irreps = self.random_irreps()
            self.env[name] = irreps
            self.unused.append(name)
            self.in_lines.append(f"in {name} : {irreps_text(self.c, irreps)}")
        if self.c.chance(0.3):
            self.weights = self.fresh(("w", "W", "radial", "weights_in", "edge_w"))
        if self.c.chance(0.3):
            self.index = (self.fresh(("z", "species", "Z", "kind")), self.c.integer(1, 3))

    def pick_operand(self, exclude: Sequence[str] = ()) -> str | None:
        names = [n for n in self.env if n not in exclude]
        if not names:
            return None
        unused = [n for n in self.unused if n in names]
        return self.c.choice(unused) if unused and self.c.chance(0.75) else self.c.choice(names)

    def weighting(self, t: _Term) -> None:
        """`by` the weights input or `per` the index, where the mode has weights."""
        c = self.c
        if t.mode == "none":
            t.write_mix = c.chance(0.5)
            return
        if self.weights and not self.weights_claimed and c.chance(0.5):
            t.by, self.weights_claimed = self.weights, True
        elif self.index and c.chance(0.4):
            t.per = self.index[0]

    def linear_term(self) -> _Term | None:
        a = self.pick_operand()
        if a is None:
            return None
        t = _Term("linear", (a,), self.c.choice(("uvw", "uvw", "uuu", "none")))
        for b in self.env[a]:
            t.offer(b.ir, None if t.mode == "uvw" else b.mul)
        self.weighting(t)
        return t

    def fuse_term(self) -> _Term | None:
        a = self.pick_operand()
        b = self.pick_operand(exclude=(a,)) if a else None
        if a is None or b is None:
            return None
        if self.c.chance(0.5):
            a, b = b, a
        t = _Term("fuse", (a, b), self.c.choice(MODES))
        for x in self.env[a]:
            for y in self.env[b]:
                mul = {"uvw": None, "uvu": x.mul, "uvuv": x.mul * y.mul}.get(t.mode, x.mul)
                for ir in x.ir * y.ir:
                    if ir.l > LMAX_OUT:
                        continue
                    if t.mode in ("uuu", "none") and x.mul != y.mul:
                        t.offers.pop(ir, None)
                        t.conflicts.add(ir)
                    else:
                        t.offer(ir, mul)
        self.weighting(t)
        return t

    def tree_term(self) -> _Term | None:
        c = self.c
        by_mul: dict[int, list[str]] = {}
        for name, irreps in self.env.items():
            if len({b.mul for b in irreps}) == 1:
                by_mul.setdefault(irreps[0].mul, []).append(name)
        if not by_mul:
            return None
        group = by_mul[c.choice(sorted(by_mul))]
        n = c.choice((2, 2, 3, 3, 4))
        if n == 4:
            group = [g for g in group if all(b.ir.l <= 2 for b in self.env[g]) and len(self.env[g]) <= 2]
        if n == 3:
            group = [g for g in group if sum(b.ir.l for b in self.env[g]) <= 4]
        if not group:
            return None
        unused = [g for g in group if g in self.unused]
        first = c.choice(unused) if unused and c.chance(0.75) else c.choice(group)
        if n == 2:
            operands = [first, first]
        else:
            operands = [first] + [c.choice(group) for _ in range(n - 1)]
            operands = c.shuffled(operands)
        max_l = max(b.ir.l for name in operands for b in self.env[name])
        lmax = c.integer(0, 2 * max_l) if n >= 3 and c.chance(0.3) else None
        mul = self.env[first][0].mul
        reach = _tree_outputs(tuple(operands), tuple(self.env[o] for o in operands), mul, self.so3, lmax)
        if not reach:
            return None
        t = _Term("tree", tuple(operands), c.choice(("uuu", "none")), lmax=lmax)
        for ir in reach:
            t.offer(ir, mul)
        self.weighting(t)
        return t

    def some_term(self) -> _Term | None:
        kind = self.c.choice(("linear", "fuse", "fuse", "tree", "tree"))
        return {"linear": self.linear_term, "fuse": self.fuse_term, "tree": self.tree_term}[kind]()

    def choose_value(self, terms: list[_Term]) -> list[MulIrrep] | None:
        """The irreps of an output: blocks that the no-target terms allow and some term produces."""
        c = self.c
        free = [t for t in terms if not t.wants_target]
        candidates: dict[Irrep, int] = {}
        for ir in sorted({ir for t in terms for ir in t.offers}):
            if any(ir in t.conflicts for t in free):
                continue
            fixed = {t.offers[ir] for t in free if ir in t.offers and t.offers[ir] is not None}
            if len(fixed) > 1:
                continue
            if fixed:
                candidates[ir] = fixed.pop()
                continue
            wanted = [t.offers[ir] for t in terms if ir in t.offers and t.offers[ir] is not None]
            candidates[ir] = c.choice(wanted) if wanted and c.chance(0.8) else (self.uniform or c.integer(1, 3))
        if not candidates:
            return None
        chosen = c.sample(sorted(candidates), c.integer(1, min(4, len(candidates))))
        blocks = [MulIrrep(candidates[ir], ir) for ir in sorted(chosen)]
        return c.shuffled(blocks) if c.chance(0.1) else blocks

    def fit(self, terms: list[_Term], dest: list[MulIrrep], fixed: bool) -> tuple[list[_Term], list[MulIrrep]] | None:
        """Keep the terms that fit `dest`, give target terms their targets, drop blocks nobody makes."""
        c = self.c
        kept = []
        for t in terms:
            if t.wants_target:
                if t.target is None:
                    compatible = [b for b in dest if t.compatible(b)]
                    if not compatible:
                        continue
                    take = c.sample(compatible, c.integer(1, len(compatible)))
                    t.target = [b for b in dest if b in take]
                    if c.chance(0.15):
                        t.target = c.shuffled(t.target)
            elif any(t.reaches(b.ir) and not t.compatible(b) for b in dest) or not any(map(t.compatible, dest)):
                continue  # a term must fit every block it reaches, and reach one
            kept.append(t)
        if not kept:
            return None
        made = [b for b in dest if any((b in t.target) if t.target else t.compatible(b) for t in kept)]
        if fixed and made != dest:
            return None
        if not made:
            return None
        return kept, made

    def value(self, is_let: bool) -> bool:
        c = self.c
        self.weights_claimed = self.weights_used
        count = c.choice((1, 1, 1, 2, 2, 3))
        terms = [t for t in (self.some_term() for _ in range(count)) if t is not None]
        if not terms:
            return False
        for t in terms:
            t.wants_target = t.kind != "linear" and c.chance(0.3)
        if is_let:
            primary = terms[0]
            if primary.kind == "linear":
                for t in terms[1:]:
                    t.wants_target = False
                dest = list(self.env[primary.operands[0]])
            else:
                primary.wants_target = True
                if not primary.offers:
                    return False
                irs = c.sample(sorted(i for i, m in primary.offers.items()), c.integer(1, min(3, len(primary.offers))))
                if not irs:
                    return False
                dest = [MulIrrep(primary.offers[ir] or self.uniform or c.integer(1, 3), ir) for ir in sorted(irs)]
                primary.target = dest
            fitted = self.fit(terms, dest, fixed=True)
            if fitted is None or fitted[0][0] is not primary:
                return False
            terms, dest = fitted
        else:
            dest = self.choose_value(terms)
            if dest is None:
                return False
            fitted = self.fit(terms, dest, fixed=False)
            if fitted is None:
                return False
            terms, dest = fitted
            if not any(t.wants_target for t in terms) and c.chance(0.05):
                dest = dest + [c.choice(dest)]
        for t in terms:
            self.weights_used |= t.by is not None
            self.index_used |= t.per is not None
            for name in t.operands:
                if name in self.unused:
                    self.unused.remove(name)
        name = self.fresh(("t", "u", "inner", "tmp", "l1", "B", "e") if is_let else ("y", "out", "z_out", "m", "o"))
        text = " + ".join(_term_text(c, t) for t in terms)
        if is_let:
            self.body.append(f"let {name} = {text}")
            self.env[name] = Irreps(tuple(dest))
            self.unused.append(name)
        else:
            self.out_lines.append(f"out {name} : {irreps_text(c, dest)}")
            self.body.append(f"{name} = {text}")
        return True

    def write(self) -> list[str]:
        c = self.c
        self.declare_inputs()
        for _ in range(c.choice((0, 0, 1, 1, 2))):
            for _attempt in range(4):
                if self.value(is_let=True):
                    break
        outputs = 0
        for _ in range(c.choice((1, 1, 1, 2, 2, 3))):
            for _attempt in range(6):
                if self.value(is_let=False):
                    outputs += 1
                    break
        for name in list(self.unused):  # every input and let is read: pass the rest to outputs
            out = self.fresh(("o", "rest", "y"))
            self.out_lines.append(f"out {out} : {irreps_text(c, list(self.env[name]))}")
            self.body.append(f"{out} = {name}" + c.choice(("", " mix uvw", " mix none", " mix uuu")))
            self.unused.remove(name)
        if self.weights and self.weights_used:
            self.in_lines.append(f"in {self.weights} : weights")
        if self.index and self.index_used:
            self.in_lines.append(f"in {self.index[0]} : index({self.index[1]})")
        if c.chance(0.2):
            self.in_lines = c.shuffled(self.in_lines)
        lines = self.in_lines + self.out_lines + self.body
        if c.chance(0.15):  # declarations may stand anywhere: the checker reads them first
            decls = self.in_lines + self.out_lines
            lines = list(self.body)
            for d in decls:
                lines.insert(c.integer(0, len(lines)), d)
        return lines


def _layout(c: Chooser, head: str, lines: list[str]) -> str:
    """`head {` + statements + `}`: on separate lines (indented, with comments) or on one line."""
    if c.chance(0.15):
        return head + " { " + "  ".join(lines) + " }"
    indent = c.choice(("    ", "  ", "\t", ""))
    out = [head + " {" + (f"  # {c.choice(COMMENTS)}" if c.chance(0.1) else "")]
    for line in lines:
        if c.chance(0.08):
            out.append("")
        if c.chance(0.06):
            out.append(f"{indent}# {c.choice(COMMENTS)}")
        out.append(indent + line + (f"    # {c.choice(COMMENTS)}" if c.chance(0.08) else ""))
    out.append("}")
    return "\n".join(out)


COMMENTS = ("a comment", "fuse(x, y) mix uvw", "é ⊗ ∑ — unicode", "in x : 0e", "", "#", "TODO(#17)", "}")


def _headers(c: Chooser, so3: bool) -> list[str]:
    headers = []
    if so3 or c.chance(0.3):
        headers.append("group " + ("SO3" if so3 else "O3"))
    if c.chance(0.3):
        headers.append("convention e3nn")
    return c.shuffled(headers)


def strict_program(c: Chooser) -> str:
    """A random program meant to type-check: 1-3 diagrams of small irreps (l <= 3, multiplicities
    1-3) with inputs (irreps, weights, index), lets, outputs, sums of linear terms, products in
    every mix mode and (symmetric) fusions of 2-4 operands, `; lmax=`, `-> IRREPS`, `by` and `per`."""
    so3 = c.chance(0.2)
    parts = _headers(c, so3)
    taken: set[str] = set()
    for _ in range(c.choice((1, 1, 1, 2, 2, 3))):
        name = _diagram_name(c, taken)
        taken.add(name)
        writer = _DiagramWriter(c, name, so3, set())
        parts.append(_layout(c, f"diagram {name}", writer.write()))
    if c.chance(0.1):
        parts.append(f"# {c.choice(COMMENTS)}")
    return "\n".join(parts) + ("\n" if c.chance(0.9) else "")


def _diagram_name(c: Chooser, taken: set[str]) -> str:
    for _ in range(30):
        roll = c.integer(0, 99)
        if roll < 20 and taken:
            name = c.choice(DERIVED).format(c.choice(sorted(taken)))
        elif roll < 30:
            name = c.choice(TRICKY_NAMES)
        else:
            name = c.choice(DIAGRAM_NAMES) + (str(c.integer(0, 9)) if c.chance(0.2) else "")
        if name not in taken and not _is_reserved(name) and name not in DIAGRAM_RESERVED:
            return name
    return f"diagram{len(taken)}"


# --------------------------------------------------------------------------- the loose generator


def _loose_irreps(c: Chooser, so3: bool) -> str:
    parities = ("",) if so3 and c.chance(0.9) else ("e", "o") if c.chance(0.95) else ("", "e", "o")
    blocks = []
    for _ in range(c.integer(1, 4)):
        ir = f"{c.integer(0, 4)}{c.choice(parities)}"
        mul = c.choice((None, 1, 2, 3, 4, 0))
        blocks.append(ir if mul is None else f"{mul}x{ir}")
    if c.chance(0.2):
        return f"{c.integer(1, 3)}x({' + '.join(blocks)})"
    return c.choice((" + ", "+")).join(blocks)


def _loose_operand(c: Chooser, names: Sequence[str], spaced: bool) -> str:
    """A name, in a diagram with index spaces often read by an index (`x[i]`, a gather)."""
    name = c.choice(names)
    return f"{name}[{c.choice(names)}]" if spaced and c.chance(0.4) else name


def _loose_term(c: Chooser, names: Sequence[str], so3: bool, spaced: bool = False) -> str:
    mix = ""
    if c.chance(0.7):
        mode = c.choice(MODES + ("uvv", "abc")) if c.chance(0.95) else c.choice(names)
        mix = f" mix {mode}"
        if c.chance(0.25):
            mix += f" by {c.choice(names)}"
        if c.chance(0.25):
            mix += f" per {c.choice(names)}"
    if c.chance(0.3):
        return _loose_operand(c, names, spaced) + mix
    operands = ", ".join(_loose_operand(c, names, spaced) for _ in range(c.choice((1, 2, 2, 2, 3, 4))))
    options = ""
    if c.chance(0.2):
        keys = [c.choice(("lmax", "lmax", "lmin", "foo")) for _ in range(c.choice((1, 1, 2)))]
        options = "; " + ", ".join(f"{k}={c.integer(0, 6)}" for k in keys)
    target = f" -> {_loose_irreps(c, so3)}" if c.chance(0.3) else ""
    return f"fuse({operands}{options}){target}{mix}"


def loose_program(c: Chooser) -> str:
    """A program that follows the grammar but not the types: names from a small pool (so that
    some resolve), any mode, option and irreps, headers and diagrams in any number (even none)."""
    so3 = c.chance(0.2)
    parts = []
    for _ in range(c.choice((0, 0, 1, 1, 2, 3))):
        if c.chance(0.5):
            parts.append("group " + c.choice(("O3", "SO3", "SO3" if so3 else "O3", "U1")))
        else:
            parts.append("convention " + c.choice(("e3nn", "e3nn", "cueq")))
    names = c.sample(("x", "y", "z", "w", "t", "o", "A"), c.integer(1, 5))
    for k in range(c.choice((0, 1, 1, 1, 2, 3))):
        lines = []
        spaced = c.chance(0.3)  # index spaces: rows named (x[node]), gathers (x[i]) and scatters (y[i] +=)
        spaces = ("node", "edge", "node", "edge", "atom") if spaced else ()

        def rows() -> str:
            return f"[{c.choice(spaces)}]" if spaced and c.chance(0.9) else ""

        for _ in range(c.choice((0, 1, 2, 3, 4, 5, 6))):
            kind = c.choice(("in", "in", "in", "out", "out", "let", "assign", "assign"))
            name = c.choice(names)
            if kind == "in":
                what = c.choice(("irreps", "irreps", "weights", "index"))
                size = c.choice(spaces) if spaced and c.chance(0.7) else c.integer(0, 4)
                typ = {"irreps": _loose_irreps(c, so3), "weights": "weights", "index": f"index({size})"}[what]
                lines.append(f"in {name}{rows()} : {typ}")
            elif kind == "out":
                lines.append(f"out {name}{rows()} : {_loose_irreps(c, so3)}")
            else:
                expr = " + ".join(_loose_term(c, names, so3, spaced) for _ in range(c.choice((1, 1, 2, 3))))
                target = f"{name}[{c.choice(names)}]" if spaced and c.chance(0.5) else name
                assign = c.choice(("+=", "+=", "=")) if spaced else "="
                lines.append(("let " if kind == "let" else "") + f"{target} {assign} {expr}")
        parts.append(_layout(c, f"diagram {c.choice(DIAGRAM_NAMES[:3])}{k if c.chance(0.7) else ''}", lines))
    return "\n".join(parts) + "\n"


def random_program(c: Chooser, strict_probability: float = 0.75) -> str:
    return strict_program(c) if c.chance(strict_probability) else loose_program(c)


# --------------------------------------------------------------------------- mutations

_TOKEN = re.compile(r"\s+|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+|->|.", re.S)
UNICODE_BITS = ("é", "α", "ｘ", "ǅ", "\u00a0", "\u2028", "\u2029", "\ufeff", "\u200b", "\u0301", "😀", "⊗",
                "\x0c", "\x0b", "\r", "\r\n", "\x00", "\t", "\x1c", "\x85", "\u3000", "²", "١")
INVALID_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xfe\xff")
#: Huge numbers, and numbers at fusionc's limits (fusionc.limits: l <= 16, multiplicities <= 100000).
HUGE_NUMBERS = ("0", "1000", "100000", "1000000", "2147483648", "9223372036854775808", "99999999999999999999999",
                "007", "65", "16", "17", "100001", "10000")
FRAGMENTS = ("-> 0e", "-> 2x(0e + 1o)", "; lmax=2", "; lmax=0, lmax=1", "mix uvw", "mix uuu per z", "by w", "per z",
             "+", "fuse(x, x)", "fuse(x)", "in w : weights", "in z : index(2)", "out q : 0e", "let t = x",
             "diagram e {}", "group SO3", "{", "}", "(", ")", ",", ":", "=", "->", "x0e", "1000e", "0x0e",
             "2x((0e))", "2x(0e + 1o", "1000000x0e", "3x(2x(0e))", "[node]", "[edge]", "index(node)", "+=",
             "x[i]", "in i[edge] : index(node)", "y[i] +=")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _names_in(tokens: list[str]) -> list[str]:
    return [t for t in tokens if re.fullmatch(r"[A-Za-z_]\w*", t) and not re.fullmatch(r"x?\d.*", t)]


def _mutate_once(c: Chooser, tokens: list[str]) -> list[str]:
    solid = [i for i, t in enumerate(tokens) if not t.isspace()] or [0]
    i = c.choice(solid) if tokens else 0
    op = c.choice(("delete", "duplicate", "swap", "name", "name", "number", "unicode", "fragment", "deep_sum",
                   "many_operands", "long_irreps", "line", "truncate", "rename_prefix"))
    tokens = list(tokens)
    if not tokens:
        return [c.choice(FRAGMENTS)]
    if op == "delete":
        del tokens[i]
    elif op == "duplicate":
        tokens.insert(i, tokens[i] + (" " if c.chance(0.5) else ""))
    elif op == "swap":
        j = c.choice(solid)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    elif op == "name":
        names = [k for k, t in enumerate(tokens) if re.fullmatch(r"[A-Za-z_]\w*", t)] or [i]
        k = c.choice(names)
        pool = c.choice((GRAMMAR_KEYWORDS, PYTHON_WORDS, RESERVED, TRICKY_NAMES, ("α", "x" * 300, "ｘ", "_x", "__init__",
                         "cg_1_1_0", "recouple_a", "None", "True", "x\u0301", "uvw", "O3", "SO3", "x__d", "d__d2_x")))
        tokens[k] = c.choice(pool)
    elif op == "number":
        numbers = [k for k, t in enumerate(tokens) if t.isdigit()] or [i]
        tokens[c.choice(numbers)] = c.choice(HUGE_NUMBERS)
    elif op == "unicode":
        tokens.insert(c.integer(0, len(tokens)), c.choice(UNICODE_BITS))
    elif op == "fragment":
        tokens.insert(c.integer(0, len(tokens)), " " + c.choice(FRAGMENTS) + " ")
    elif op == "deep_sum":
        names = _names_in(tokens) or ["x"]
        term = c.choice(names)
        eq = [k for k, t in enumerate(tokens) if t == "="] or [i]
        k = c.choice(eq)
        tokens.insert(k + 1, " " + " + ".join([term] * c.choice((20, 200, 2000))) + " + ")
    elif op == "many_operands":
        names = _names_in(tokens) or ["x"]
        term = c.choice(names)
        tokens.insert(c.integer(0, len(tokens)), f" = fuse({', '.join([term] * c.choice((5, 8, 30)))}) ")
    elif op == "long_irreps":
        colon = [k for k, t in enumerate(tokens) if t in (":", "->")] or [i]
        k = c.choice(colon)
        irreps = c.choice((" + ".join(["0e"] * c.choice((50, 2000))), "2x(" + "(" * 50 + "0e" + ")" * 51,
                           "1000e", "30o", "100000x0e", "999999999x(0e + 1o)", "8x(" + " + ".join(f"{l}e" for l in range(12)) + ")"))
        tokens.insert(k + 1, " " + irreps + " + ")
    elif op == "line":
        lines = "".join(tokens).split("\n")
        j = c.integer(0, len(lines) - 1)
        action = c.choice(("delete", "duplicate", "swap"))
        if action == "delete":
            del lines[j]
        elif action == "duplicate":
            lines.insert(j, lines[j])
        else:
            k = c.integer(0, len(lines) - 1)
            lines[j], lines[k] = lines[k], lines[j]
        return _tokens("\n".join(lines))
    elif op == "truncate":
        return tokens[:c.integer(0, len(tokens))]
    elif op == "rename_prefix":  # a name that the generated code derives from another name
        names = sorted(set(_names_in(tokens)) - set(GRAMMAR_KEYWORDS)) or ["d"]
        old, base = c.choice(names), c.choice(names)
        new = c.choice(DERIVED).format(base)
        tokens = [new if t == old else t for t in tokens]
    return tokens


def mutate(c: Chooser, source: str, allow_bytes: bool = True) -> bytes:
    """1-4 token- or character-level mutations of `source`; sometimes invalid UTF-8 bytes (when
    `allow_bytes`), CRLF line ends, a byte-order mark or no final newline."""
    tokens = _tokens(source)
    for _ in range(c.choice((1, 1, 2, 3, 4))):
        tokens = _mutate_once(c, tokens)
    text = "".join(tokens)
    roll = c.integer(0, 99)
    if roll < 5:
        text = text.replace("\n", "\r\n")
    elif roll < 8:
        text = "\ufeff" + text
    elif roll < 12:
        text = text.rstrip("\n")
    data = text.encode("utf-8", "surrogatepass")
    if allow_bytes and c.chance(0.1):
        k = c.integer(0, len(data))
        data = data[:k] + c.choice(INVALID_UTF8) + data[k:]
    return data


# --------------------------------------------------------------------------- grammar coverage


def grammar_coverage(sources: Sequence[str]) -> tuple[set[str], set[str]]:
    """(covered, all) alternatives of the grammar's rules, as `rule: symbols`, over `sources`
    (each parsed with the shipped grammar; sources that do not parse are skipped)."""
    import lark

    from fusionc.frontend.parser import grammar_text

    parser = lark.Lark(grammar_text(), parser="lalr", keep_all_tokens=True)
    by_origin: dict[str, list] = {}
    for rule in parser.rules:
        by_origin.setdefault(rule.origin.name, []).append(rule)

    def symbols(name: str) -> set[str]:
        """What a symbol can stand for among a tree's children."""
        if name.startswith("__") and name in by_origin:
            return {s for r in by_origin[name] for e in r.expansion if e.name != name for s in symbols(e.name)}
        out = set()
        for r in by_origin.get(name, ()):
            if r.alias:
                out.add(r.alias)
            elif r.options.expand1 and len(r.expansion) == 1:
                out |= symbols(r.expansion[0].name)
            else:
                out.add(name)
        return out or {name}

    alternatives: dict[str, list[tuple[str, list[set[str]]]]] = {}
    for rule in parser.rules:
        name = rule.alias or rule.origin.name
        if rule.origin.name.startswith("__") or (rule.options.expand1 and not rule.alias):
            continue
        slots = [symbols(e.name) for e in rule.expansion]
        label = f"{name}: {' '.join(e.name for e in rule.expansion) or '(empty)'}"
        alternatives.setdefault(name, []).append((label, slots))
    covered: set[str] = set()
    for source in sources:
        try:
            tree = parser.parse(source)
        except lark.exceptions.LarkError:
            continue
        for node in tree.iter_subtrees():
            kinds = {ch.data if isinstance(ch, lark.Tree) else ch.type for ch in node.children if ch is not None}
            for label, slots in alternatives.get(node.data, ()):
                if all(kinds & s for s in slots) and kinds <= set().union(*slots):
                    covered.add(label)
    every = {label for alts in alternatives.values() for label, _ in alts}
    return covered, every


# --------------------------------------------------------------------------- findings and cases


@dataclass(frozen=True)
class Finding:
    """Something an oracle objects to; `target`, `kind` and `key` say which problem it is."""

    target: str  # cli | loads
    kind: str
    key: str
    detail: str

    @property
    def signature(self) -> str:
        return f"{self.target}/{self.kind}/{self.key}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Case:
    """One program and how to run it: the CLI `command` (check, explain, numeric, dump, compile,
    stdout, show) in process or as a `subprocess`, or `loads` with or without `native` kernels."""

    target: str
    source: bytes
    seed: int
    command: str = "check"
    subprocess: bool = False
    native: bool = False
    filename: str = "case.fus"

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["source"] = base64.b64encode(self.source).decode()
        return data

    @staticmethod
    def from_json(data: dict) -> Case:
        return Case(**{**data, "source": base64.b64decode(data["source"])})

    def with_source(self, source: bytes) -> Case:
        return dataclasses.replace(self, source=source)


FILENAMES = ("case.fus", "case.fus", "case.fus", "my diagrams.fus", "ünï.fus", "a:1:2.fus", "x.txt", "-dash.fus")
CLI_COMMANDS = ("check", "check", "check", "explain", "compile", "compile", "stdout", "dump", "show", "numeric")


def make_case(seed: int, index: int, target: str, *, native_fraction: float = 0.05,
              subprocess_fraction: float = 0.05, mutate_fraction: float = 0.4) -> Case:
    """The `index`-th case of a run with `seed`: the same arguments give the same case."""
    c = RandomChooser(random.Random(f"{seed}/{index}/{target}"))
    text = random_program(c)
    mutated = c.chance(mutate_fraction)
    source = mutate(c, text, allow_bytes=target == "cli") if mutated else text.encode()
    if target == "cli":
        return Case("cli", source, c.integer(0, 2**31), command=c.choice(CLI_COMMANDS),
                    subprocess=c.chance(subprocess_fraction), filename=c.choice(FILENAMES))
    return Case("loads", source, c.integer(0, 2**31), native=not mutated and c.chance(native_fraction))


# --------------------------------------------------------------------------- the CLI oracle

_LOCATED = re.compile(r"^(?P<file>.*):(?P<line>\d+):(?P<col>\d+): error: ")


def _source_lines(source: bytes, as_file: bool) -> list[str]:
    """The lines of the source as lark counts them (at "\n" only); `as_file`: as the CLI reads a
    file (without a byte-order mark, universal newlines, bytes that are not UTF-8 shown as U+FFFD)."""
    if as_file:
        source = source.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return source.decode("utf-8", "replace").split("\n")


def _shown(line: str) -> str:
    """A line as an error may show it: one column per character, control, format and separator
    characters (a tab, a form feed, U+2028) as spaces."""
    return "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in line)


def check_location(target: str, message: str, filename: str, source: bytes) -> list[Finding]:
    """A FusionError's text: `FILE:LINE:COL: error: ` with LINE:COL in the file, then the line
    and a caret under COL."""
    lines = message.splitlines() or [""]
    head = lines[0]
    if not head.startswith(f"{filename}:"):
        return [Finding(target, "error-without-location", "file", message)]
    m = _LOCATED.match(head)
    if not m or m["file"] != filename:
        return [Finding(target, "error-without-location", "line:col", message)]
    line, col = int(m["line"]), int(m["col"])
    source_lines = _source_lines(source, as_file=target == "cli")
    if not 1 <= line <= len(source_lines) or not 1 <= col <= len(source_lines[line - 1]) + 1:
        return [Finding(target, "location-outside-file", "line:col", message)]
    want = source_lines[line - 1]
    if len(lines) < 3:
        return [Finding(target, "error-without-context", "missing", message)]
    if _shown(lines[1]) not in (_shown("    " + want), _shown("    " + want.rstrip("\r"))):
        return [Finding(target, "error-shows-wrong-line", "context", f"{message}\n--- line {line} is: {want!r}")]
    caret = re.fullmatch(r"    ( *)\^+", lines[2])
    if not caret or len(caret[1]) != col - 1:
        return [Finding(target, "error-caret-misplaced", "caret", message)]
    return []


_GENERATED_FILE = re.compile(r"(torch|triton)_[0-9a-f]{32}\.py")


def _where(filename: str, function: str) -> str:
    """`file:function`, with a generated module's hash and its programs' names (which carry the
    diagram's name) left out, so that one bug gives one key whatever the program."""
    name = Path(filename).name
    if _GENERATED_FILE.fullmatch(name):
        return f"<generated>:{'<program>' if re.match(r'_[^_]', function) else function}"
    return f"{name}:{function}"


def _exception_key(exc: BaseException) -> str:
    """`Type at file:function` of the innermost compiler frame, stable under minimisation."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if ("fusionc" in f.filename or _GENERATED_FILE.search(f.filename))
             and not f.filename.endswith("fuzz.py")]
    frame = (inner or frames or [None])[-1]
    where = _where(frame.filename, frame.name) if frame else "?"
    return f"{type(exc).__name__} at {where}"


def _key_from_traceback_text(text: str) -> str:
    frames = re.findall(r'File "([^"]*)", line \d+, in (\S+)', text)
    inner = [f for f in frames if "fusionc" in f[0] or _GENERATED_FILE.search(f[0])] or frames
    where = _where(*inner[-1]) if inner else "?"
    last = [line for line in text.strip().splitlines() if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit|Interrupt)\b", line)]
    kind = last[-1].split(":")[0].split(".")[-1] if last else "Traceback"
    return f"{kind} at {where}"


def cli_argv(command: str, path: str, workdir: str) -> list[str]:
    return {
        "check": ["check", path],
        "explain": ["check", "--explain", path],
        "numeric": ["check", "--numeric", "--rotations", "1", path],
        "dump": ["check", "--dump-ir", "prune", path],
        "compile": ["compile", path, "-o", os.path.join(workdir, "out.py")],
        "stdout": ["compile", path, "-o", "-"],
        "show": ["show", path, "-o", os.path.join(workdir, "out.svg")],
    }[command]


def check_cli_result(case: Case, path: str, workdir: str, rc: object, out: str, err: str,
                     exc: BaseException | None = None) -> list[Finding]:
    """The CLI oracle on one run's exit status and output."""
    findings = []
    if exc is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return [Finding("cli", "uncaught-exception", _exception_key(exc), tb[-4000:])]
    if isinstance(rc, int) and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        return [Finding("cli", "crash", f"signal {name}", err[-4000:])]
    if "Traceback" in out or "Traceback" in err:
        findings.append(Finding("cli", "traceback-printed", _key_from_traceback_text(err + out), (err + out)[-4000:]))
    if rc not in (0, 1, 2):
        findings.append(Finding("cli", "bad-exit-status", f"exit {rc}", f"exit status {rc}\n{err[-3000:]}"))
    elif rc == 1:
        # `--numeric` holds every diagram to 1e-10 relative; fusions of fusions that are polynomials
        # of degree 30 and more lose more than that to float64 rounding (3.6e-11 to 1.2e-10 for one,
        # by the rotation drawn) and fail by that rule. Only an error beyond rounding is a defect.
        errors = [float(e) for e in re.findall(r"max relative error (\S+)", out)]
        if case.command != "numeric" or not errors or max(errors) > ROUNDING:
            findings.append(Finding("cli", "numeric-check-failed" if case.command == "numeric" else "bad-exit-status",
                                    "exit 1", f"{out[-3000:]}\n{err[-2000:]}"))
    elif rc == 2:
        first = err.splitlines()[0] if err.strip() else ""
        if first.startswith("fusionc: error: ") or first.startswith("usage:"):
            pass
        elif _LOCATED.match(first) or first.startswith(f"{path}:"):
            findings += check_location("cli", err.rstrip("\n"), path, case.source)
        else:
            findings.append(Finding("cli", "error-without-location", "first line", err[-3000:] or "(no stderr)"))
    elif rc == 0 and case.command in ("compile", "stdout"):
        code = out if case.command == "stdout" else None
        if code is None:
            target = os.path.join(workdir, "out.py")
            code = Path(target).read_text() if os.path.exists(target) else None
            if code is None:
                findings.append(Finding("cli", "compile-wrote-nothing", "out.py", out))
        if code is not None:
            try:
                compile(code, "out.py", "exec")
            except SyntaxError as e:
                findings.append(Finding("cli", "generated-code-invalid", type(e).__name__, f"{e}\n{e.text!r}"))
    return findings


def _import_entry(entry: str) -> Callable[[list[str]], int]:
    """`module:function` or `path/to/file.py:function`."""
    where, _, name = entry.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_fuzz_entry_{abs(hash(where))}", where)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def run_cli_case(case: Case, workdir: str, entry: str = "fusionc.cli:main") -> tuple[list[Finding], bool]:
    """Write the case's file and run the CLI on it in this process (stdout/stderr captured);
    returns the findings and whether it exited 0."""
    path = os.path.join(workdir, case.filename)
    Path(path).write_bytes(case.source)
    main = _import_entry(entry)
    argv = cli_argv(case.command, path, workdir)
    out, err = io.StringIO(), io.StringIO()
    rc: object = None
    exc = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001 (an escaping exception is what the oracle reports)
            exc = e
    return check_cli_result(case, path, workdir, rc, out.getvalue(), err.getvalue(), exc), rc == 0


def run_cli_subprocess(case: Case, workdir: str, timeout: float, entry: str = "fusionc.cli:main",
                       env: dict | None = None) -> tuple[list[Finding], bool]:
    """The same, as `python -m fusionc` in a fresh process: real exit codes and signals."""
    path = os.path.join(workdir, case.filename)
    Path(path).write_bytes(case.source)
    argv = cli_argv(case.command, path, workdir)
    if entry == "fusionc.cli:main":
        command = [sys.executable, "-m", "fusionc", *argv]
    else:
        script = f"import sys; from fusionc.fuzz import _import_entry; sys.exit(_import_entry({entry!r})(sys.argv[1:]))"
        command = [sys.executable, "-c", script, *argv]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, cwd=workdir, env=env)
    except subprocess.TimeoutExpired:
        return [Finding("cli", "hang", f"{case.command} (subprocess)", f"no exit within {timeout:.0f} s")], False
    out = result.stdout.decode("utf-8", "replace")
    err = result.stderr.decode("utf-8", "replace")
    return check_cli_result(case, path, workdir, result.returncode, out, err), result.returncode == 0


# --------------------------------------------------------------------------- the library oracle


@functools.lru_cache(maxsize=None)
def _wigner(l1: int, l2: int, l3: int):
    import torch

    from fusionc.algebra import wigner_3j

    return torch.tensor(wigner_3j(l1, l2, l3), dtype=torch.float64)


def reference_values(diagram, weight, env: dict) -> dict:
    """Every value of `diagram` on rows, densely and path by path from the IR, in torch (so that
    autograd gives reference derivatives): `env` maps each input to (n, dim) features, (n,)
    indices or (n, numel) / (numel,) weights; `weight` is the module's flat parameter vector."""
    import torch

    env = dict(env)
    n = next(a.shape[0] for i, a in ((i, env[i.name]) for i in diagram.inputs) if i.kind == "irreps")
    offset = 0
    for value in diagram.values:
        parts: list[list] = [[] for _ in value.irreps]
        for t in value.terms:
            sets = weight[offset:offset + t.parameter_numel]
            offset += t.parameter_numel
            w = None
            if t.has_weights:
                if t.weight_source is not None:
                    w = env[t.weight_source].expand(n, t.weight_numel)
                elif t.per is not None:
                    w = sets.reshape(t.weight_sets, t.weight_numel)[env[t.per]]
                else:
                    w = sets.expand(n, t.weight_numel)
            for p in t.paths:
                xs = []
                for op, irreps, b in zip(t.operands, t.irreps_in, p.operand_blocks):
                    start, stop = irreps.slices()[b]
                    xs.append(env[op][:, start:stop].reshape(n, irreps[b].mul, irreps[b].ir.dim))
                y = _path_value(t, p, xs, w, n)
                parts[t.placement[p.out_block]].append(y.reshape(n, t.irreps_out[p.out_block].dim))
        columns = [sum(ps[1:], ps[0]) if ps else torch.zeros(n, b.dim, dtype=torch.float64)
                   for ps, b in zip(parts, value.irreps)]
        env[value.name] = torch.cat(columns, -1) if columns else torch.zeros(n, 0, dtype=torch.float64)
    return env


def _path_value(t, p, xs: list, w, n: int):
    import torch

    pw = None if w is None else w[:, p.weight_offset:p.weight_offset + p.weight_numel].reshape(n, *p.weight_shape)
    out = t.irreps_out[p.out_block]
    if len(t.operands) == 1:
        y = {"uvw": lambda: torch.einsum("nui,nuw->nwi", xs[0], pw), "uuu": lambda: xs[0] * pw[..., None],
             "none": lambda: xs[0]}[t.mode]()
        return p.normalization * y
    if t.is_tree:
        labels = list(p.inner) + [out.ir]
        y, current = xs[0], t.irreps_in[0][p.operand_blocks[0]].ir
        for position in range(1, len(xs)):
            l = t.irreps_in[position][p.operand_blocks[position]].ir.l
            y = torch.einsum("nui,nuj,ijk->nuk", y, xs[position], _wigner(current.l, l, labels[position - 1].l))
            current = labels[position - 1]
        return p.normalization * (y if pw is None else y * pw[..., None])
    a, b = (irreps[i] for irreps, i in zip(t.irreps_in, p.operand_blocks))
    cg = _wigner(a.ir.l, b.ir.l, out.ir.l)
    y = {"uvw": lambda: torch.einsum("nui,nvj,ijk,nuvw->nwk", *xs, cg, pw),
         "uvu": lambda: torch.einsum("nui,nvj,ijk,nuv->nuk", *xs, cg, pw),
         "uuu": lambda: torch.einsum("nui,nuj,ijk,nu->nuk", *xs, cg, pw),
         "none": lambda: torch.einsum("nui,nuj,ijk->nuk", *xs, cg),
         "uvuv": lambda: torch.einsum("nui,nvj,ijk,nuv->nuvk", *xs, cg, pw).reshape(n, a.mul * b.mul, out.ir.dim)}[t.mode]()
    return p.normalization * y


def _relative_error(got, want) -> float:
    if got is None and want is None:
        return 0.0
    import torch

    got = torch.zeros_like(want) if got is None else got
    want = torch.zeros_like(got) if want is None else want
    if got.shape != want.shape:
        return math.inf
    if not got.numel():
        return 0.0
    scale = max(float(want.abs().max()), 1.0)
    return float((got - want).abs().max()) / scale


@dataclass
class _Call:
    """The inputs of one module call: as passed (with batch shapes) and as flat rows."""

    args: list
    rows: dict
    n: int
    batch: tuple[int, ...]


def _random_call(module, diagram, rng: random.Random, generator, native: bool) -> _Call:
    """Random inputs: a few rows, sometimes none (native kernels: rows, and sometimes enough for
    their OpenMP loop, 64), in a batch of one or two dimensions, shared weights sometimes."""
    import torch

    if native:
        batch = rng.choice(((3,), (5,), (2, 2), (70,)))
    else:
        batch = rng.choice(((3,), (3,), (1,), (5,), (0,), (2, 2), (0, 3)))
    n = math.prod(batch)
    args, rows = [], {}
    for i in diagram.inputs:
        if i.kind == "irreps":
            x = torch.randn(*batch, i.irreps.dim, generator=generator, dtype=torch.float64)
            rows[i.name] = x.reshape(n, i.irreps.dim)
        elif i.kind == "weights":
            numel = module.input_weight_numel[i.name]
            shared = rng.random() < 0.3
            x = torch.randn(*(() if shared else batch), numel, generator=generator, dtype=torch.float64)
            rows[i.name] = x if shared else x.reshape(n, numel)
        else:
            x = torch.randint(0, i.size, batch, generator=generator)
            rows[i.name] = x.reshape(n)
        args.append(x)
    return _Call(args, rows, n, batch)


def _grad(y, xs: list, create_graph: bool = False) -> list:
    """d y / d x for each x that requires grad (None for the others, and where y does not
    depend on x or is no tensor at all)."""
    import torch

    live = [k for k, x in enumerate(xs) if x.requires_grad]
    out: list = [None] * len(xs)
    if not isinstance(y, torch.Tensor) or not y.requires_grad or not live:
        return out
    for k, g in zip(live, torch.autograd.grad(y, [xs[k] for k in live], create_graph=create_graph, allow_unused=True)):
        out[k] = g
    return out


def _outputs_of(result, count: int) -> tuple | None:
    import torch

    outs = result if isinstance(result, tuple) else (result,)
    if len(outs) != count or not all(isinstance(o, torch.Tensor) for o in outs):
        return None
    return outs


class _LibraryOracle:
    """Checks of one compiled source's modules; collects findings instead of raising."""

    def __init__(self, case: Case, rng: random.Random) -> None:
        import torch

        self.case, self.rng = case, rng
        self.generator = torch.Generator().manual_seed(case.seed)
        self.findings: list[Finding] = []

    def report(self, kind: str, key: str, detail: str) -> None:
        self.findings.append(Finding("loads", kind, key, detail[-4000:]))

    def guarded(self, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (an exception here is the finding)
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.report(f"{what}-raised", _exception_key(exc), tb)
            return None

    def diagram(self, ops, diagram) -> None:
        import torch

        cls = getattr(ops.module, diagram.name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            self.report("module-missing", "class", f"ops.module.{diagram.name} is {cls!r}")
            return
        if getattr(ops, diagram.name, None) is not cls:
            self.report("module-shadowed", "attribute", f"ops.{diagram.name} is {getattr(ops, diagram.name, None)!r}")
        dims = sum(i.irreps.dim for i in diagram.inputs if i.kind == "irreps") + sum(v.irreps.dim for v in diagram.values)
        paths = sum(len(t.paths) for t in diagram.vertices)
        numel = sum(t.weight_sets * t.weight_numel for t in diagram.vertices)
        if dims > MAX_DIM or numel > MAX_WEIGHTS or paths > MAX_PATHS:
            return
        module = self.guarded("construct", lambda: cls(dtype=torch.float64))
        if module is None:
            return
        expected_in = tuple(str(i.irreps) for i in diagram.inputs if i.kind == "irreps")
        if tuple(getattr(module, "irreps_in", ())) != expected_in:
            self.report("module-metadata", "irreps_in", f"{module.irreps_in!r} != {expected_in!r}")
        with torch.no_grad():
            module.weight.copy_(torch.randn(module.weight.shape, generator=self.generator, dtype=torch.float64))
        call = _random_call(module, diagram, self.rng, self.generator, self.case.native)
        outputs = self.numbers(module, diagram, call)
        if self.rng.random() < 0.3 and call.n:
            self.bad_input(module, diagram, call)
        if self.rng.random() < 0.15 and outputs is not None:
            self.equivariance(module, diagram)

    def numbers(self, module, diagram, call: _Call) -> list | None:
        """Forward, first and (sometimes) second derivatives against the dense reference; and
        with native kernels (`case.native`) against the torch code. Returns the outputs."""
        second = self.rng.random() < 0.3
        results = self.run(module, diagram, call, second, native=False)
        if results is None:
            return None
        want = self.reference(module, diagram, call, second)
        if want is not None:
            self.compare("reference-mismatch", results, want)
        if self.case.native:
            native = self.run(module, diagram, call, second, native=True)
            if native is not None:
                self.compare("native-mismatch", native, results)
        return results["outputs"]

    def run(self, module, diagram, call: _Call, second: bool, native: bool) -> dict | None:
        import torch

        os.environ["FUSIONC_NATIVE"] = "1" if native else "0"
        where = "native" if native else "call"
        args = [a.clone().requires_grad_() if a.is_floating_point() else a for a in call.args]
        result = self.guarded(where, lambda: module(*args))
        if result is None:
            return None
        outs = _outputs_of(result, len(diagram.outputs))
        if outs is None:
            self.report("bad-output", "type", f"module returned {type(result).__name__} for {len(diagram.outputs)} outputs")
            return None
        for v, o in zip(diagram.outputs, outs):
            if tuple(o.shape) != (*call.batch, v.irreps.dim) or o.dtype != torch.float64:
                self.report("bad-output", "shape", f"{v.name}: {tuple(o.shape)} {o.dtype}, expected "
                            f"{(*call.batch, v.irreps.dim)} float64")
                return None
            if not torch.isfinite(o).all():
                self.report("bad-output", "not finite", f"{v.name}: {o}")
                return None
        return self.derivatives(module, args, outs, second, where)

    def derivatives(self, module, args: list, outs: tuple, second: bool, where: str) -> dict | None:
        import torch

        gen = torch.Generator().manual_seed(self.case.seed + 1)
        cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
        wrt = [a for a in args if a.is_floating_point()] + [module.weight]
        loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
        grads = self.guarded(f"{where}-backward", lambda: _grad(loss, wrt, create_graph=second))
        if grads is None:
            return None
        result = {"outputs": [o.detach() for o in outs], "grads": [g if g is None else g.detach() for g in grads]}
        if second:
            directions = [torch.randn(a.shape, generator=gen, dtype=torch.float64) for a in wrt]
            inner = sum((g * d).sum() for g, d in zip(grads, directions) if g is not None and g.requires_grad)
            gg = self.guarded(f"{where}-double-backward", lambda: _grad(inner, wrt))
            if gg is None:
                return None
            result["second"] = [g if g is None else g.detach() for g in gg]
        return result

    def reference(self, module, diagram, call: _Call, second: bool) -> dict | None:
        import torch

        rows = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in call.rows.items()}
        weight = module.weight.detach().clone().requires_grad_()
        try:
            env = reference_values(diagram, weight, rows)
        except Exception as exc:  # noqa: BLE001 (the IR does not match what the reference expects)
            self.report("reference-failed", _exception_key(exc), traceback.format_exc())
            return None
        outs = tuple(env[v.name].reshape(*call.batch, v.irreps.dim) for v in diagram.outputs)
        args = [rows[i.name] for i in diagram.inputs if i.kind != "index"]
        # the same cotangents and directions as `derivatives`, in the same order
        gen = torch.Generator().manual_seed(self.case.seed + 1)
        cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
        wrt = args + [weight]
        loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
        grads = _grad(loss, wrt, create_graph=second)
        passed = [a for a in call.args if a.is_floating_point()] + [module.weight]
        shaped = [g if g is None else g.reshape(a.shape) for g, a in zip(grads, passed)]
        result = {"outputs": [o.detach() for o in outs], "grads": [g if g is None else g.detach() for g in shaped]}
        if second:
            shapes = [a.shape for a in call.args if a.is_floating_point()] + [module.weight.shape]
            directions = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
            inner = sum((g.reshape(d.shape) * d).sum() for g, d in zip(grads, directions)
                        if g is not None and g.requires_grad)
            gg = _grad(inner, wrt)
            result["second"] = [g if g is None else g.detach().reshape(s) for g, s in zip(gg, shapes)]
        return result

    def compare(self, kind: str, got: dict, want: dict) -> None:
        for part in ("outputs", "grads", "second"):
            if part not in got or part not in want:
                continue
            for k, (a, b) in enumerate(zip(got[part], want[part])):
                error = _relative_error(a, b)
                if error > TOLERANCE:
                    shapes = (None if a is None else tuple(a.shape), None if b is None else tuple(b.shape))
                    self.report(kind, part, f"{part}[{k}]: relative error {error:.3g} (shapes {shapes})")
                    return

    def bad_input(self, module, diagram, call: _Call) -> None:
        """A wrong shape, dtype or index must raise a ValueError that names the input."""
        import torch

        os.environ["FUSIONC_NATIVE"] = "0"
        k = self.rng.randrange(len(diagram.inputs))
        i, x = diagram.inputs[k], call.args[k]
        if i.kind == "index":
            bad, what = self.rng.choice(((x.double(), "float index"), (x + i.size, "index out of range"),
                                         (x.reshape(-1)[:0] if x.numel() > 1 else x.reshape(1, 1, -1), "index shape")))
        else:
            bad, what = self.rng.choice(((torch.cat([x, x[..., :1]], -1), "last dimension + 1"),
                                         (x.float(), "float32"), (x.tolist(), "a list")))
        args = list(call.args)
        args[k] = bad
        try:
            module(*args)
        except ValueError as exc:
            if f"'{i.name}'" not in str(exc):
                self.report("bad-input-message", what, f"input {i.name} ({what}): {exc}")
            return
        except Exception as exc:  # noqa: BLE001
            self.report("bad-input-wrong-exception", f"{what}: {_exception_key(exc)}",
                        f"input {i.name} ({what}):\n{traceback.format_exc()}")
            return
        self.report("bad-input-accepted", what, f"input {i.name} ({what}) was accepted")

    def equivariance(self, module, diagram) -> None:
        """f(D x) = D f(x) for a random rotation (and the inversion, for O(3)), output by output,
        leaving out outputs that are zero up to rounding: a symmetric coupling can vanish
        identically (((x ⊗ x)_2e ⊗ x)_2e for x : 1e), and its error would compare noise with noise."""
        import numpy as np
        import torch

        from fusionc.algebra.rotations import random_rotation, representation
        from fusionc.testing import random_inputs

        os.environ["FUSIONC_NATIVE"] = "0"
        rng = np.random.default_rng(self.case.seed % 2**32)
        args = random_inputs(module, diagram, 4, torch.Generator().manual_seed(self.case.seed), torch.float64)
        rotation = random_rotation(rng)
        inversion = diagram.group == "O3" and bool(rng.integers(2))

        def act(irreps, x):
            return x @ torch.from_numpy(representation(irreps, rotation, inversion)).T

        def run(xs):
            with torch.no_grad():
                outs = module(*xs)
            return outs if isinstance(outs, tuple) else (outs,)

        outs = self.guarded("equivariance", lambda: run(args))
        moved = self.guarded("equivariance", lambda: run([act(i.irreps, a) if i.kind == "irreps" else a
                                                          for i, a in zip(diagram.inputs, args)]))
        if outs is None or moved is None:
            return
        for v, o, om in zip(diagram.outputs, outs, moved):
            scale = float(o.abs().max()) if o.numel() else 0.0
            if scale < 1e-10:
                continue
            error = float((om - act(v.irreps, o)).abs().max()) / scale
            if not error < 1e-9:
                self.report("not-equivariant", "error", f"output {v.name}: equivariance error {error:.3g}")
                return


def run_loads_case(case: Case, loads: Callable | None = None) -> tuple[list[Finding], bool]:
    """The library oracle on one source; returns the findings and whether it compiled."""
    import fusionc

    loads = loads or fusionc.loads
    try:
        source = case.source.decode("utf-8")
    except UnicodeDecodeError:
        return [], False
    try:
        ops = loads(source, "torch", case.filename)
    except fusionc.FusionError as exc:
        return check_location("loads", str(exc), case.filename, case.source), False
    except Exception as exc:  # noqa: BLE001
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return [Finding("loads", "loads-raised", _exception_key(exc), tb[-4000:])], False
    oracle = _LibraryOracle(case, random.Random(case.seed))
    diagrams = getattr(ops, "diagrams", None)
    if not isinstance(diagrams, tuple):
        oracle.report("module-shadowed", "diagrams", f"ops.diagrams is {diagrams!r}")
        return oracle.findings, True
    try:
        for d in diagrams:
            if not d.spaces:  # the reference evaluation knows one row space (tests/test_spaces.py checks the others)
                oracle.diagram(ops, d)
    finally:
        os.environ["FUSIONC_NATIVE"] = "0"
    return oracle.findings, True


# --------------------------------------------------------------------------- the worker process


def _worker_main(memory_gb: float) -> None:
    """Read cases (JSON lines) on stdin, answer findings on the original stdout; anything the
    compiler or a C compiler prints goes to stderr."""
    import resource

    if memory_gb > 0:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import warnings

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("FUSIONC_NATIVE", "0")
    import fusionc.cli  # noqa: F401 (imported before the first case, whose time limit it would eat)

    workdir = tempfile.mkdtemp(prefix="fusionc-fuzz-")
    protocol.write(json.dumps({"ready": True}) + "\n")
    protocol.flush()
    try:
        for line in sys.stdin:
            request = json.loads(line)
            case = Case.from_json(request["case"])
            entry = request.get("entry") or "fusionc.cli:main"
            casedir = tempfile.mkdtemp(dir=workdir)
            compiled = False
            try:
                if case.target == "cli":
                    os.environ["FUSIONC_NATIVE"] = "0"
                    findings, compiled = run_cli_case(case, casedir, entry)
                else:
                    findings, compiled = run_loads_case(case)
            except Exception as exc:  # noqa: BLE001 (a bug of the oracle itself: report, go on)
                findings = [Finding(case.target, "oracle-error", _exception_key(exc), traceback.format_exc())]
            finally:
                shutil.rmtree(casedir, ignore_errors=True)
            protocol.write(json.dumps({"findings": [f.to_json() for f in findings], "compiled": compiled}) + "\n")
            protocol.flush()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Outcome:
    findings: list[Finding]
    compiled: bool = False
    seconds: float = 0.0


class Worker:
    """A `python -m fusionc.fuzz --worker` process that runs cases one at a time under a time
    limit; restarted after a hang (reported), a crash (reported) or every `recycle` cases."""

    STARTUP_S = 300.0

    def __init__(self, env: dict | None = None, memory_gb: float = 6.0, recycle: int = 150,
                 entry: str | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("FUSIONC_NATIVE", "0")
        self.memory_gb, self.recycle, self.entry = memory_gb, recycle, entry
        self.proc: subprocess.Popen | None = None
        self.served = 0
        self.stderr = tempfile.TemporaryFile()

    def start(self) -> None:
        self.stderr.seek(0)
        self.stderr.truncate()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(self.env)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "fusionc.fuzz", "--worker", "--memory-gb",
                                      str(self.memory_gb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env)
        self.served = 0
        ready, _, _ = select.select([self.proc.stdout], [], [], self.STARTUP_S)
        if not ready or not self.proc.stdout.readline():
            self.stop()
            raise RuntimeError(f"the fuzzing worker did not start:\n{self._stderr_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.stderr.close()

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:].decode("utf-8", "replace")

    def run(self, case: Case, timeout: float | None = None) -> Outcome:
        timeout = timeout or (NATIVE_TIME_LIMIT_S if case.native else TIME_LIMIT_S)
        if self.proc is None or self.proc.poll() is not None or self.served >= self.recycle:
            self.stop()
            self.start()
        assert self.proc and self.proc.stdin and self.proc.stdout
        started = time.monotonic()
        self.served += 1
        request = {"case": case.to_json(), "entry": self.entry}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else None
        seconds = time.monotonic() - started
        what = case.command if case.target == "cli" else ("loads native" if case.native else "loads")
        if line is None:
            self.stop()
            return Outcome([Finding(case.target, "hang", what, f"no answer within {timeout:.0f} s")], seconds=seconds)
        if not line:
            code = self.proc.wait()
            tail = self._stderr_tail()
            self.stop()
            name = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else f"exit {code}"
            kind = "crash" if code < 0 else "worker-died"
            if "MemoryError" in tail or "std::bad_alloc" in tail:
                kind, name = "out-of-memory", "memory"
            return Outcome([Finding(case.target, kind, f"{what}: {name}", tail)], seconds=seconds)
        answer = json.loads(line)
        return Outcome([Finding(**f) for f in answer["findings"]], answer["compiled"], seconds)


# --------------------------------------------------------------------------- minimisation


def _units(source: bytes, level: str) -> list[bytes]:
    if level == "diagrams":
        return [u for u in re.split(rb"(?=\bdiagram\b)", source) if u]
    if level == "lines":
        return source.splitlines(keepends=True)
    return re.findall(rb"\s+|[A-Za-z_0-9]+|->|.", source, re.S)


def minimize(source: bytes, still_fails: Callable[[bytes], bool], budget_s: float) -> bytes:
    """A smaller source for which `still_fails` holds: chunks of diagrams, lines, then tokens
    removed delta-debugging style, then multiplicities and other numbers set to 1, within `budget_s`."""
    deadline = time.monotonic() + budget_s
    current = source
    for level in ("diagrams", "lines", "tokens"):
        units = _units(current, level)
        parts = 2
        while len(units) >= 2 and time.monotonic() < deadline:
            size = math.ceil(len(units) / parts)
            for start in range(0, len(units), size):
                candidate = units[:start] + units[start + size:]
                if time.monotonic() >= deadline:
                    break
                if still_fails(b"".join(candidate)):
                    units, parts = candidate, max(parts - 1, 2)
                    break
            else:
                if parts >= len(units):
                    break
                parts = min(len(units), parts * 2)
        current = b"".join(units)
    units = _units(current, "tokens")
    for k, u in enumerate(units):
        if time.monotonic() >= deadline:
            break
        if u.isdigit() and u not in (b"0", b"1"):
            candidate = units[:k] + [b"1"] + units[k + 1:]
            if still_fails(b"".join(candidate)):
                units = candidate
    return b"".join(units)


# --------------------------------------------------------------------------- the fuzzing loop


@dataclass
class Record:
    finding: Finding
    case: Case
    count: int = 1
    path: Path | None = None


@dataclass
class Stats:
    tried: dict[str, int] = field(default_factory=lambda: {"cli": 0, "loads": 0})
    compiled: dict[str, int] = field(default_factory=lambda: {"cli": 0, "loads": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"cli": 0.0, "loads": 0.0})


class Fuzzer:
    """Generates cases, runs them through the oracles and keeps one minimised reproducer per
    distinct finding in `out_dir`."""

    def __init__(self, seed: int = 0, targets: Sequence[str] = ("cli", "loads"), out_dir: Path | None = None,
                 native_fraction: float = 0.05, subprocess_fraction: float = 0.05, minimize_s: float = 60.0,
                 entry: str | None = None, log: Callable[[str], None] = print, worker: Worker | None = None) -> None:
        self.seed, self.targets, self.out_dir = seed, tuple(targets), out_dir
        self.native_fraction, self.subprocess_fraction = native_fraction, subprocess_fraction
        self.minimize_s, self.entry, self.log = minimize_s, entry, log
        self.worker = worker or Worker(entry=entry)
        self.records: dict[str, Record] = {}
        self.stats = Stats()
        self.deadline = math.inf
        self.workdir = tempfile.mkdtemp(prefix="fusionc-fuzz-cli-")

    def close(self) -> None:
        self.worker.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def execute(self, case: Case, timeout: float | None = None) -> Outcome:
        if case.target == "cli" and case.subprocess:
            started = time.monotonic()
            casedir = tempfile.mkdtemp(dir=self.workdir)
            env = dict(os.environ, FUSIONC_NATIVE="0")
            try:
                findings, ok = run_cli_subprocess(case, casedir, timeout or TIME_LIMIT_S,
                                                  entry=self.entry or "fusionc.cli:main", env=env)
            finally:
                shutil.rmtree(casedir, ignore_errors=True)
            return Outcome(findings, ok, time.monotonic() - started)
        return self.worker.run(case, timeout)

    def run(self, seconds: float, max_programs: int | None = None) -> Stats:
        self.deadline = time.monotonic() + seconds
        for index in itertools.count():
            if time.monotonic() >= self.deadline or (max_programs is not None and index >= max_programs):
                break
            target = self.targets[index % len(self.targets)]
            case = make_case(self.seed, index, target, native_fraction=self.native_fraction,
                             subprocess_fraction=self.subprocess_fraction)
            outcome = self.execute(case)
            self.stats.tried[target] += 1
            self.stats.compiled[target] += outcome.compiled
            self.stats.seconds[target] += outcome.seconds
            for finding in outcome.findings:
                self.record(finding, case)
        return self.stats

    def record(self, finding: Finding, case: Case) -> None:
        known = self.records.get(finding.signature)
        if known is not None:
            known.count += 1
            return
        self.log(f"finding {len(self.records) + 1}: {finding.signature}")
        if self.minimize_s > 0:
            hang = finding.kind == "hang"
            timeout = 5.0 if hang else None
            # within the run's time, but at least a few tries even at its very end
            budget = min(self.minimize_s / 2 if hang else self.minimize_s, max(self.deadline - time.monotonic(), 10.0))

            def still_fails(source: bytes) -> bool:
                outcome = self.execute(case.with_source(source), timeout)
                return any(f.signature == finding.signature for f in outcome.findings)

            small = minimize(case.source, still_fails, budget)
            case = case.with_source(small)
            again = [f for f in self.execute(case, timeout).findings if f.signature == finding.signature]
            finding = again[0] if again else finding
        record = Record(finding, case)
        self.records[finding.signature] = record
        if self.out_dir is not None:
            record.path = write_finding(self.out_dir, len(self.records), finding, case)


def _reproduce_hint(case: Case, path: Path) -> str:
    if case.target == "cli":
        argv = cli_argv(case.command, str(path), "OUTDIR")
        return "fusionc " + " ".join(argv) + ("   (FUSIONC_NATIVE=0)" if case.command == "numeric" else "")
    env = "" if case.native else "FUSIONC_NATIVE=0 "
    return (f"{env}python -c \"from fusionc.fuzz import Case, run_loads_case; import pathlib; "
            f"print(run_loads_case(Case('loads', pathlib.Path('{path}').read_bytes(), {case.seed}, "
            f"native={case.native}, filename={case.filename!r}))[0])\"")


def write_finding(out_dir: Path, number: int, finding: Finding, case: Case) -> Path:
    """`NNN-target-kind.fus` (the minimised source, byte for byte) and `.txt` (what went wrong)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{number:03d}-{finding.target}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', finding.kind)}"
    source_path = out_dir / f"{stem}.fus"
    source_path.write_bytes(case.source)
    text = [f"finding: {finding.signature}", f"target: {case.target}",
            f"case: command={case.command} subprocess={case.subprocess} native={case.native} "
            f"filename={case.filename!r} seed={case.seed}",
            f"reproduce: {_reproduce_hint(case, source_path)}", "", "source:", repr(case.source.decode('utf-8', 'replace'))
            if len(case.source) < 2000 else f"({len(case.source)} bytes, see {source_path.name})", "",
            "what went wrong:", finding.detail]
    (out_dir / f"{stem}.txt").write_text("\n".join(text) + "\n")
    return source_path


def summary(fuzzer: Fuzzer, elapsed: float) -> str:
    lines = []
    for target in fuzzer.targets:
        tried = fuzzer.stats.tried[target]
        rate = tried / max(elapsed / 60, 1e-9)
        extra = f", {fuzzer.stats.compiled[target]} {'compiled' if target == 'loads' else 'exited 0'}"
        lines.append(f"{target}: {tried} programs ({rate:.0f}/min{extra})")
    lines.append(f"findings: {len(fuzzer.records)} distinct")
    for record in fuzzer.records.values():
        where = f"  -> {record.path}" if record.path else ""
        lines.append(f"  {record.finding.signature}  (x{record.count}){where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionc.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    parser.add_argument("--target", choices=("cli", "loads", "both"), default="both")
    parser.add_argument("--out", default="fuzz-findings", help="where reproducers go (default ./fuzz-findings)")
    parser.add_argument("--max-programs", type=int, help="stop after this many programs")
    parser.add_argument("--native-fraction", type=float, default=0.1,
                        help="share of library cases that also compare native kernels (default 0.1)")
    parser.add_argument("--subprocess-fraction", type=float, default=0.05,
                        help="share of CLI cases run as a real subprocess (default 0.05)")
    parser.add_argument("--minimize-seconds", type=float, default=60.0, help="time to minimise each finding")
    parser.add_argument("--cli-entry", help="MODULE:FUNCTION to fuzz instead of fusionc.cli:main (to test the fuzzer)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-gb", type=float, default=6.0, help="address-space limit of the worker (GiB)")
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.memory_gb)
        return 0
    targets = ("cli", "loads") if args.target == "both" else (args.target,)
    fuzzer = Fuzzer(args.seed, targets, Path(args.out), args.native_fraction, args.subprocess_fraction,
                    args.minimize_seconds, args.cli_entry,
                    log=lambda s: print(s, flush=True), worker=Worker(memory_gb=args.memory_gb, entry=args.cli_entry))
    started = time.monotonic()
    try:
        fuzzer.run(args.minutes * 60, args.max_programs)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        fuzzer.close()
    print(summary(fuzzer, time.monotonic() - started))
    return 1 if fuzzer.records else 0


if __name__ == "__main__":
    sys.exit(main())

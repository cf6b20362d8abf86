"""The compiler's one visible pipeline: every pass from text to the frozen `ProgramSet` a back end
renders, in order, in `compile`. `--dump-ir PASS` prints what any pass produced."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Callable

from fusionc import machine
from fusionc.analysis.build import build
from fusionc.analysis.plan import explain, plan_diagram
from fusionc.analysis.program import (DiagramPrograms, Program, ProgramSet, Versions, differentiate, factorize,
                                      liveness, lower, mask)
from fusionc.analysis.prune import prune
from fusionc.analysis.recouple import recouple
from fusionc.analysis import schedule
from fusionc.analysis.segment import by_space, segment
from fusionc.errors import FusionError
from fusionc.frontend.parser import parse
from fusionc.ir.diagram import Diagram

#: Every pass, in the order `compile` runs them, and what each produces.
PASSES: tuple[tuple[str, str], ...] = (
    ("parse", "the syntax tree of the source"),
    ("check", "the type-checked diagrams: every vertex's paths, weights and normalisation"),
    ("prune", "diagrams without values and paths no output needs"),
    ("recouple", "tree terms recoupled to a cheaper shape where the function stays the same"),
    ("plan", "per diagram the contraction plan of its tree terms: shared couplings, weighted sums"),
    ("lower", "per diagram its forward program of labelled contractions"),
    ("differentiate", "per output its vector-Jacobian product, per product its own"),
    ("mask", "per statement of each product, the gradients (cotangents) it serves: a call runs only those"),
    ("factorize", "every program split into pairwise products, per target's cost model"),
    ("segment", "programs as the CPU runs them: runs of row-local statements as native kernels (a derivative "
                "program with some keeps no torch code: elsewhere autograd differentiates the forward's)"),
    ("schedule", "long native kernels as tables of statements, those of one form together"),
    ("liveness", "where each temporary of torch code is last read, and freed"),
)
PASS_NAMES = tuple(name for name, _ in PASSES)

#: The programs each back end runs, by target: the torch back end runs every program on the CPU as
#: native kernels (and torch code for what the BLAS does better), the forward as torch code anywhere
#: else, and derivatives there by differentiating the forward's torch code (torch code of their own
#: only where no statement runs natively); the Triton back end runs derivative programs as tables
#: of its one kernel, the forward as a fused kernel (a diagram with index spaces: as a table too), and
#: the forward's torch code for a third derivative.
BACKENDS = ("torch", "triton")


class _Dump:
    """Prints a pass's result, formatted, when `--dump-ir` names the pass."""

    def __init__(self, wanted: str | None, dump: Callable[[str], None]) -> None:
        if wanted is not None and wanted not in PASS_NAMES:
            raise ValueError(f"unknown pass '{wanted}'; passes are {', '.join(PASS_NAMES)}")
        self.wanted, self.dump = wanted, dump

    def __call__(self, name: str, result, pretty: Callable[[object], str]):
        if name == self.wanted:
            self.dump(pretty(result))
        return result


def compile(source: str, filename: str = "<string>", backend: str | None = None,
            dump_ir: str | None = None, dump: Callable[[str], None] = print) -> ProgramSet:
    """Run the passes in order; with no `backend`, stop after the diagrams (type checking and its
    IR passes). Raises `FusionError` located in `filename`."""
    show = _Dump(dump_ir, dump)
    syntax = show("parse", parse(source, filename), _pretty_syntax)
    diagrams = show("check", _located(build, syntax, source, filename), _pretty_diagrams)
    diagrams = show("prune", tuple(map(prune, diagrams)), _pretty_diagrams)
    diagrams = show("recouple", tuple(map(recouple, diagrams)), _pretty_diagrams)
    if backend is None:
        return ProgramSet(source, filename, None, diagrams)
    return _programs(diagrams, source, filename, backend, show)


def compile_diagrams(diagrams: tuple[Diagram, ...], source: str, filename: str, backend: str,
                     dump_ir: str | None = None, dump: Callable[[str], None] = print) -> ProgramSet:
    """The passes after the diagrams', on diagrams given as they are (tests build ones no source
    spells, such as a tree term forced into its recoupled shape)."""
    return _programs(diagrams, source, filename, backend, _Dump(dump_ir, dump))


def _programs(diagrams: tuple[Diagram, ...], source: str, filename: str, backend: str, show: _Dump) -> ProgramSet:
    """The passes from the diagrams to the program set, in order (`compile`'s second half)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; available back ends: {', '.join(BACKENDS)}")
    model = machine.current()
    plans = show("plan", tuple(map(plan_diagram, diagrams)),
                 lambda plans: "\n\n".join(map(explain, diagrams, plans)))
    forwards = show("lower", tuple(lower(d, p, model.cpu_blas) for d, p in zip(diagrams, plans)), _pretty_programs)
    derivatives = show("differentiate", tuple(map(differentiate, forwards)),
                       lambda ds: _pretty_programs(p for firsts, seconds in ds for p in (*firsts, *seconds)))
    derivatives = show("mask", tuple((tuple(map(mask, firsts)),
                                      tuple(mask(s, s.inputs[len(f.inputs):]) for f, s in zip(firsts, seconds)))
                                     for firsts, seconds in derivatives),
                       lambda ds: _pretty_programs(p for firsts, seconds in ds for p in (*firsts, *seconds)))
    programs = show("factorize", tuple(
        _factorized(DiagramPrograms(d, plan, Versions(forward), tuple(map(Versions, firsts)),
                                    tuple(map(Versions, seconds))), backend, model)
        for d, plan, forward, (firsts, seconds) in zip(diagrams, plans, forwards, derivatives)),
        _pretty_versions)
    programs = show("segment", tuple(_derivatives_native(_each(d, "native", lambda p: segment(p, model.cpu_native,
                                                                                              model.cpu_blas)))
                                     for d in programs),
                    lambda ps: _pretty_programs(v.native for d in ps for v in d.all() if v.native is not None))
    programs = show("schedule", tuple(_each(d, "native", lambda p: schedule.native(p, model.cpu_native))
                                      for d in programs), _pretty_versions)
    programs = show("liveness", tuple(_each(_each(d, "torch", liveness), "native", liveness) for d in programs),
                    _pretty_versions)
    return ProgramSet(source, filename, backend, diagrams, programs, model)


def _located(build, syntax, source: str, filename: str) -> tuple[Diagram, ...]:
    """Type checking, its errors located in the source (the syntax tree knows only spans)."""
    try:
        return build(syntax, filename)
    except FusionError as exc:
        raise exc.located(source, filename) from None


def generate(source: str, filename: str = "<string>", backend: str = "torch", dump_ir: str | None = None,
             dump: Callable[[str], None] = print) -> str:
    """The text of the generated module: `compile`, then the back end renders the program set."""
    from fusionc.backends import get_backend

    return get_backend(backend)(compile(source, filename, backend, dump_ir, dump))


def compile_source(source: str, filename: str = "<string>", dump_ir: str | None = None,
                   dump: Callable[[str], None] = print) -> tuple[Diagram, ...]:
    """The diagrams of a source (`compile` without a back end)."""
    return compile(source, filename, dump_ir=dump_ir, dump=dump).diagrams


def _factorized(d: DiagramPrograms, backend: str, model: machine.Machine) -> DiagramPrograms:
    """Each program factorized for the targets that run it (see `BACKENDS`)."""
    def targets(v: Versions) -> Versions:
        p = v.program
        if backend == "torch":
            return replace(v, torch=factorize(p, model.cpu_blas, blas=model.cpu_blas),
                           native=factorize(p, model.cpu_native, ahead=True, blas=model.cpu_blas))
        if v is d.forward and not d.diagram.spaces:  # the fused forward kernel is written from the diagram
            # and its plan; the torch code is what the last derivatives' own derivative differentiates twice
            return replace(v, torch=factorize(p, model.cpu_blas, blas=model.cpu_blas))
        # a derivative program, or any program of a diagram with index spaces, runs as a table of its
        # statements (fusionc.runtime.table_kernel), a launch per run of one space's statements
        triton = by_space(factorize(p, model.gpu_triton, blas=model.cpu_blas))
        if v is d.forward:
            return replace(v, torch=factorize(p, model.cpu_blas, blas=model.cpu_blas), triton=triton)
        return replace(v, triton=triton)

    return _map(d, targets)


def _derivatives_native(d: DiagramPrograms) -> DiagramPrograms:
    """A derivative program with native kernels keeps no torch code: where they do not run (no C
    compiler, another device) its op differentiates the forward's torch code (`rt.first_order`,
    `rt.second_order`). One without, its torch code on every device."""
    def one(v: Versions) -> Versions:
        return replace(v, torch=None) if v.native is not None and v is not d.forward else v

    return _map(d, one)


def _each(d: DiagramPrograms, target: str, run: Callable[[Program], Program | None]) -> DiagramPrograms:
    """`run` on the version of each program for `target`, where it has one."""

    def one(v: Versions) -> Versions:
        p = getattr(v, target)
        return v if p is None else replace(v, **{target: run(p)})

    return _map(d, one)


def _map(d: DiagramPrograms, fn: Callable[[Versions], Versions]) -> DiagramPrograms:
    return replace(d, forward=fn(d.forward), firsts=tuple(map(fn, d.firsts)), seconds=tuple(map(fn, d.seconds)))


def _pretty_syntax(node, depth: int = 0) -> str:
    """The syntax tree, one node per line (spans left out)."""
    pad = "  " * depth
    if is_dataclass(node):
        parts = [(f.name, getattr(node, f.name)) for f in fields(node) if f.name != "span"]
        simple = [(k, v) for k, v in parts if not (is_dataclass(v) or isinstance(v, tuple) and v)]
        nested = [(k, v) for k, v in parts if (k, v) not in simple]
        head = f"{pad}{type(node).__name__}" + "".join(f" {k}={v!r}" for k, v in simple)
        return "\n".join([head] + [f"{pad}  {k}:\n{_pretty_syntax(v, depth + 2)}" for k, v in nested])
    if isinstance(node, tuple):
        return "\n".join(_pretty_syntax(x, depth) for x in node)
    return f"{pad}{node!r}"


def _pretty_diagrams(diagrams: tuple[Diagram, ...]) -> str:
    return "\n\n".join(d.pretty() for d in diagrams)


def _pretty_programs(programs) -> str:
    return "\n\n".join(p.pretty() for p in programs)


def _pretty_versions(programs: tuple[DiagramPrograms, ...]) -> str:
    parts = []
    for d in programs:
        for v in d.all():
            for target in ("torch", "native", "triton"):
                p: Program | None = getattr(v, target)
                if p is not None:
                    parts.append(f"[{target}] {p.pretty()}")
    return "\n\n".join(parts)

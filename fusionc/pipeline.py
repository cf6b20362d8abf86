"""The compiler's one visible pipeline: parse, type-check, then the IR passes in order."""

from __future__ import annotations

from typing import Callable

from fusionc.analysis.build import build
from fusionc.analysis.prune import prune
from fusionc.analysis.recouple import recouple
from fusionc.errors import FusionError
from fusionc.frontend.parser import parse
from fusionc.ir.diagram import Diagram

#: IR passes after type checking, in order; `--dump-ir=NAME` prints the IR after any of them.
PASSES: tuple[tuple[str, Callable[[Diagram], Diagram]], ...] = (
    ("prune", prune),
    ("recouple", recouple),
)
PASS_NAMES = ("check",) + tuple(name for name, _ in PASSES)


def compile_source(source: str, filename: str = "<string>",
                   dump_ir: str | None = None, dump: Callable[[str], None] = print) -> tuple[Diagram, ...]:
    """Run the whole front and middle end; raises `FusionError` located in `filename`."""
    if dump_ir is not None and dump_ir not in PASS_NAMES:
        raise ValueError(f"unknown pass '{dump_ir}'; passes are {', '.join(PASS_NAMES)}")
    program = parse(source, filename)
    try:
        diagrams = build(program, filename)
    except FusionError as exc:
        raise exc.located(source, filename) from None
    if dump_ir == "check":
        dump("\n\n".join(d.pretty() for d in diagrams))
    for name, run in PASSES:
        diagrams = tuple(run(d) for d in diagrams)
        if dump_ir == name:
            dump("\n\n".join(d.pretty() for d in diagrams))
    return diagrams

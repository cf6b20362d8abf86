"""The `fusionc` command: check, compile and show diagrams.

Exit status: 0 on success, 2 on a syntax or type error in the source (printed as
file:line:col with a caret, never a traceback), 1 when a numerical check fails, 141 when the
reader of the output goes away first (`| head`), as a program killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fusionc import machine
from fusionc.analysis.cost import path_flops
from fusionc.analysis.plan import DiagramPlan, explain, plan_diagram
from fusionc.analysis.program import ProgramSet
from fusionc.analysis.report import explain_run
from fusionc.errors import FusionError
from fusionc.ir.diagram import Diagram, path_label
from fusionc.pipeline import PASS_NAMES, PASSES, compile
from fusionc.source import decode_source

NUMERIC_TOLERANCE = 1e-10

#: Printed once above the plans of `check --explain` (fusionc.analysis.plan.explain prints them).
EXPLAIN_LEGEND = """\
How to read the plans below:
  FLOPs per row  floating-point operations (each multiplication and each addition counts one) for
                 one row of the inputs: one atom, edge or sample of the batch
  naive plan     every fusion tree or path evaluated on its own, with its dense CG table, left to right
  chosen plan    the plan the lowering follows: each coupling built once and shared by every tree
                 and term that uses it, and the trees that end alike summed with their weights
                 (weighted sums) before their last coupling; its FLOPs count CG non-zeros only (what
                 the generated code does is under "as it runs")
  term           one term of an assignment (B.1 is the second term of B's expression), with its
                 number of fusion trees or paths, and its FLOPs per row in either plan
  pN             an intermediate of the chosen plan: a block of an input, or the result of a step;
                 pA(1) ⊗ pB(2) -> 64x1o couples a degree-1 block with a degree-2 block, channel by
                 channel, into 64 channels of the irrep 1o; the largest intermediate is the pN with
                 the most elements per row
  letters        z the row; u, v, w the channels (multiplicities) of the first operand, the second
                 and the output: mix uvw maps every (u, v) to every w, uvu pairs channel u of the
                 first with every v of the second into channel u, uuu goes channel by channel;
                 i, j, k the 2l+1 components of the first operand, the second and the output, so a
                 coupling is out[z,u,k] = sum over i, j of C[i,j,k] a[z,u,i] b[z,u,j]
  FLOPs (sparse CG)  a coupling's FLOPs counting only its CG table's non-zeros: what the planner
                 compares plans by
  as it runs     the programs the generated code runs, after every pass (--dump-ir help lists them):
                 each statement of the forward as it runs on the CPU, in torch code (a matrix or
                 broadcast product, a gather or scatter of per-index weights) or in a native kernel
                 (s0, s1, …: one C loop over rows), with the FLOPs it does as written (dense CG
                 blocks, zeros included); then every program's totals: the forward, its
                 vector-Jacobian products (__d) and their own (__d2), each with every mask bit set
  x[16:64]:zui(16,3)  elements 16 to 63 of each row of x, viewed as u = 16 channels by i = 3
                 components (z: the row)
"""


class UsageError(Exception):
    """A bad command line (unknown back end, output format, diagram): exit 2 with a message."""


def _describe(d: Diagram, plan: DiagramPlan, explained: bool) -> list[str]:
    term_cost = {t.vertex: t.planned for t in plan.terms}
    lines = [f"diagram {d.name}  (group {d.group}, convention {d.convention})"]
    for i in d.inputs:
        name = f"{i.name}[{i.space}]" if i.space else i.name
        if i.kind == "irreps":
            lines.append(f"  in  {name} : {i.irreps}  (dim {i.irreps.dim})")
        elif i.kind == "weights":
            numel = sum(t.weight_numel for t in d.vertices if t.weight_source == i.name)
            lines.append(f"  in  {name} : weights  ({numel} per row)")
        else:
            lines.append(f"  in  {name} : index({i.points or i.size})")
    for v in d.values:
        name = f"{v.name}[{v.space}]" if v.space else v.name
        summed = f"; each {d.input(v.scatter).space} row added into row {v.scatter}" if v.scatter else ""
        lines.append(f"  {'out' if v.is_output else 'let'} {name} : {v.irreps}  (dim {v.irreps.dim}{summed})")
    for t in d.vertices:
        weights = f"{t.weight_numel} weights"
        if t.weight_source:
            weights += f" from '{t.weight_source}'"
        if t.per:
            weights += f" for each of the {t.weight_sets} values of '{t.per}'"
        kind = "fusion trees" if t.is_tree else "paths"
        row = f"FLOPs per {t.space} row" if t.space else "FLOPs/row"
        lines.append(f"  {t.id} = {t.text}: {len(t.paths)} {kind}, {weights}, {term_cost[t.id]} {row}")
        for p in t.paths:
            shape = "×".join(map(str, p.weight_shape)) or "none"
            flops = "" if t.is_tree else f"   FLOPs/row {path_flops(t, p)}"
            lines.append(f"      {path_label(t, p)}   weights {shape}{flops}")
    external = sum(t.weight_numel for t in d.vertices if t.weight_source is not None)
    lines.append(f"  parameters: {d.internal_weight_numel} learnable, {external} per row from weights inputs")
    if d.spaces:
        per = {s: sum(term_cost[t.id] for t in d.vertices if t.space == s) for s in d.spaces}
        lines.append("  FLOPs: " + ", ".join(f"{flops} per {s} row" for s, flops in per.items() if flops))
    else:
        lines.append(f"  FLOPs per row: {plan.planned_flops}" + ("" if explained else " (see --explain for the plan)"))
    return lines


def _compile(path: Path, dump_ir: str | None, backend: str | None = None) -> ProgramSet:
    """The file's program set; the IR passes' (and programs' where a pass after the diagrams is
    dumped, or a `backend` is given)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FusionError(f"cannot read {path}: {exc.strerror}", filename=str(path)) from None
    source = decode_source(data, str(path))
    if backend is None and dump_ir in PASS_NAMES[PASS_NAMES.index("plan"):]:
        backend = "torch"
    return compile(source, str(path), backend, dump_ir=dump_ir)


class _PassesHelp(argparse.Action):
    """`--dump-ir help`: the passes in pipeline order, then exit."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value == "help":
            print("passes, in pipeline order (--dump-ir PASS prints what PASS produced):")
            for name, what in PASSES:
                print(f"  {name:<14}{what}")
            parser.exit(0)
        if value not in PASS_NAMES:
            parser.error(f"argument --dump-ir: unknown pass '{value}' (passes: {', '.join(PASS_NAMES)}; "
                         f"--dump-ir help describes them)")
        setattr(namespace, self.dest, value)


def _write(output: str, data: bytes) -> None:
    from fusionc.algebra.cache import atomic_write

    try:
        atomic_write(Path(output), data)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _check(args: argparse.Namespace) -> int:
    if args.explain:
        print(EXPLAIN_LEGEND)
    checked = failed = 0
    for path in args.files:
        ps = _compile(Path(path), args.dump_ir, "torch" if args.explain else None)
        source, diagrams = ps.source, ps.diagrams
        runs = {dp.diagram.name: dp for dp in ps.programs}
        checked += len(diagrams)
        print(f"{path}: {_plural(len(diagrams), 'diagram')}, well typed")
        ops = None
        if args.numeric:
            from fusionc.loader import loads
            from fusionc.testing import equivariance_error

            ops = loads(source, "torch", str(path))
        for d in diagrams:
            plan = plan_diagram(d)
            print("\n".join(_describe(d, plan, args.explain)))
            if args.explain:
                print(explain(d, plan))
                print(explain_run(runs[d.name]))
            if ops is not None:
                error = equivariance_error(getattr(ops, d.name)(), d, rotations=args.rotations)
                ok = error < NUMERIC_TOLERANCE
                failed += not ok
                what = "rotations and inversion" if d.group == "O3" else "rotations"
                print(f"  equivariance ({args.rotations} random {what}, float64): max relative error "
                      f"{error:.2e}  {'ok' if ok else f'FAILED (tolerance {NUMERIC_TOLERANCE:.0e})'}")
        print()
    verdict = "well typed"
    if args.numeric:
        verdict += f"; {failed} of {checked} FAILED the equivariance check" if failed else ", all equivariant"
    print(f"{_plural(len(args.files), 'file')}, {_plural(checked, 'diagram')}: {verdict}")
    return 1 if failed else 0


def _compile_cmd(args: argparse.Namespace) -> int:
    from fusionc.backends import get_backend

    try:
        emit = get_backend(args.backend)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.target and args.backend != "triton":
        raise UsageError("--target compiles Triton kernels: use it with --backend triton")
    if not args.target and not args.output:
        raise UsageError("say where to write the code (-o OUT.py, or -o - for stdout), or give --target")
    if args.target:
        from fusionc.backends.triton_aot import capability

        for target in args.target:
            try:
                capability(target)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    ps = _compile(Path(args.file), args.dump_ir, args.backend)
    source, diagrams = ps.source, ps.diagrams
    code = emit(ps)
    if args.output == "-":
        sys.stdout.write(code)
    elif args.output:
        _write(args.output, code.encode())
        print(f"wrote {args.output} ({', '.join(d.name for d in diagrams)})")
    for target in args.target or ():
        from fusionc.backends.triton_aot import REPORT_HEADER, compile_for, format_report
        from fusionc.loader import loads

        ops = loads(source, "triton", args.file)
        print(f"{args.file}: kernels compiled ahead of time for {target} (float32)")
        # flushed row by row: compiling a file's kernels takes minutes, and a pipe would hold them all
        print(REPORT_HEADER, flush=True)
        for report in compile_for(ops.module, ps, target, args.kernels, args.jobs or machine.cpus()):
            print(format_report(report), flush=True)
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'")
    return int(text)


def _show(args: argparse.Namespace) -> int:
    from fusionc.show import to_dot, to_svg

    suffix = Path(args.output).suffix
    if suffix not in (".svg", ".dot"):
        raise UsageError(f"cannot draw to '{args.output}': the output must end in .svg or .dot")
    diagrams = _compile(Path(args.file), None).diagrams
    if args.diagram:
        chosen = tuple(d for d in diagrams if d.name == args.diagram)
        if not chosen:
            raise UsageError(f"no diagram '{args.diagram}' in {args.file}; it has "
                             f"{', '.join(d.name for d in diagrams)}")
        diagrams = chosen
    text = to_svg(diagrams) if suffix == ".svg" else to_dot(diagrams)
    _write(args.output, text.encode())
    print(f"wrote {args.output}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from fusionc.nn.train import main as train_main

    return train_main([args.config] + (["--resume"] if args.resume else []))


def _parser() -> argparse.ArgumentParser:
    from fusionc.version import __version__

    parser = argparse.ArgumentParser(prog="fusionc", description="Compile O(3)-equivariant fusion diagrams.")
    parser.add_argument("--version", action="version", version=f"fusionc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="type-check diagrams and report paths, parameters and FLOPs")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--numeric", action="store_true",
                       help="also test equivariance numerically (float64, random rotations and inversion)")
    check.add_argument("--explain", action="store_true",
                       help="print each diagram's contraction plan: FLOPs per row, naive and chosen")
    check.add_argument("--rotations", type=int, default=3, help="random rotations for --numeric (default 3)")
    check.add_argument("--dump-ir", action=_PassesHelp, metavar="PASS",
                       help=f"print what a pass produced ({', '.join(PASS_NAMES)}); help: describe them")
    check.set_defaults(run=_check)
    comp = sub.add_parser("compile", help="generate code for a back end")
    comp.add_argument("file", metavar="FILE")
    comp.add_argument("-o", "--output", help="output .py file, or - for stdout")
    comp.add_argument("--backend", default="torch", help="back end: torch (default) or triton")
    comp.add_argument("--target", action="append", metavar="sm_NN",
                      help="with --backend triton: compile every kernel for this GPU (sm_80, sm_90; repeatable) "
                           "and report registers, shared and local memory, stack frame (spills), FLOPs and bytes per row")
    comp.add_argument("--kernels", choices=("all", "forward", "derivatives"), default="all",
                      help="with --target: which kernels to compile: all (default), the fused forward kernels, "
                           "or the derivative programs' kernels")
    comp.add_argument("-j", "--jobs", type=_positive, default=None, metavar="N",
                      help="with --target: compile N kernels at once, a process each (default: one per CPU)")
    comp.add_argument("--dump-ir", action=_PassesHelp, metavar="PASS",
                      help=f"print what a pass produced ({', '.join(PASS_NAMES)}); help: describe them")
    comp.set_defaults(run=_compile_cmd)
    show = sub.add_parser("show", help="draw diagrams as SVG or Graphviz DOT")
    show.add_argument("file", metavar="FILE")
    show.add_argument("-o", "--output", required=True, help="OUT.svg or OUT.dot")
    show.add_argument("--diagram", help="draw only this diagram")
    show.set_defaults(run=_show)
    train = sub.add_parser("train", help="train a fusionc.nn potential from a TOML config (python -m fusionc.nn.train)")
    train.add_argument("config", metavar="CONFIG.toml")
    train.add_argument("--resume", action="store_true", help="go on from the run's checkpoint.pt")
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except FusionError as exc:
        print(exc, file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"fusionc: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout goes nowhere from now on, so that flushing it at exit raises nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

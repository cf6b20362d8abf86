"""The torch back end: emits a readable, deterministic Python module, one nn.Module per diagram.

Rows are in the `mul_ir` layout; every path is one einsum over (rows z, channels u/v/w,
components i/j/k) with its CG table as a buffer and its weights as a view of a flat vector laid
out as e3nn lays it out.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from fusionc.analysis.cost import path_equation
from fusionc.analysis.plan import Contribution, Couple, DiagramPlan, Leaf, WeightedSum, plan_diagram
from fusionc.ir.diagram import CouplingPath, CouplingVertex, Diagram, path_label
from fusionc.version import __version__


class CodeWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str = "") -> None:
        self.lines.append(("    " * self.depth + line) if line else "")

    def indent(self) -> None:
        self.depth += 1

    def dedent(self) -> None:
        self.depth -= 1


def _cg_name(t: CouplingVertex, p: CouplingPath) -> str:
    ls = [irreps[b].ir.l for irreps, b in zip(t.irreps_in, p.operand_blocks)] + [t.irreps_out[p.out_block].ir.l]
    return "cg_" + "_".join(map(str, ls))


def _cg_tables(d: Diagram, plan: DiagramPlan) -> list[tuple[int, int, int]]:
    tables = {(s.la, s.lb, s.k.l) for s in plan.steps if isinstance(s, Couple)}
    for t in d.vertices:
        if len(t.operands) == 2 and not t.is_tree:
            for p in t.paths:
                tables.add(tuple(int(x) for x in _cg_name(t, p).split("_")[1:]))
    return sorted(tables)


def _weight_inputs(d: Diagram) -> dict[str, CouplingVertex]:
    return {t.weight_source: t for t in d.vertices if t.weight_source is not None}


def _emit_class(w: CodeWriter, d: Diagram, plan: DiagramPlan) -> None:
    irreps_inputs = [i for i in d.inputs if i.kind == "irreps"]
    weight_inputs = _weight_inputs(d)
    outputs = d.outputs
    w(f"class {d.name}(rt.FusionModule):")
    w.indent()
    w('"""' + "; ".join(f"{v.name} = {' + '.join(t.text for t in v.terms)}" for v in outputs))
    w()
    for i in d.inputs:
        kind = {"irreps": str(i.irreps), "index": f"index({i.size})"}.get(
            i.kind, f"weights ({weight_inputs[i.name].weight_numel} per row)" if i.kind == "weights" else "")
        w(f"in  {i.name} : {kind}")
    for v in d.values:
        w(f"{'out' if v.is_output else 'let'} {v.name} : {v.irreps}")
    w('"""')
    w()
    w(f"irreps_in = {tuple(str(i.irreps) for i in irreps_inputs)!r}")
    w(f"irreps_out = {tuple(str(v.irreps) for v in outputs)!r}")
    w(f"weight_numel = {d.internal_weight_numel}")
    w(f"input_weight_numel = { {k: t.weight_numel for k, t in weight_inputs.items()}!r}")
    w(f"cg_tables = {tuple(_cg_tables(d, plan))!r}")
    recoupled = [t for t in d.vertices if t.recoupled is not None and t.has_weights]
    if recoupled:
        w("recouplings = {  # weights of the canonical trees -> weights of the recoupled shape (exact 6j)")
        w.indent()
        for t in recoupled:
            shape = (len(t.paths), len(t.recoupled.paths))
            w(f'"{_recoupling_name(t)}": ({shape!r}, (')
            w.indent()
            entries = [f"({i}, {j}, {v!r})," for i, j, v in t.recoupled.matrix]
            for start in range(0, len(entries), 4):
                w(" ".join(entries[start:start + 4]))
            w.dedent()
            w(")),")
        w.dedent()
        w("}")
    w()
    w("def __init__(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:")
    w.indent()
    w("super().__init__()")
    w("dtype = dtype or torch.get_default_dtype()")
    if d.internal_weight_numel:
        w("# internal weights: per term (and per index value, for 'per'), one block per path in path order;")
        w("# initialised as e3nn does")
        w(f"self.weight = torch.nn.Parameter(torch.randn({d.internal_weight_numel}, dtype=dtype, device=device))")
    else:
        w('self.register_buffer("weight", torch.zeros(0, dtype=dtype, device=device), persistent=False)')
    w("self._register_constants(dtype, device)")
    w.dedent()
    w()
    args = ", ".join(f"{i.name}: torch.Tensor" for i in d.inputs)
    ret = "torch.Tensor" if len(outputs) == 1 else f"tuple[{', '.join(['torch.Tensor'] * len(outputs))}]"
    w(f"def forward(self, {args}) -> {ret}:")
    w.indent()
    specs = ", ".join(f'"{i.name}": ({i.name}, {i.irreps.dim})' for i in irreps_inputs)
    wspecs = ", ".join(f'"{k}": ({k}, {t.weight_numel})' for k, t in weight_inputs.items())
    w(f"batch = rt.batch_shape(self.weight, {{{specs}}}, {{{wspecs}}})")
    rows = []
    for i in d.inputs:
        if i.kind == "irreps":
            rows.append(f"rt.rows({i.name}, batch, {i.irreps.dim})")
        elif i.kind == "weights":
            rows.append(f"rt.weight_rows({i.name}, batch, {weight_inputs[i.name].weight_numel})")
        else:
            rows.append(f'rt.index_rows({i.name}, batch, "{i.name}")')
    w("outputs = _ops.{}([".format(d.name))
    w.indent()
    for r in rows:
        w(f"{r},")
    w.dedent()
    w("], self.weight, self.constants())")
    w(f"return {', '.join(f'outputs[{k}].reshape(*batch, {v.irreps.dim})' for k, v in enumerate(outputs))}")
    w.dedent()
    w.dedent()


def _emit_rows_function(w: CodeWriter, d: Diagram, plan: DiagramPlan) -> None:
    """The diagram on (n, dim) rows, as a plain function of tensors: the body of its custom op."""
    constants = [f"cg_{a}_{b}_{c}" for a, b, c in _cg_tables(d, plan)]
    constants += [_recoupling_name(t) for t in d.vertices if t.recoupled is not None and t.has_weights]
    names = [i.name for i in d.inputs] + ["weight"] + constants
    w(f"def _{d.name}(")
    w.indent()
    for start in range(0, len(names), 4):
        w(" ".join(f"{name}: torch.Tensor," for name in names[start:start + 4]))
    w.dedent()
    w(") -> list[torch.Tensor]:")
    w.indent()
    shapes = ", ".join(f"{i.name} {_row_shape(d, i)}" for i in d.inputs)
    w(f'"""{d.name} on rows: {shapes} -> {", ".join(f"{v.name} (n, {v.irreps.dim})" for v in d.outputs)}."""')
    first = next(i for i in d.inputs if i.kind == "irreps")
    w(f"n = {first.name}.shape[0]")
    offsets = {}
    offset = 0
    for t in d.vertices:
        offsets[t.id] = offset
        offset += t.parameter_numel
    for v in d.values:
        _emit_value(w, d, v, offsets, plan)
    w(f"return [{', '.join(v.name for v in d.outputs)}]")
    w.dedent()


def _row_shape(d: Diagram, i) -> str:
    if i.kind == "irreps":
        return f"(n, {i.irreps.dim})"
    if i.kind == "weights":
        return f"(n, {_weight_inputs(d)[i.name].weight_numel})"
    return "(n,)"


def _block(name: str, irreps, index: int) -> str:
    start, stop = irreps.slices()[index]
    b = irreps[index]
    return f"{name}[:, {start}:{stop}].reshape(n, {b.mul}, {b.ir.dim})"


def _recoupling_name(t: CouplingVertex) -> str:
    return "recouple_" + t.id.replace(".", "_")


def _weights(w: CodeWriter, t: CouplingVertex, offset: int) -> str | None:
    """Bind the term's weights to a local: a (numel,) vector, or (n, numel) rows for by/per;
    for a recoupled term, mapped onto the trees of its new shape."""
    if not t.has_weights:
        return None
    name = "w_" + t.id.replace(".", "_")
    if t.weight_source is not None:
        w(f"{name} = {t.weight_source}")
    elif t.per is not None:
        sets = f"weight[{offset}:{offset + t.parameter_numel}].view({t.weight_sets}, {t.weight_numel})"
        w(f"{name} = {sets}[{t.per}]  # one weight set per row, chosen by {t.per}")
    else:
        w(f"{name} = weight[{offset}:{offset + t.weight_numel}]")
    if t.recoupled is not None:
        mul = t.paths[0].weight_shape[0]
        w(f'{name} = torch.einsum("...pu,pq->...qu", {name}.unflatten(-1, ({len(t.paths)}, {mul})), '
          f"{_recoupling_name(t)}).flatten(-2)  # recoupled: same function, cheaper shape")
    return name


def _scaled(node: str, weights: str | None, start: int | None, mul: int, coeff: float) -> str:
    if start is not None and weights is not None:
        return f"{node} * ({weights}[..., {start}:{start + mul}, None] * {coeff!r})"
    return node if coeff == 1.0 else f"{node} * {coeff!r}"


def _emit_tree_term(w: CodeWriter, t: CouplingVertex, weights: str | None, plan: DiagramPlan,
                    contributions: dict[int, list[str]]) -> None:
    for step in plan.vertex_steps[t.id]:
        if isinstance(step, Leaf):
            irreps = next(irr for op, irr in zip(t.operands, t.irreps_in) if op == step.operand)
            w(f"{step.name} = {_block(step.operand, irreps, step.block)}")
        elif isinstance(step, Couple):
            w(f'{step.name} = torch.einsum("zui,zuj,ijk->zuk", {step.a}, {step.b}, '
              f'cg_{step.la}_{step.lb}_{step.k.l})  # -> {step.mul}x{step.k}')
        elif isinstance(step, WeightedSum):
            parts = [_scaled(node, weights, start, step.mul, c) for node, start, c in step.parts]
            w(f"{step.name} = {' + '.join(parts)}")
        elif isinstance(step, Contribution):
            contributions[step.block].append(_scaled(step.node, weights, step.start, step.mul, step.coeff))


def _emit_value(w: CodeWriter, d: Diagram, v, offsets: dict[str, int], plan: DiagramPlan) -> None:
    w()
    w(f"# {'out' if v.is_output else 'let'} {v.name} : {v.irreps}")
    contributions: dict[int, list[str]] = {i: [] for i in range(len(v.irreps))}
    counter = 0
    for t in v.terms:
        w(f"# {t.id}: {t.text}")
        weights = _weights(w, t, offsets[t.id])
        if t.is_tree:
            w(f"# {len(t.paths)} fusion trees; shared couplings are reused from earlier terms")
            _emit_tree_term(w, t, weights, plan, contributions)
            continue
        for p in t.paths:
            operands = [_block(op, irreps, b) for op, irreps, b in zip(t.operands, t.irreps_in, p.operand_blocks)]
            if len(t.operands) == 2:
                operands.append(_cg_name(t, p))
            if p.weight_shape:
                shape = ", ".join(map(str, p.weight_shape))
                start = p.weight_offset
                if t.per_row_weights:
                    operands.append(f"{weights}[:, {start}:{start + p.weight_numel}].view(n, {shape})")
                else:
                    operands.append(f"{weights}[{start}:{start + p.weight_numel}].view({shape})")
            equation = path_equation(t.mode, len(t.operands), t.per_row_weights)
            name = f"{v.name}_{counter}"
            counter += 1
            w(f"# {path_label(t, p)}")
            scale = "" if p.normalization == 1.0 else f" * {p.normalization!r}"
            if equation == "zui->zui":
                w(f"{name} = {operands[0]}{scale}")
            else:
                w(f'{name} = torch.einsum("{equation}", {", ".join(operands)}){scale}')
            contributions[t.placement[p.out_block]].append(name)
    parts = []
    for index, names in contributions.items():
        block = v.irreps[index]
        if names:
            parts.append(f"({' + '.join(names)}).reshape(n, {block.dim})")
        else:  # pruned: nothing downstream reads this block
            parts.append(f"weight.new_zeros(n, {block.dim})")
    if len(parts) == 1:
        w(f"{v.name} = {parts[0]}")
    else:
        w(f"{v.name} = torch.cat([")
        w.indent()
        for part in parts:
            w(f"{part},")
        w.dedent()
        w("], dim=1)")


Lowering = Callable[[Diagram, DiagramPlan], tuple[list[str], str]]


def emit_module(diagrams: tuple[Diagram, ...], source: str, filename: str, backend: str,
                imports: tuple[str, ...] = (), lowering: Lowering | None = None) -> str:
    """A generated module: per diagram a torch row function, registered as a custom op, and an
    nn.Module calling it. With `lowering` (another back end), the op runs the code it returns
    (lines, and the function to call) and the torch row function serves as its derivative."""
    w = CodeWriter()
    w(f"# Generated by fusionc {__version__} ({backend} back end) from {filename} — do not edit.")
    w(f"# Source sha256: {hashlib.sha256(source.encode()).hexdigest()}")
    w(f'"""fusionc {backend} ops compiled from {filename}: {", ".join(d.name for d in diagrams)}."""')
    w()
    w("from __future__ import annotations")
    w()
    w("import torch")
    for line in imports:
        w(line)
    w()
    w("from fusionc.runtime import torch_ops as rt")
    w()
    w(f"__all__ = {[d.name for d in diagrams]!r}")
    plans = {d.name: plan_diagram(d) for d in diagrams}
    functions = []
    for d in diagrams:
        f = CodeWriter()
        _emit_rows_function(f, d, plans[d.name])
        lowered = lowering(d, plans[d.name]) if lowering else ([], None)
        functions.append((d, f.lines, lowered))
    # ops are named by a hash of their code: the same name always means the same computation
    code = "\n".join(line for _, lines, (extra, _) in functions for line in lines + extra)
    w()
    w(f'_ops = rt.OpNamespace("fusionc_{hashlib.sha256(code.encode()).hexdigest()[:16]}")')
    for d, lines, (extra, runner) in functions:
        for block in (lines, extra):
            if block:
                w()
                w()
                w.lines.extend(block)
        w()
        w()
        outputs = ", ".join(str(v.irreps.dim) for v in d.outputs)
        ranges = {k: (i.name, i.size) for k, i in enumerate(d.inputs) if i.kind == "index"}
        run = f", derivative_of=_{d.name}" if runner else ""
        w(f"_ops.register(\"{d.name}\", {runner or '_' + d.name}, outputs=({outputs},), index_ranges={ranges!r}{run})")
    for d in diagrams:
        w()
        w()
        _emit_class(w, d, plans[d.name])
    return "\n".join(w.lines) + "\n"


def emit(diagrams: tuple[Diagram, ...], source: str, filename: str) -> str:
    """The generated torch module for `diagrams`; same input, same bytes."""
    return emit_module(diagrams, source, filename, "torch")

"""Type checking: the syntax tree becomes typed IR diagrams, or a located error says why not."""

from __future__ import annotations

import builtins
import difflib
import keyword
import re

from fusionc.analysis.paths import (channel_mismatch, coupling_paths, linear_paths, normalise_coupling,
                                    tree_paths, why_not)
from fusionc.analysis.trees import LabelTooLarge, TooManyTrees, canonical_order, symmetric_trees
from fusionc.errors import FusionError, Span
from fusionc.frontend import ast
from fusionc.ir.diagram import MODES, CouplingVertex, Diagram, Input, Value
from fusionc.ir.irreps import Irreps
from fusionc.limits import LIMITS, limit, over

#: Names the generated modules use themselves (the module's weight, the row count, imported modules).
_GENERATED = frozenset({"weight", "n", "self", "torch", "rt", "triton", "tl"})
_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | _GENERATED
#: A diagram is a class at the top of its generated module and an attribute of what `fusionc.load`
#: returns: it may not hide a builtin the module calls (`super`), the module's op namespace
#: (`_ops`, beside the forward function `_<diagram>`) and native kernels (`_native`), or the
#: loaded object's own attributes.
DIAGRAM_RESERVED = frozenset(dir(builtins)) | {"ops", "native", "module", "diagrams", "path"}

GROUPS = ("O3", "SO3")
CONVENTIONS = ("e3nn",)
_LINEAR_MODES = ("uvw", "uuu", "none")
_TREE_MODES = ("uuu", "none")


def check_name(name: ast.Name) -> None:
    """A located error for a name the generated code cannot take: it would shadow a name of its
    own, or (containing '__', the separator of every name it derives) equal a derived one."""
    text = name.text
    if text in _RESERVED or text.startswith("_") or "__" in text or re.fullmatch(r"cg_\d+_\d+_\d+|recouple_\w*", text):
        raise FusionError(f"'{text}' is reserved: the generated code uses this name (Python keywords, "
                          f"{', '.join(sorted(_GENERATED))}, names starting with '_' or containing '__', cg_L_L_L, "
                          f"recouple_…)", name.span)


class _DiagramChecker:
    def __init__(self, d: ast.DiagramDef, group: str, convention: str, filename: str) -> None:
        self.d, self.group, self.convention, self.filename = d, group, convention, filename
        self.inputs: dict[str, Input] = {}
        self.outputs: dict[str, ast.OutDecl] = {}
        self.values: dict[str, Value] = {}
        self.decl_span: dict[str, Span] = {}
        self.used: set[str] = set()
        self.weights_user: dict[str, Span] = {}
        self.lets: set[str] = set()
        self.spaces: dict[str, Span] = {}  # index spaces, where first named
        self.paths = 0  # paths and fusion trees of the terms checked so far
        self.weights = 0  # their learnable weights

    def irreps(self, text: ast.IrrepsText) -> Irreps:
        return Irreps.parse(text.text, so3=self.group == "SO3", span=text.span)

    def declare(self, name: ast.Name) -> None:
        check_name(name)
        if name.text in self.decl_span:
            first = self.decl_span[name.text]
            raise FusionError(f"'{name.text}' is already declared at line {first.line}", name.span)
        self.decl_span[name.text] = name.span

    def check(self) -> Diagram:
        decls = [s for s in self.d.statements if isinstance(s, (ast.InDecl, ast.OutDecl))]
        spaced = next((s for s in decls if s.space is not None), None)
        for stmt in decls:  # a diagram's rows are one implicit space, or every declaration names its own
            if spaced is not None and stmt.space is None:
                raise FusionError(f"'{stmt.name.text}' needs an index space ({stmt.name.text}[SPACE] : …): in a diagram "
                                  f"with index spaces ({spaced.name.text}[{spaced.space.text}] at line "
                                  f"{spaced.space.span.line}) every input and output names the space of its rows",
                                  stmt.name.span)
            if stmt.space is not None:
                self.spaces.setdefault(stmt.space.text, stmt.space.span)
        for stmt in self.d.statements:
            if isinstance(stmt, ast.InDecl):
                self.declare(stmt.name)
                self.inputs[stmt.name.text] = self.input(stmt)
            elif isinstance(stmt, ast.OutDecl):
                self.declare(stmt.name)
                self.outputs[stmt.name.text] = stmt
            elif isinstance(stmt, ast.LetStmt):
                self.declare(stmt.name)
                self.lets.add(stmt.name.text)
        if not self.outputs:
            raise FusionError(f"diagram '{self.d.name.text}' has no outputs: declare one with 'out NAME : IRREPS'",
                              self.d.name.span)
        for space, span in self.spaces.items():  # a call knows a space's rows from an input in it
            if not any(i.space == space for i in self.inputs.values()):
                raise FusionError(f"no input has rows in space '{space}', so a call cannot know how many it has: "
                                  f"declare an input in it (in x[{space}] : …)", span)
        order: list[Value] = []
        for stmt in self.d.statements:
            if isinstance(stmt, ast.LetStmt):
                order.append(self.let(stmt))
            elif isinstance(stmt, ast.AssignStmt):
                order.append(self.assign(stmt))
        for name, decl in self.outputs.items():
            if name not in self.values:
                raise FusionError(f"output '{name}' is never assigned", decl.name.span)
        for name in list(self.inputs) + [v.name for v in order if not v.is_output]:
            if name not in self.used:
                kind = "input" if name in self.inputs else "let"
                raise FusionError(f"{kind} '{name}' is never used", self.decl_span[name])
        return Diagram(self.d.name.text, self.group, self.convention, tuple(self.inputs.values()),
                       tuple(order), self.filename)

    def input(self, stmt: ast.InDecl) -> Input:
        t, space = stmt.type, stmt.space.text if stmt.space else None
        if isinstance(t, ast.WeightsType):
            return Input(stmt.name.text, "weights", span=stmt.span, space=space)
        if isinstance(t, ast.IndexType) and t.space is not None:
            points = t.space.text
            if space is None:
                raise FusionError(f"index({points}) points at rows of an index space; declare the diagram's inputs "
                                  f"and outputs with theirs, as in {stmt.name.text}[edge] : index({points}) and "
                                  f"h[{points}]", t.space.span)
            if points not in self.spaces:
                close = difflib.get_close_matches(points, list(self.spaces), n=1)
                raise FusionError(f"no input or output has rows in space '{points}'" +
                                  (f"; did you mean '{close[0]}'?" if close else ""), t.space.span)
            return Input(stmt.name.text, "index", span=stmt.span, space=space, points=points)
        if isinstance(t, ast.IndexType):
            if t.size < 1:
                raise FusionError("an index input needs at least one value: index(K) with K ≥ 1", t.span)
            return Input(stmt.name.text, "index", size=t.size, span=stmt.span, space=space)
        return Input(stmt.name.text, "irreps", irreps=self.irreps(t), span=stmt.span, space=space)

    def space_of(self, name: str) -> str | None:
        """The index space of an input's or a value's rows."""
        return self.inputs[name].space if name in self.inputs else self.values[name].space

    def read(self, op: ast.Operand) -> tuple[Irreps, str | None]:
        """The irreps of an operand and the space of the rows the term reads it in: its own, or
        for `x[i]` the space of i's rows, where i points into x's space."""
        irreps = self.operand(op.name)
        space = self.space_of(op.name.text)
        if op.index is None:
            return irreps, space
        index = self.index_input(op.index, f"'{op.name.text}[{op.index.text}]' reads")
        if index.points != space:
            where = f"space '{space}'" if space else "no index space"
            raise FusionError(f"'{index.name}' points at rows of '{index.points}', but '{op.name.text}' has its rows in "
                              f"{where}", op.index.span)
        return irreps, index.space

    def index_input(self, name: ast.Name, what: str) -> Input:
        """The index input `name` that picks rows of another space (a gather or a scatter); marks it used."""
        if name.text not in self.inputs:
            raise FusionError(self.unknown(name.text), name.span)
        i = self.inputs[name.text]
        if i.kind != "index" or i.points is None:
            kind = f"index({i.size}), a selector of weight sets ('per {i.name}')" if i.kind == "index" else \
                f"a{'n irreps' if i.kind == 'irreps' else ' weights'} input"
            raise FusionError(f"{what} the rows an index input picks (declared as in src[edge] : index(node)), "
                              f"but '{name.text}' is {kind}", name.span)
        self.used.add(name.text)
        return i

    def operand(self, name: ast.Name) -> Irreps:
        """The irreps of a value read by a term; marks it used."""
        text = name.text
        if text in self.inputs:
            i = self.inputs[text]
            if i.kind != "irreps":
                raise FusionError(f"'{text}' is {'a weights' if i.kind == 'weights' else 'an index'} input: it can only follow "
                                  f"'{'by' if i.kind == 'weights' else 'per'}'", name.span)
            self.used.add(text)
            return i.irreps
        if text in self.outputs:
            raise FusionError(f"output '{text}' cannot be read inside the diagram; compute it with a "
                              f"'let' and read that", name.span)
        if text in self.values:
            self.used.add(text)
            return self.values[text].irreps
        if text in self.lets:
            raise FusionError(f"'{text}' is used before it is defined (line {self.decl_span[text].line})",
                              name.span)
        raise FusionError(self.unknown(text), name.span)

    def paths_left(self) -> int:
        return max(limit("paths") - self.paths, 0)

    def bound_combinations(self, irreps: tuple[Irreps, ...], span: Span) -> None:
        """Before enumerating a term's paths or trees, each combination of its blocks: at most ten
        for each path the diagram may still have."""
        combinations = 1
        for i in irreps:
            combinations *= len(i)
        if combinations > 10 * self.paths_left():
            raise FusionError(f"the blocks of this term combine in {combinations:,} ways, over fusionc's limit of "
                              f"10 per path still allowed ({self.paths_left():,}; set "
                              f"{LIMITS['paths'].variable} to raise it)", span)

    def unknown(self, text: str) -> str:
        """'unknown name', with the closest declared name as a suggestion."""
        close = difflib.get_close_matches(text, list(self.decl_span), n=1)
        return f"unknown name '{text}'" + (f"; did you mean '{close[0]}'?" if close else "")

    def let(self, stmt: ast.LetStmt) -> Value:
        irreps = self.let_irreps(stmt.expr)
        terms = self.terms(stmt.name.text, irreps, stmt.expr)
        space, scatter = self.rows(stmt, terms, None)
        value = Value(stmt.name.text, irreps, terms, False, stmt.span, space, scatter)
        self.values[value.name] = value
        return value

    def rows(self, stmt: ast.LetStmt | ast.AssignStmt, terms: tuple[CouplingVertex, ...],
             declared: ast.Name | None) -> tuple[str | None, str | None]:
        """The space of a value's rows and the index its terms' rows are summed by (`y[i] += …`),
        for an output in its `declared` space: its terms' rows are its own, or those of the
        index, which points into its space."""
        name, space = stmt.name.text, terms[0].space
        for t, term in zip(terms[1:], stmt.expr.terms[1:]):
            if t.space != space:
                raise FusionError(f"this term's rows are in {_space(t.space)}, the first term's in {_space(space)}: "
                                  f"the terms of a sum share their rows", term.span)
        if stmt.index is None:
            if stmt.accumulate:
                raise FusionError(f"'+=' sums rows into the rows an index picks: write {name}[i] += … with an index "
                                  f"input i, or {name} = …", stmt.name.span)
            if declared is not None and space != declared.text:
                raise FusionError(f"'{name}' has its rows in '{declared.text}' but this sum's are in {_space(space)}: "
                                  f"add them into it by an index, as in {name}[dst] += …", stmt.expr.span)
            return space, None
        index = self.index_input(stmt.index, f"'{name}[{stmt.index.text}]' sums into")
        if not stmt.accumulate:
            raise FusionError(f"rows that land on the same row of '{name}' are summed: write {name}[{stmt.index.text}] "
                              f"+= …", stmt.index.span)
        if space != index.space:
            raise FusionError(f"'{index.name}' has its rows in '{index.space}', but this sum's are in {_space(space)}",
                              stmt.index.span)
        if declared is not None and index.points != declared.text:
            raise FusionError(f"'{index.name}' points at rows of '{index.points}', but '{name}' has its rows in "
                              f"'{declared.text}'", stmt.index.span)
        return index.points, index.name

    def let_irreps(self, expr: ast.Expr) -> Irreps:
        for term in expr.terms:
            if isinstance(term, ast.FuseTerm) and term.target is not None:
                return self.irreps(term.target)
        first = expr.terms[0]
        if isinstance(first, ast.NameTerm):
            return self.operand(first.operand.name)
        raise FusionError("a let needs '-> IRREPS' on its fuse term to say what it produces", first.span)

    def assign(self, stmt: ast.AssignStmt) -> Value:
        name = stmt.name.text
        if name not in self.outputs:
            if name in self.inputs:
                raise FusionError(f"'{name}' is an input and cannot be assigned", stmt.name.span)
            if name in self.lets:
                raise FusionError(f"'{name}' is a let, defined once at line {self.decl_span[name].line}; "
                                  f"it cannot be assigned again", stmt.name.span)
            raise FusionError(f"'{name}' is not a declared output (declare 'out {name} : IRREPS', or "
                              f"use 'let')", stmt.name.span)
        if name in self.values:
            first = self.values[name].span
            raise FusionError(f"output '{name}' is assigned twice (first at line {first.line})", stmt.name.span)
        irreps = self.irreps(self.outputs[name].irreps)
        terms = self.terms(name, irreps, stmt.expr)
        space, scatter = self.rows(stmt, terms, self.outputs[name].space)
        value = Value(name, irreps, terms, True, stmt.span, space, scatter)
        self.values[name] = value
        return value

    def terms(self, dest: str, irreps: Irreps, expr: ast.Expr) -> tuple[CouplingVertex, ...]:
        vertices = []
        for k, t in enumerate(expr.terms):
            vertices.append(self.term(f"{dest}.{k}", dest, irreps, t))
            self.paths += len(vertices[-1].paths)
            self.weights += vertices[-1].parameter_numel
            if (problem := over("paths", self.paths) or over("weights", self.weights)) is not None:
                raise FusionError(problem, t.span)
        produced = {b for v in vertices for p in v.paths for b in [v.placement[p.out_block]]}
        for block_index, block in enumerate(irreps):
            if block_index not in produced:
                raise FusionError(self.unproduced(dest, block_index, irreps, vertices), expr.span)
        for v, t in zip(vertices, expr.terms):
            if not v.paths:
                raise FusionError(f"'{v.text}' gives no block of '{dest}' ({irreps}): it has no path", t.span)
        return tuple(vertices)

    def unproduced(self, dest: str, block_index: int, irreps: Irreps, vertices) -> str:
        block = irreps[block_index]
        head = f"no term produces block {block} of '{dest}'"
        for v in vertices:
            if block_index not in v.placement:
                continue
            if v.is_tree:
                return f"{head}: no fusion tree of {', '.join(v.operands)} reaches it"
            if len(v.irreps_in) == 2:
                reasons = [why_not(a.ir, b.ir, block.ir) for a in v.irreps_in[0] for b in v.irreps_in[1]]
                parity = [r for r in reasons if "parity" in r]
                return f"{head}: {(parity or reasons)[0]}"
            return f"{head}: {v.operands[0]} has no {block.ir} block"
        return f"{head}: no term targets it"

    def mix(self, mix: ast.Mix | None, linear: bool) -> tuple[str, str | None, str | None, int]:
        """The mode, the weights input (`by`), the index input (`per`) and its size."""
        if mix is None:
            return "none", None, None, 1
        mode = mix.mode.text
        if mode not in MODES:
            raise FusionError(f"unknown mix mode '{mode}'; expected one of {', '.join(MODES)}", mix.mode.span)
        if linear and mode not in _LINEAR_MODES:
            raise FusionError(f"mix {mode} needs two operands; a linear map takes "
                              f"{', '.join(_LINEAR_MODES)}", mix.mode.span)
        per, sets = None, 1
        if mix.per is not None:
            if mode == "none":
                raise FusionError("mix none has no weights to select 'per' index", mix.per.span)
            if mix.by is not None:
                raise FusionError("weights come either 'by' an input or 'per' index from the module's own "
                                  "parameters, not both", mix.per.span)
            per = mix.per.text
            if per not in self.inputs:
                raise FusionError(self.unknown(per), mix.per.span)
            if self.inputs[per].kind != "index":
                raise FusionError(f"'per {per}' needs an index input (in {per} : index(K)), but '{per}' is "
                                  f"declared as {self.inputs[per].kind}", mix.per.span)
            if self.inputs[per].points is not None:
                raise FusionError(f"'per {per}' selects one of K weight sets by an index(K); '{per}' points at rows of "
                                  f"'{self.inputs[per].points}' (read rows by it, as in h[{per}])", mix.per.span)
            self.used.add(per)
            sets = self.inputs[per].size
        if mix.by is None:
            return mode, None, per, sets
        by = mix.by
        if mode == "none":
            raise FusionError("mix none has no weights to take 'by' an input", by.span)
        if by.text not in self.inputs:
            raise FusionError(self.unknown(by.text), by.span)
        if self.inputs[by.text].kind != "weights":
            raise FusionError(f"'by {by.text}' needs a weights input, but '{by.text}' is declared as "
                              f"{self.inputs[by.text].kind}", by.span)
        if by.text in self.weights_user:
            first = self.weights_user[by.text]
            raise FusionError(f"weights input '{by.text}' already feeds the term at line {first.line}, "
                              f"column {first.column}; each weights input feeds one term", by.span)
        self.weights_user[by.text] = by.span
        self.used.add(by.text)
        return mode, by.text, None, 1

    def placement(self, target: Irreps, dest_name: str, dest: Irreps, span: Span) -> tuple[int, ...]:
        taken: set[int] = set()
        out = []
        for block in target:
            match = next((i for i, b in enumerate(dest) if b == block and i not in taken), None)
            if match is None:
                raise FusionError(f"this term gives {block}, which '{dest_name}' ({dest}) does not have", span)
            taken.add(match)
            out.append(match)
        return tuple(out)

    def term(self, vid: str, dest_name: str, dest: Irreps, term: ast.Term) -> CouplingVertex:
        text = _term_text(term)
        if isinstance(term, ast.NameTerm):
            x, space = self.read(term.operand)
            mode, source, per, sets = self.mix(term.mix, linear=True)
            space = self.term_space([(term.operand, space)], term.mix)
            paths = linear_paths(mode, x, dest)
            for p in paths:
                a, c = x[p.operand_blocks[0]], dest[p.out_block]
                if mode in ("uuu", "none") and a.mul != c.mul:
                    how = f"mix {mode} maps" if term.mix else "a term without 'mix' maps"
                    raise FusionError(f"{how} channels one to one: {a} cannot give {c}; 'mix uvw' mixes "
                                      f"channels", term.mix.mode.span if term.mix else term.span)
            gathers = (term.operand.index.text if term.operand.index else None,)
            return CouplingVertex(vid, (term.operand.name.text,), (x,), dest, mode, source, paths,
                                  tuple(range(len(dest))), per, sets, text=text, span=term.span, gathers=gathers,
                                  space=space)
        if len(term.operands) < 2:
            raise FusionError("fuse needs two operands; for a linear map write 'NAME mix MODE'", term.span)
        reads = {_key(n): self.read(n) for n in term.operands}
        operand_irreps = {key: irreps for key, (irreps, _) in reads.items()}
        mode, source, per, sets = self.mix(term.mix, linear=False)
        space = self.term_space([(n, reads[_key(n)][1]) for n in term.operands], term.mix)
        lmax = self.fuse_options(term)
        target = self.irreps(term.target) if term.target is not None else dest
        placement = self.placement(target, dest_name, dest, term.target.span if term.target else term.span)
        names = tuple(map(_key, term.operands))
        if len(names) > 2 or len(set(names)) < len(names):
            return self.tree_term(vid, term, names, operand_irreps, mode, source, per, sets, lmax, target,
                                  placement, text, space)
        x, y = (operand_irreps[n] for n in names)
        self.bound_combinations((x, y, target), term.span)
        triples = coupling_paths(mode, x, y, target)
        for i1, i2, io in triples:
            problem = channel_mismatch(mode, x[i1], y[i2], target[io])
            if problem:
                raise FusionError(problem, term.mix.mode.span if term.mix else term.span)
        produced = {io for _, _, io in triples}
        for io, block in enumerate(target):
            if io not in produced and term.target is not None:
                reasons = [why_not(a.ir, b.ir, block.ir) for a in x for b in y]
                parity = [r for r in reasons if "parity" in r]
                raise FusionError(f"no path gives {block}: {(parity or reasons)[0]}", term.target.span)
        paths = normalise_coupling(mode, x, y, target, triples)
        operands, gathers = _split(names)
        return CouplingVertex(vid, operands, (x, y), target, mode, source, paths, placement, per, sets,
                              text=text, span=term.span, gathers=gathers, space=space)

    def term_space(self, reads: list[tuple[ast.Operand, str | None]], mix: ast.Mix | None) -> str | None:
        """The space of a term's rows: every operand, and its weights' input, read row by row in one."""
        rows = [(f"'{_key(op)}'", space, op.span) for op, space in reads]
        for clause, what in ((mix.by, "weights input"), (mix.per, "index")) if mix else ():
            if clause is not None:
                rows.append((f"{what} '{clause.text}'", self.inputs[clause.text].space, clause.span))
        first, space, _ = rows[0]
        for what, other, span in rows[1:]:
            if other != space:
                raise FusionError(f"{what} has its rows in {_space(other)}, but {first} in {_space(space)}: a term reads "
                                  f"its operands row by row in one space (read one by an index, as in h[src])", span)
        return space

    def fuse_options(self, term: ast.FuseTerm) -> int | None:
        lmax = None
        for option in term.options:
            if option.key.text != "lmax":
                raise FusionError(f"unknown fuse option '{option.key.text}'; the option is lmax=N", option.key.span)
            if lmax is not None:
                raise FusionError("lmax is given twice", option.span)
            if len(term.operands) < 3:
                raise FusionError("lmax bounds the inner labels of a fusion of three or more operands; "
                                  "a fusion of two has none", option.span)
            lmax = option.value
        return lmax

    def tree_term(self, vid: str, term: ast.FuseTerm, names: tuple[str, ...], operand_irreps: dict[str, Irreps],
                  mode: str, source: str | None, per: str | None, sets: int, lmax: int | None,
                  target: Irreps, placement: tuple[int, ...], text: str, space: str | None) -> CouplingVertex:
        """A fusion of three or more operands, or of a repeated one, as a set of fusion trees."""
        where = term.mix.mode.span if term.mix else term.span
        if mode not in _TREE_MODES:
            what = "a repeated operand" if len(names) == 2 else f"{len(names)} operands"
            raise FusionError(f"a fusion of {what} mixes channels element-wise: use mix uuu (weighted) or "
                              f"none, not {mode}", where)
        canonical = canonical_order(names)
        irreps = tuple(operand_irreps[n] for n in canonical)
        self.bound_combinations(irreps, term.span)
        try:
            trees = symmetric_trees(canonical, irreps, target, lmax, bound=self.paths_left(), max_label=limit("l"))
        except LabelTooLarge as exc:
            raise FusionError(over("l", exc.args[0], "the degree l of an inner label of this term's fusion trees"),
                              term.span) from None
        except TooManyTrees:
            raise FusionError(f"this term has more than {self.paths_left():,} fusion trees, over fusionc's limit of "
                              f"{limit('paths'):,} paths and trees a diagram (set {LIMITS['paths'].variable} to "
                              f"raise it)", term.span) from None
        for t in trees:
            blocks = [irr[b] for irr, b in zip(irreps, t.blocks)] + [target[t.out_block]]
            if len({b.mul for b in blocks}) > 1:
                listed = ", ".join(map(str, blocks))
                raise FusionError(f"mix {mode} pairs channels one to one: {listed} must have the same "
                                  f"multiplicity", where)
        produced = {t.out_block for t in trees}
        for io, block in enumerate(target):
            if io not in produced and term.target is not None:
                bound = f" with inner labels up to l={lmax}" if lmax is not None else ""
                raise FusionError(f"no fusion tree of {', '.join(names)} gives {block}{bound}", term.target.span)
        operands, gathers = _split(canonical)
        return CouplingVertex(vid, operands, irreps, target, mode, source, tree_paths(mode, target, trees),
                              placement, per, sets, text=text, span=term.span, gathers=gathers, space=space)


def _key(op: ast.Operand) -> str:
    """An operand as written: `x` or `x[i]` (operands read alike are one operand repeated)."""
    return f"{op.name.text}[{op.index.text}]" if op.index else op.name.text


def _split(keys: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """(names, gathers) of operands written as `_key` gives them."""
    parts = [k.rstrip("]").split("[") for k in keys]
    return tuple(p[0] for p in parts), tuple(p[1] if len(p) > 1 else None for p in parts)


def _space(space: str | None) -> str:
    return f"'{space}'" if space else "no index space"


def _term_text(term: ast.Term) -> str:
    mix = ""
    if term.mix:
        mix = (f" mix {term.mix.mode.text}" + (f" by {term.mix.by.text}" if term.mix.by else "")
               + (f" per {term.mix.per.text}" if term.mix.per else ""))
    if isinstance(term, ast.NameTerm):
        return f"{_key(term.operand)}{mix}"
    target = f" -> {' '.join(term.target.text.split())}" if term.target else ""
    options = "".join(f"; {o.key.text}={o.value}" for o in term.options)
    return f"fuse({', '.join(map(_key, term.operands))}{options}){target}{mix}"


def build(program: ast.Program, filename: str = "<string>") -> tuple[Diagram, ...]:
    """Type-check every diagram of a program; raises `FusionError` at the first problem."""
    group = program.group.text if program.group else "O3"
    if group not in GROUPS:
        raise FusionError(f"unknown group '{group}'; expected O3 or SO3", program.group.span)
    convention = program.convention.text if program.convention else "e3nn"
    if convention not in CONVENTIONS:
        raise FusionError(f"unknown convention '{convention}'; expected {', '.join(CONVENTIONS)}",
                          program.convention.span)
    seen: dict[str, Span] = {}
    diagrams = []
    for d in program.diagrams:
        if d.name.text in seen:
            raise FusionError(f"diagram '{d.name.text}' is already defined at line {seen[d.name.text].line}",
                              d.name.span)
        seen[d.name.text] = d.name.span
        check_name(d.name)
        if d.name.text in DIAGRAM_RESERVED:
            raise FusionError(f"'{d.name.text}' is reserved for a diagram: the generated module or the loaded ops "
                              f"use the name (Python builtins, ops, native, module, diagrams, path)", d.name.span)
        diagrams.append(_DiagramChecker(d, group, convention, filename).check())
    return tuple(diagrams)

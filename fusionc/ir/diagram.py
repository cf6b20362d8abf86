"""The graph IR: frozen values for inputs, coupling vertices and values, over a networkx graph.

A diagram computes each of its values (every `let` and `out`) as a sum of terms; each term is a
`CouplingVertex` whose paths couple one block of each operand into one block of its value.
Passes take a `Diagram` and return a new one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from math import prod

import networkx as nx

from fusionc.errors import Span
from fusionc.ir.irreps import Irrep, Irreps

#: Channel-mixing modes, named as e3nn names them; `none` couples element-wise with no weights.
MODES = ("uvw", "uvu", "uuu", "uvuv", "none")


@dataclass(frozen=True)
class Input:
    """A declared input: irreps features, a flat `weights` vector, or an index column: `index(K)`,
    values in [0, K), or `index(space)`, rows of that space (`points`). `space`: the index space
    its rows belong to (None in a diagram without spaces: one implicit row space)."""

    name: str
    kind: str  # "irreps" | "weights" | "index"
    irreps: Irreps | None = None
    size: int | None = None
    span: Span | None = field(default=None, compare=False)
    space: str | None = None
    points: str | None = None


@dataclass(frozen=True)
class CouplingPath:
    """One block of each operand coupled into one block of the vertex's output.

    With three or more operands the path is a fusion tree ((x1 ⊗ x2)_k1 ⊗ x3)_k2 … and `inner`
    holds its inner labels k1, k2, ….
    """

    operand_blocks: tuple[int, ...]
    out_block: int
    weight_shape: tuple[int, ...]  # () when the path has no weights
    weight_offset: int
    normalization: float
    inner: tuple[Irrep, ...] = ()

    @property
    def weight_numel(self) -> int:
        return prod(self.weight_shape) if self.weight_shape else 0


@dataclass(frozen=True)
class Recoupled:
    """A fusion-tree term evaluated in the shape (x1 … x_{n-2}) ⊗ (x_{n-1} ⊗ x_n)_c.

    `paths` are the trees of that shape (inner = the prefix's labels, then c); the weights of the
    canonical trees map onto them by `matrix`, entries (canonical path, new path, coefficient)
    with the canonical normalisation folded in, so the function is unchanged.
    """

    paths: tuple[CouplingPath, ...]
    matrix: tuple[tuple[int, int, float], ...]


@dataclass(frozen=True)
class CouplingVertex:
    """One term: couples its operands (one: a linear map; two: a tensor product) path by path."""

    id: str
    operands: tuple[str, ...]
    irreps_in: tuple[Irreps, ...]
    irreps_out: Irreps
    mode: str
    weight_source: str | None  # None: internal parameters; else the `weights` input it reads
    paths: tuple[CouplingPath, ...]
    placement: tuple[int, ...]  # block i of irreps_out lands in block placement[i] of the value
    per: str | None = None  # the index input that selects one of `weight_sets` weight vectors
    weight_sets: int = 1
    recoupled: Recoupled | None = None  # set by the recoupling pass when that shape is cheaper
    text: str = field(default="", compare=False)
    span: Span | None = field(default=None, compare=False)
    #: per operand, the index input whose rows it reads (`x[i]`: row i[z] of x), or None
    gathers: tuple[str | None, ...] = ()
    space: str | None = None  # the index space of its rows

    def __post_init__(self) -> None:
        if not self.gathers:
            object.__setattr__(self, "gathers", (None,) * len(self.operands))

    @property
    def keys(self) -> tuple[str, ...]:
        """Each operand as the term reads it: `x`, or `x[i]` (gathered)."""
        return tuple(f"{o}[{g}]" if g else o for o, g in zip(self.operands, self.gathers))

    @property
    def stem(self) -> str:
        """The term's part of the names generated code gives its tensors: `y__0` for term 0 of y.
        Source names never contain '__', so no generated name can equal another's."""
        return self.id.replace(".", "__")

    @property
    def weight_numel(self) -> int:
        """Weights of one set (one index value)."""
        return sum(p.weight_numel for p in self.paths)

    @property
    def parameter_numel(self) -> int:
        """Learnable parameters: every weight set, unless the weights come `by` an input."""
        return 0 if self.weight_source else self.weight_sets * self.weight_numel

    @property
    def is_tree(self) -> bool:
        """A fusion of three or more operands, or of a repeated one: planned as fusion trees."""
        return len(self.operands) > 2 or len(set(self.keys)) < len(self.operands)

    @property
    def per_row_weights(self) -> bool:
        return self.weight_source is not None or self.per is not None

    @property
    def has_weights(self) -> bool:
        return self.mode != "none"


def path_label(t: CouplingVertex, p: CouplingPath) -> str:
    """`(32x0e ⊗ 1x1o)_1o ⊗ 1x2e -> 32x1o`: the operand blocks, the inner labels, the output."""
    blocks = [str(irreps[b]) for irreps, b in zip(t.irreps_in, p.operand_blocks)]
    text = blocks[0]
    for block, k in zip(blocks[1:-1], p.inner):
        text = f"({text} ⊗ {block})_{k}"
    if len(blocks) > 1:
        text = f"{text} ⊗ {blocks[-1]}"
    return f"{text} -> {t.irreps_out[p.out_block]}"


@dataclass(frozen=True)
class Value:
    """A `let` or `out`: the sum of its terms; with `scatter` (`y[i] += …`), each row z of the sum
    added into row i[z] of the value, which is zero where no row lands."""

    name: str
    irreps: Irreps
    terms: tuple[CouplingVertex, ...]
    is_output: bool
    span: Span | None = field(default=None, compare=False)
    space: str | None = None
    scatter: str | None = None


@dataclass(frozen=True)
class Diagram:
    """A typed diagram; values are in evaluation order."""

    name: str
    group: str
    convention: str
    inputs: tuple[Input, ...]
    values: tuple[Value, ...]
    source_file: str = "<string>"

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(v for v in self.values if v.is_output)

    @property
    def vertices(self) -> tuple[CouplingVertex, ...]:
        return tuple(t for v in self.values for t in v.terms)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The index spaces of its rows, in order of declaration (none: one implicit row space)."""
        return tuple(dict.fromkeys(s for i in self.inputs for s in (i.space, i.points) if s))

    @property
    def internal_weight_numel(self) -> int:
        return sum(t.parameter_numel for t in self.vertices)

    def input(self, name: str) -> Input:
        return next(i for i in self.inputs if i.name == name)

    def irreps_of(self, name: str) -> Irreps:
        for i in self.inputs:
            if i.name == name:
                assert i.irreps is not None
                return i.irreps
        return next(v.irreps for v in self.values if v.name == name)

    def replace_values(self, values: tuple[Value, ...]) -> Diagram:
        return Diagram(self.name, self.group, self.convention, self.inputs, values, self.source_file)

    @functools.cached_property
    def graph(self) -> nx.MultiDiGraph:
        """Inputs, vertices and values as nodes; edges carry the irreps that flow along them."""
        g = nx.MultiDiGraph()
        for i in self.inputs:
            label = str(i.irreps) if i.irreps else f"index({i.points})" if i.points else i.kind
            g.add_node(i.name, kind=f"in:{i.kind}", label=f"[{i.space}] {label}" if i.space else label)
        for v in self.values:
            g.add_node(v.name, kind="out" if v.is_output else "let", label=str(v.irreps))
            for t in v.terms:
                g.add_node(t.id, kind="vertex", label=f"{'fuse' if len(t.operands) > 1 else 'linear'} {t.mode}")
                for pos, (op, irreps) in enumerate(zip(t.operands, t.irreps_in)):
                    g.add_edge(op, t.id, label=str(irreps), position=pos)
                if t.weight_source is not None:
                    g.add_edge(t.weight_source, t.id, label=f"{t.weight_numel} weights", position=len(t.operands))
                if t.per is not None:
                    g.add_edge(t.per, t.id, label=f"selects 1 of {t.weight_sets}", position=len(t.operands) + 1)
                for k, (op, by) in enumerate(zip(t.operands, t.gathers)):
                    if by is not None:
                        g.add_edge(by, t.id, label=f"rows of {op}", position=len(t.operands) + 2 + k)
                g.add_edge(t.id, v.name, label=str(t.irreps_out), position=0)
            if v.scatter is not None:
                g.add_edge(v.scatter, v.name, label="rows summed into", position=1)
        return g

    def pretty(self) -> str:
        """A printable form of the IR, one line per vertex and path."""
        lines = [f"diagram {self.name}  [group {self.group}, convention {self.convention}]"]
        for i in self.inputs:
            what = (str(i.irreps) if i.kind == "irreps" else "weights" if i.kind == "weights"
                    else f"index({i.points or i.size})")
            lines.append(f"  in  {i.name}{f'[{i.space}]' if i.space else ''} : {what}")
        for v in self.values:
            rows = f"[{v.space}]" if v.space else ""
            sums = f"  (+= by {v.scatter})" if v.scatter else ""
            lines.append(f"  {'out' if v.is_output else 'let'} {v.name}{rows} : {v.irreps}{sums}")
            for t in v.terms:
                source = (f" by {t.weight_source}" if t.weight_source else "") + (f" per {t.per}" if t.per else "")
                lines.append(f"    {t.id} = {t.mode} ({', '.join(t.keys)}){source}  "
                             f"[{len(t.paths)} paths, {t.weight_numel} weights]")
                for p in t.paths:
                    lines.append(f"      {path_label(t, p)}"
                                 f"  w{list(p.weight_shape)} c={p.normalization:.6g}")
        return "\n".join(lines)

"""Pictures of diagrams: Graphviz DOT text, or a self-contained SVG laid out in layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import networkx as nx

from fusionc.ir.diagram import Diagram

_FILL = {"in:irreps": "#d8f0d8", "in:weights": "#e8e0f8", "in:index": "#e8e0f8",
         "vertex": "#fff2cc", "let": "#e6e6e6", "out": "#fcd9b8"}

# Glyph widths in em, rounded up from DejaVu Sans, which fontconfig puts in for Helvetica and
# sans-serif on Linux and which is wider than Helvetica and Arial: boxes sized with them hold
# their text in any of these fonts.
_NARROW = frozenset(" !'(),-./:;IJ[\\]fijlrt|·")
_WIDE = frozenset("#%&+<=>@DGHMNOQUW^mw~×→−⊗")
_EM = {False: (0.46, 0.70, 1.0), True: (0.50, 0.78, 1.11)}  # narrow, other, wide; by boldness

TITLE_SIZE, NAME_SIZE, LABEL_SIZE = 15, 12, 11
_BOX_HEIGHT, _LINE, _PAD, _PILL_PAD = 40, 16, 8, 16  # pills (coupling vertices) keep text clear of their round ends
_MIN_BOX, _GAP, _ROW_GAP, _DUMMY_HEIGHT = 110, 70, 24, 8


def text_width(text: str, size: float, bold: bool = False) -> float:
    """An upper bound of the width of `text`, in pixels, at font size `size`.

    >>> text_width("16x0e", 10)
    35.0
    """
    narrow, other, wide = _EM[bold]
    return round(size * sum(narrow if c in _NARROW else wide if c in _WIDE else other for c in text), 2)


def _node_text(diagram: Diagram, node: str) -> tuple[str, str]:
    data = diagram.graph.nodes[node]
    if data["kind"] == "vertex":
        return data["label"], node
    return node, data["label"]


def to_dot(diagrams: tuple[Diagram, ...]) -> str:
    """Graphviz DOT text: one cluster per diagram, edges labelled with their irreps."""
    lines = ["digraph fusionc {", "  rankdir=LR;", '  node [fontname="Helvetica", style=filled];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for d in diagrams:
        lines.append(f'  subgraph "cluster_{d.name}" {{')
        lines.append(f'    label="{d.name}";')
        for node, data in d.graph.nodes(data=True):
            title, sub = _node_text(d, node)
            shape = "ellipse" if data["kind"] == "vertex" else "box"
            lines.append(f'    "{d.name}.{node}" [label="{title}\\n{sub}", shape={shape}, '
                         f'fillcolor="{_FILL[data["kind"]]}"];')
        for a, b, data in d.graph.edges(data=True):
            lines.append(f'    "{d.name}.{a}" -> "{d.name}.{b}" [label="{data["label"]}"];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class _Node:
    """A box, or a dummy that carries an edge across a column (kind None, no width)."""

    name: str
    kind: str | None
    title: str = ""
    lines: tuple[str, ...] = ()
    width: float = 0.0
    height: float = _DUMMY_HEIGHT
    layer: int = 0
    x: float = 0.0
    y: float = 0.0
    column_right: float = 0.0

    @property
    def pad(self) -> float:
        return _PILL_PAD if self.kind == "vertex" else _PAD


@dataclass
class _Edge:
    """One edge of the graph, drawn through the dummies of the columns it crosses."""

    source: str
    target: str
    position: int
    chain: list[str] = field(default_factory=list)  # source, dummies, target


def _layers(d: Diagram) -> dict[str, int]:
    """Inputs in the first column, what nothing reads in the last, every other node as far right
    as its consumers allow, so that an edge spans as few columns as it can."""
    g = d.graph
    last = len(list(nx.topological_generations(g))) - 1
    layer: dict[str, int] = {}
    for n in reversed(list(nx.topological_sort(g))):
        if g.nodes[n]["kind"].startswith("in:"):
            layer[n] = 0
        else:
            layer[n] = min((layer[s] - 1 for s in g.successors(n)), default=last)
    return layer


def _node_lines(d: Diagram, node: str) -> tuple[str, tuple[str, ...]]:
    """A box's bold title and its lines. Edges carry no text, which would cross other edges:
    a box also says what its incoming edges bring that their sources do not (a vertex, the
    weights of its `by` and `per` inputs); an operand's irreps are its source's label, and a
    term's irreps its value's."""
    title, sub = _node_text(d, node)
    g = d.graph
    lines = [sub]
    for a, _, data in g.in_edges(node, data=True):
        if data["label"] not in (g.nodes[a]["label"], *lines):
            lines.append(data["label"])
    return title, tuple(lines)


def _graph(d: Diagram) -> tuple[dict[str, _Node], list[_Edge], list[list[str]]]:
    """Boxes, edges routed through dummies, and each column's nodes in order."""
    layer = _layers(d)
    nodes: dict[str, _Node] = {}
    for n, data in d.graph.nodes(data=True):
        title, lines = _node_lines(d, n)
        node = _Node(n, data["kind"], title, lines, height=_BOX_HEIGHT + _LINE * (len(lines) - 1), layer=layer[n])
        node.width = max(_MIN_BOX, 2 * node.pad + max(text_width(title, NAME_SIZE, bold=True),
                                                      *(text_width(line, LABEL_SIZE) for line in lines)))
        nodes[n] = node
    edges = []
    for a, b, data in d.graph.edges(data=True):
        edge = _Edge(a, b, data["position"], [a])
        for k in range(layer[a] + 1, layer[b]):
            dummy = _Node(f"{a}->{b}#{len(edges)}.{k}", None, layer=k)
            nodes[dummy.name] = dummy
            edge.chain.append(dummy.name)
        edge.chain.append(b)
        edges.append(edge)
    columns: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for n in nodes.values():
        columns[n.layer].append(n.name)
    _order(columns, edges)
    return nodes, edges, columns


def _order(columns: list[list[str]], edges: list[_Edge]) -> None:
    """Order each column by the mean rank of its neighbours in the column before (then after), a
    few sweeps each way, to uncross edges; inputs keep their declared order."""
    before: dict[str, set[str]] = {}
    after: dict[str, set[str]] = {}
    for e in edges:  # distinct neighbours: fuse(A, A, A) pulls no harder towards A than A mix uuu
        for a, b in zip(e.chain, e.chain[1:]):
            after.setdefault(a, set()).add(b)
            before.setdefault(b, set()).add(a)
    for _ in range(4):
        for sweep, neighbours in ((range(1, len(columns)), before), (range(len(columns) - 2, 0, -1), after)):
            for i in sweep:
                rank = {n: r for column in columns for r, n in enumerate(column)}
                column = columns[i]
                columns[i] = sorted(column, key=lambda n: sum(rank[m] for m in neighbours[n]) / len(neighbours[n]))


def _pack(wanted: list[float], heights: list[float], top: float) -> list[float]:
    """Tops near `wanted`, in order, `_ROW_GAP` apart at least, none above `top`: pushed down
    where they crowd, then moved up together by their mean displacement."""
    ys: list[float] = []
    for i, y in enumerate(wanted):
        ys.append(max(y, top if i == 0 else ys[-1] + heights[i - 1] + _ROW_GAP))
    shift = min(sum(y - w for y, w in zip(ys, wanted)) / len(ys), ys[0] - top)
    return [y - shift for y in ys]


def _place(nodes: dict[str, _Node], edges: list[_Edge], columns: list[list[str]], top: float) -> None:
    """Columns left to right; the first stacked, the others each node level with the mean of its
    neighbours in the column before."""
    x = 40.0
    for i, column in enumerate(columns):
        width = max((nodes[n].width for n in column if nodes[n].kind), default=0.0)
        for n in column:
            nodes[n].x, nodes[n].column_right = x, x + width
            if not nodes[n].kind:
                nodes[n].width = width
        x += width + _GAP
    before: dict[str, list[str]] = {}
    for e in edges:
        for a, b in zip(e.chain, e.chain[1:]):
            before.setdefault(b, []).append(a)
    for i, column in enumerate(columns):
        heights = [nodes[n].height for n in column]
        wanted = [top] * len(column) if i == 0 else [
            sum(nodes[m].y + nodes[m].height / 2 for m in before[n]) / len(before[n]) - nodes[n].height / 2
            for n in column]
        for n, y in zip(column, _pack(wanted, heights, top)):
            nodes[n].y = y


def _routes(nodes: dict[str, _Node], edges: list[_Edge]) -> list[list[tuple[float, float]]]:
    """Each edge's polyline: out of its source's right side and into its target's left side at
    ports spread along them, level through each column it crosses, straight across the gaps."""
    def ports(end: str, towards: int) -> dict[int, float]:
        """Edge -> height of its port on node `end`, in the order of the nodes they lead to."""
        by_node: dict[str, list[int]] = {}
        for k, e in enumerate(edges):
            by_node.setdefault(getattr(e, end), []).append(k)
        port = {}
        for n, ks in by_node.items():
            ks.sort(key=lambda k: (nodes[edges[k].chain[towards]].y, edges[k].position))
            for j, k in enumerate(ks):
                port[k] = nodes[n].y + nodes[n].height * (j + 1) / (len(ks) + 1)
        return port

    out_port, in_port = ports("source", 1), ports("target", -2)
    routes = []
    for k, e in enumerate(edges):
        source, target = nodes[e.source], nodes[e.target]
        points = [(source.x + source.width, out_port[k]), (source.column_right, out_port[k])]
        for dummy in e.chain[1:-1]:
            middle = nodes[dummy].y + nodes[dummy].height / 2
            points += [(nodes[dummy].x, middle), (nodes[dummy].x + nodes[dummy].width, middle)]
        points.append((target.x, in_port[k]))
        routes.append([p for i, p in enumerate(points) if i == 0 or p != points[i - 1]])
    return routes


def _diagram_svg(d: Diagram, top: float) -> tuple[list[str], float, float]:
    """The SVG elements of one diagram below `top`, its right edge and its bottom."""
    nodes, edges, columns = _graph(d)
    _place(nodes, edges, columns, top + 40)
    body = [f'<text x="20" y="{top + 16:.0f}" font-size="{TITLE_SIZE}" font-weight="bold">{escape(d.name)}</text>']
    for route in _routes(nodes, edges):
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in route)
        body.append(f'<polyline points="{points}" fill="none" stroke="#555" marker-end="url(#arrow)"/>')
    real = [n for n in nodes.values() if n.kind]
    for n in real:
        body.append(f'<rect x="{n.x:.1f}" y="{n.y:.1f}" width="{n.width:.1f}" height="{n.height}" '
                    f'rx="{20 if n.kind == "vertex" else 4}" fill="{_FILL[n.kind]}" stroke="#333"/>')
        body.append(f'<text x="{n.x + n.pad:.1f}" y="{n.y + 16:.1f}" font-size="{NAME_SIZE}" font-weight="bold">'
                    f'{escape(n.title)}</text>')
        for j, line in enumerate(n.lines):
            body.append(f'<text x="{n.x + n.pad:.1f}" y="{n.y + 32 + _LINE * j:.1f}" font-size="{LABEL_SIZE}">'
                        f'{escape(line)}</text>')
    right = max(max(n.x + n.width for n in real), 20 + text_width(d.name, TITLE_SIZE, bold=True))
    bottom = max(n.y + n.height for n in nodes.values())
    return body, right, bottom


def to_svg(diagrams: tuple[Diagram, ...]) -> str:
    """A standalone SVG: inputs on the left, coupling vertices in the middle, outputs on the right."""
    body: list[str] = []
    top, width = 20.0, 400.0
    for d in diagrams:
        elements, right, bottom = _diagram_svg(d, top)
        body += elements
        width, top = max(width, right + 40), bottom + 50
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{top:.0f}" '
            f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
            '<rect width="100%" height="100%" fill="white"/>')
    return head + "\n" + "\n".join(body) + "\n</svg>\n"

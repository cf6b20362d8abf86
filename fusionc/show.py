"""Pictures of diagrams: Graphviz DOT text, or a self-contained SVG laid out in layers."""

from __future__ import annotations

from html import escape

import networkx as nx

from fusionc.ir.diagram import Diagram

_FILL = {"in:irreps": "#d8f0d8", "in:weights": "#e8e0f8", "in:index": "#e8e0f8",
         "vertex": "#fff2cc", "let": "#e6e6e6", "out": "#fcd9b8"}


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


def _layers(g: nx.MultiDiGraph) -> list[list[str]]:
    return [sorted(layer) for layer in nx.topological_generations(g)]


def to_svg(diagrams: tuple[Diagram, ...]) -> str:
    """A standalone SVG: inputs on the left, coupling vertices in the middle, outputs on the right."""
    col, row, char = 260, 84, 7.2
    body, top, width = [], 20, 400
    for d in diagrams:
        g = d.graph
        layers = _layers(g)
        pos = {n: (40 + i * col, top + 40 + j * row) for i, layer in enumerate(layers) for j, n in enumerate(layer)}
        body.append(f'<text x="20" y="{top + 16}" font-size="15" font-weight="bold">{escape(d.name)}</text>')
        for a, b, data in g.edges(data=True):
            (x1, y1), (x2, y2) = pos[a], pos[b]
            body.append(f'<line x1="{x1 + 170}" y1="{y1 + 20}" x2="{x2}" y2="{y2 + 20}" stroke="#555" '
                        f'marker-end="url(#arrow)"/>')
            body.append(f'<text x="{(x1 + 170 + x2) / 2:.0f}" y="{(y1 + y2) / 2 + 14:.0f}" font-size="10" '
                        f'text-anchor="middle" fill="#224">{escape(data["label"])}</text>')
        for node, data in g.nodes(data=True):
            x, y = pos[node]
            title, sub = _node_text(d, node)
            w = max(170, char * max(len(title), len(sub)) + 16)
            rx = 20 if data["kind"] == "vertex" else 4
            body.append(f'<rect x="{x}" y="{y}" width="{w:.0f}" height="40" rx="{rx}" fill="{_FILL[data["kind"]]}" '
                        f'stroke="#333"/>')
            body.append(f'<text x="{x + 8}" y="{y + 16}" font-size="12" font-weight="bold">{escape(title)}</text>')
            body.append(f'<text x="{x + 8}" y="{y + 32}" font-size="11">{escape(sub)}</text>')
            width = max(width, x + w + 40)
        top += 60 + row * max(len(layer) for layer in layers)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{top}" '
            f'font-family="Helvetica, Arial, sans-serif">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
            f'<rect width="100%" height="100%" fill="white"/>')
    return head + "\n" + "\n".join(body) + "\n</svg>\n"

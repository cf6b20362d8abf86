"""`fusionc show -o OUT.svg`: every text legible, inside its box, clear of other texts and lines.

The checks read the geometry back from the SVG: boxes (`rect`, with their rounded corners),
texts and edges (`polyline`). A text's width is estimated as show.py sizes its boxes, from the
glyph widths of DejaVu Sans (what fontconfig draws Helvetica and sans-serif with on Linux, and
wider than both), here measured per glyph; its height is the font's ascent and descent."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import KERNELS
from fusionc.cli import main

SVG = "{http://www.w3.org/2000/svg}"

#: Advance widths of DejaVu Sans, in em, each group's widest glyph (Book, then Bold).
_GLYPHS = {
    False: {" '(),-./:;IJ[\\]fijlt|·": 0.392, '!"r': 0.460, "*?FL_`cksvxyz": 0.592,
            "$0123456789EPSTYabdeghnopqu{}": 0.637, "ABCKRVXZ": 0.699, "&DGHNOQU": 0.788},
    True: {" ',./:;IJ\\ijl|·": 0.400, "!()-[]frt": 0.494, '"*?_`csz': 0.596, "Lx": 0.646,
           "$0123456789EFTaekovy": 0.696, "ABCKPRSVXYZbdghnpqu{}": 0.775},
}
_WIDEST = {False: 1.0, True: 1.104}  # '+', 'm', 'w', '⊗' and the rest


def text_width(text: str, size: float, bold: bool) -> float:
    return size * sum(next((em for glyphs, em in _GLYPHS[bold].items() if c in glyphs), _WIDEST[bold]) for c in text)


#: Long names, weights and index inputs, an inner edge and a term that skips a column.
AWKWARD = """\
diagram a_diagram_whose_name_is_longer_than_its_first_column_of_boxes {
    in  features_of_the_receiving_atom : 16x(0e + 1o + 2e + 3o)
    in  w : weights
    in  species : index(118)
    out y : 16x(0e + 1o + 2e + 3o)
    let t = fuse(features_of_the_receiving_atom, features_of_the_receiving_atom) -> 16x(0e + 1o + 2e) mix uuu
    y = fuse(t, features_of_the_receiving_atom) mix uuu by w + features_of_the_receiving_atom mix uuu per species
}
"""

Box = tuple[float, float, float, float]


def _text_box(element: ET.Element) -> Box:
    size = float(element.get("font-size"))
    width = text_width(element.text, size, bold=element.get("font-weight") == "bold")
    x, y = float(element.get("x")), float(element.get("y"))
    left = x - width / 2 if element.get("text-anchor") == "middle" else x
    return left, y - 0.93 * size, left + width, y + 0.24 * size  # DejaVu Sans: 'A' to 'y', brackets


def _inside_rounded(px: float, py: float, rect: ET.Element) -> bool:
    x, y = float(rect.get("x")), float(rect.get("y"))
    w, h, r = float(rect.get("width")), float(rect.get("height")), float(rect.get("rx", 0))
    if not (x <= px <= x + w and y <= py <= y + h):
        return False
    cx, cy = min(max(px, x + r), x + w - r), min(max(py, y + r), y + h - r)  # nearest centre of a corner arc
    return math.hypot(px - cx, py - cy) <= r


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _crosses(box: Box, p: tuple[float, float], q: tuple[float, float]) -> bool:
    """Whether the segment pq enters the box (Liang–Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for step, room in ((-dx, p[0] - box[0]), (dx, box[2] - p[0]), (-dy, p[1] - box[1]), (dy, box[3] - p[1])):
        if step == 0:
            if room < 0:
                return False
        elif step < 0:
            t0 = max(t0, room / step)
        else:
            t1 = min(t1, room / step)
    return t0 < t1


def _check_layout(svg: Path) -> None:
    root = ET.parse(svg).getroot()
    width, height = float(root.get("width")), float(root.get("height"))
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("width") != "100%"]
    boxes = [(float(r.get("x")), float(r.get("y")), float(r.get("x")) + float(r.get("width")),
              float(r.get("y")) + float(r.get("height"))) for r in rects]
    texts = list(root.iter(f"{SVG}text"))
    text_boxes = [_text_box(t) for t in texts]
    segments = []
    for line in root.iter(f"{SVG}polyline"):
        points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        segments += list(zip(points, points[1:]))
    assert rects and texts and segments
    for text, box in zip(texts, text_boxes):
        assert float(text.get("font-size")) >= 10, text.text
        assert 0 <= box[0] and box[2] <= width and 0 <= box[1] and box[3] <= height, text.text
        holders = [r for r, b in zip(rects, boxes) if _overlap(box, b)]
        assert len(holders) <= 1, f"{text.text!r} lies on {len(holders)} boxes"
        if holders:
            corners = [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]
            assert all(_inside_rounded(x, y, holders[0]) for x, y in corners), \
                f"{text.text!r} runs past its box {holders[0].attrib}"
        for p, q in segments:
            assert not _crosses(box, p, q), f"an edge {p}->{q} crosses {text.text!r}"
    for i, a in enumerate(text_boxes):
        for j in range(i):
            assert not _overlap(a, text_boxes[j]), f"{texts[i].text!r} overlaps {texts[j].text!r}"
    for b in boxes:  # edges start and end on a box's side, and pass through none
        inner = (b[0] + 1, b[1] + 1, b[2] - 1, b[3] - 1)
        for p, q in segments:
            assert not _crosses(inner, p, q), f"an edge {p}->{q} crosses the box at {b}"


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda p: p.stem)
def test_kernels_draw_cleanly(tmp_path, kernel: Path) -> None:
    out = tmp_path / f"{kernel.stem}.svg"
    assert main(["show", str(kernel), "-o", str(out)]) == 0
    _check_layout(out)


def test_long_names_weights_and_indices_draw_cleanly(tmp_path) -> None:
    source = tmp_path / "awkward.fus"
    source.write_text(AWKWARD)
    out = tmp_path / "awkward.svg"
    assert main(["show", str(source), "-o", str(out)]) == 0
    _check_layout(out)
    texts = {t.text for t in ET.parse(out).getroot().iter(f"{SVG}text")}
    # what the edges from the weights and index inputs bring, said in the vertices they enter
    assert {"features_of_the_receiving_atom", "16x0e+16x1o+16x2e+16x3o", "species", "index"} <= texts
    assert any(t.endswith(" weights") for t in texts) and "selects 1 of 118" in texts


def test_every_fused_operand_gets_its_own_edge(tmp_path) -> None:
    """fuse(A, A, A) draws three edges from A: the picture shows the power."""
    kernel = next(k for k in KERNELS if k.stem == "mace_product")
    out = tmp_path / "mace.svg"
    assert main(["show", str(kernel), "-o", str(out), "--diagram", "mace_product"]) == 0
    edges = len(list(ET.parse(out).getroot().iter(f"{SVG}polyline")))
    assert edges == 1 + 2 + 3 + 3 + 3  # from A into B.0, B.1, B.2; from z into each; from each into B

"""Bad-input cases: every malformed `.fus` source is a located error, never a traceback.

Each case is a small diagram with one mistake, the exact `line:col` the error must point at
(lines and columns count from 1, a tab counts as one column), and a phrase of the message.
`fusionc check` must exit with status 2 and print

    <path>:<line>:<col>: error: <message>
        <the offending line>
        <caret under the offending text>

to stderr. The positions were checked by eye: the caret sits under the offending token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusionc.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

# (id, source, line, column, phrase). Physics messages use the real minus sign U+2212 ("−")
# and the tensor-product sign U+2297 ("⊗"), exactly as the compiler prints them.
CASES = [
    # --- syntax -----------------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y   8x0e
    y = x mix uvw
}
""", 3, 13, "unexpected '8x0e'; expected ':'", id="syntax-missing-colon"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw @ 2
}
""", 4, 19, "unexpected character '@'", id="syntax-unexpected-character"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = fuse(x,
""", 4, 16, "unexpected end of file; expected a name", id="syntax-unexpected-eof"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
""", 4, 18, "unexpected end of file; expected '+', 'by', 'in', 'let', 'out', 'per', '}'",
                 id="syntax-missing-rbrace"),
    pytest.param("""\
diagram d
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}
""", 2, 5, "unexpected 'in'; expected '{'", id="syntax-missing-lbrace"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix 3
}
""", 4, 15, "unexpected '3'", id="syntax-bad-token-after-mix"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : weights
    y = x mix uvw
}
""", 3, 13, "unexpected 'weights'; expected irreps such as 32x0e + 1o", id="syntax-weights-output"),
    pytest.param("diagram d {\n\tin  x : 8x0e\n\tout y : 8x0e\n\ty = fuse(x, q) mix uvw\n}\n",
                 4, 14, "unknown name 'q'", id="syntax-tab-indented-column"),
    pytest.param("diagram d {\r\n    in  x : 8x0e\r\n    out y : 8x0e\r\n    y = fuse(x, q) mix uvw\r\n}\r\n",
                 4, 17, "unknown name 'q'", id="syntax-crlf-line-endings"),
    # --- irreps -----------------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x0e + 8x1
    out y : 8x0e
    y = x mix uvw
}
""", 2, 22, "O(3) irrep '1' needs a parity: '1e' (even) or '1o' (odd)", id="irreps-o3-without-parity"),
    pytest.param("""\
group SO3
diagram d {
    in  x : 8x0 + 8x1o
    out y : 8x0
    y = x mix uvw
}
""", 3, 21, "SO(3) irreps carry no parity: write '1', not '1o'", id="irreps-so3-with-parity"),
    pytest.param("""\
group SO3
diagram d {
    in  x : 8x0 + 8x1
    in  s : 1
    out y : 8x1
    let t = fuse(x, s) -> 8x1e mix uvu
    y = t mix uvw
}
""", 6, 29, "SO(3) irreps carry no parity: write '1', not '1e'", id="irreps-so3-parity-in-target"),
    pytest.param("""\
diagram d {
    in  x : 8x0e + 0x1o
    out y : 8x0e
    y = x mix uvw
}
""", 2, 20, "a multiplicity must be at least 1", id="irreps-zero-multiplicity"),
    pytest.param("""\
diagram d {
    in  x : 8x(0e + 0x1o)
    out y : 8x0e
    y = x mix uvw
}
""", 2, 21, "a multiplicity must be at least 1", id="irreps-zero-multiplicity-in-group"),
    # --- names ------------------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = fuse(x, q) mix uvw
}
""", 4, 17, "unknown name 'q'", id="names-unknown-operand"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  x : 8x1o
    out y : 8x0e
    y = x mix uvw
}
""", 3, 9, "'x' is already declared at line 2", id="names-duplicate-declaration"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  weight : 8x0e
    out y : 8x0e
    y = fuse(x, weight) mix uvw
}
""", 3, 9, "'weight' is reserved", id="names-reserved-weight"),
    pytest.param("""\
diagram d {
    in  class : 8x0e
    out y : 8x0e
    y = class mix uvw
}
""", 2, 9, "'class' is reserved", id="names-reserved-keyword"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out _y : 8x0e
    _y = x mix uvw
}
""", 3, 9, "'_y' is reserved", id="names-reserved-underscore"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    let y = x mix uvw
    y = x mix uvw
}
""", 4, 9, "'y' is already declared at line 3", id="names-let-shadows-output"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}

diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}
""", 7, 9, "diagram 'd' is already defined at line 1", id="names-duplicate-diagram"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
    z = x mix uvw
}
""", 5, 5, "'z' is not a declared output (declare 'out z : IRREPS', or use 'let')",
                 id="names-assign-undeclared"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
    x = y mix uvw
}
""", 5, 5, "'x' is an input and cannot be assigned", id="names-assign-input"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    out z : 8x0e
    y = x mix uvw
    z = y mix uvw
}
""", 6, 9, "output 'y' cannot be read inside the diagram; compute it with a 'let'",
                 id="names-read-output"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    out y : 8x0e
    let t = fuse(t, s) -> 8x0e mix uvu
    y = t mix uvw
}
""", 5, 18, "'t' is used before it is defined", id="names-let-used-in-own-definition"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  w : weights
    out y : 8x0e
    y = fuse(x, w) mix uvw
}
""", 5, 17, "'w' is a weights input: it can only follow 'by'", id="names-weights-as-operand"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : index(10)
    out y : 8x0e
    y = fuse(s, x) mix uvw
}
""", 5, 14, "input: it can only follow 'per'", id="names-index-as-operand"),
    # --- structure --------------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  extra : 8x1o
    out y : 8x0e
    y = x mix uvw
}
""", 3, 9, "input 'extra' is never used", id="structure-unused-input"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  w : weights
    out y : 8x0e
    y = x mix uvw
}
""", 3, 9, "input 'w' is never used", id="structure-unused-weights"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    let t = x mix uvw
    y = x mix uvw
}
""", 4, 9, "let 't' is never used", id="structure-unused-let"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    out z : 8x0e
    y = x mix uvw
}
""", 4, 9, "output 'z' is never assigned", id="structure-output-never-assigned"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
    y = x mix uuu
}
""", 5, 5, "output 'y' is assigned twice (first at line 4)", id="structure-output-assigned-twice"),
    pytest.param("""\
diagram d {
    in  x : 8x(0e + 1o)
    in  s : 0e + 1o
    out y : 8x0e
    let t = fuse(x, s) mix uvu
    y = t mix uvw
}
""", 5, 13, "a let needs '-> IRREPS' on its fuse term", id="structure-let-without-target"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = fuse(x) mix uvw
}
""", 4, 9, "fuse needs two operands; for a linear map write 'NAME mix MODE'",
                 id="structure-fuse-one-operand"),
    # --- physics ----------------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x1o
    in  s : 1o
    out y : 8x0e + 8x1o
    y = fuse(x, s) mix uvu
}
""", 5, 9, "no term produces block 8x1o of 'y': 1o ⊗ 1o cannot give 1o: parity (−1)(−1)=+1",
                 id="physics-output-parity"),
    pytest.param("""\
diagram d {
    in  x : 8x1o
    in  s : 1o
    out y : 8x0e + 8x1o
    y = fuse(x, s) -> 8x1o mix uvu + x mix uvw
}
""", 5, 23, "no path gives 8x1o: 1o ⊗ 1o cannot give 1o: parity (−1)(−1)=+1",
                 id="physics-target-parity"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 1o
    out y : 8x2e
    y = fuse(x, s) -> 8x2e mix uvu
}
""", 5, 23, "0e ⊗ 1o cannot give 2e: the triangle rule allows l = 1..1", id="physics-target-triangle"),
    pytest.param("""\
diagram d {
    in  x : 8x1o
    in  s : 1o
    out y : 8x0e
    y = fuse(x, s) -> 8x0e + 8x1e mix uvu
}
""", 5, 23, "this term gives 8x1e, which 'y' (8x0e) does not have", id="physics-target-not-in-output"),
    pytest.param("""\
diagram d {
    in  x : 8x0e + 8x1o
    out y : 8x0e + 8x2e
    y = x mix uvw
}
""", 4, 9, "no term produces block 8x2e of 'y': x has no 2e block", id="physics-linear-missing-irrep"),
    # --- modes ------------------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    out y : 8x0e
    y = fuse(x, s) mix uvx
}
""", 5, 24, "unknown mix mode 'uvx'; expected one of uvw, uvu, uuu, uvuv, none", id="modes-unknown-mode"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    out y : 16x0e
    y = fuse(x, s) mix uvu
}
""", 5, 24, "mix uvu keeps the first operand's channels: 8x0e has 8 but output block 16x0e has 16",
                 id="modes-uvu-multiplicity"),
    pytest.param("""\
diagram d {
    in  a : 8x0e
    in  b : 4x0e
    out y : 8x0e
    y = fuse(a, b) mix uuu
}
""", 5, 24, "mix uuu pairs channels one to one: 8x0e, 4x0e and output block 8x0e must have the same "
                    "multiplicity", id="modes-uuu-multiplicity"),
    pytest.param("""\
diagram d {
    in  a : 4x0e
    in  b : 8x0e
    out y : 16x0e
    y = fuse(a, b) mix uvuv
}
""", 5, 24, "mix uvuv keeps every channel pair: output block 16x0e must have 4×8 = 32 channels",
                 id="modes-uvuv-multiplicity"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 16x0e
    y = x mix uuu
}
""", 4, 15, "mix uuu maps channels one to one: 8x0e cannot give 16x0e", id="modes-linear-uuu-multiplicity"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvu
}
""", 4, 15, "mix uvu needs two operands; a linear map takes uvw, uuu, none", id="modes-uvu-on-linear"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    out y : 8x0e
    y = fuse(x, s) mix uvu by s
}
""", 5, 31, "'by s' needs a weights input, but 's' is declared as irreps", id="modes-by-irreps-input"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    in  z : index(4)
    out y : 8x0e
    y = fuse(x, s) mix uvu by z
}
""", 6, 31, "'by z' needs a weights input, but 'z' is declared as index", id="modes-by-index-input"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    out y : 8x0e
    y = fuse(x, s) mix uvu by w
}
""", 5, 31, "unknown name 'w'", id="modes-by-unknown-input"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    in  w : weights
    out y : 8x0e
    y = fuse(x, s) mix none by w
}
""", 6, 32, "mix none has no weights to take 'by' an input", id="modes-none-by-weights"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    in  w : weights
    out y : 8x0e
    y = fuse(x, s) mix uvu by w + x mix uvw by w
}
""", 6, 48, "weights input 'w' already feeds the term at line 6", id="modes-weights-fed-twice"),
    # --- headers ----------------------------------------------------------------------------
    pytest.param("""\
# a diagram for another group
group SU2
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}
""", 2, 7, "unknown group 'SU2'; expected O3 or SO3", id="headers-unknown-group"),
    pytest.param("""\
group O3
convention cueq
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}
""", 2, 12, "unknown convention 'cueq'; expected e3nn", id="headers-unknown-convention"),
    pytest.param("""\
group O3
group SO3
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}
""", 2, 7, "'group' is declared twice (first at line 1)", id="headers-group-twice"),
    pytest.param("""\
convention e3nn
convention e3nn
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw
}
""", 2, 12, "'convention' is declared twice (first at line 1)", id="headers-convention-twice"),
    # --- fusion trees, symmetric fusion, per-index weights ----------------------------------
    pytest.param("""\
diagram d {
    in  a : 8x0e
    in  b : 8x0e
    in  c : 8x0e
    out y : 8x0e
    y = fuse(a, b, c) mix uvw
}
""", 6, 27, "a fusion of 3 operands mixes channels element-wise: use mix uuu (weighted) or none, not uvw",
                 id="trees-nary-needs-uuu"),
    pytest.param("""\
diagram d {
    in  x : 8x0e + 8x1o
    out y : 8x1o
    y = fuse(x, x) mix uvu
}
""", 4, 24, "a fusion of a repeated operand mixes channels element-wise", id="trees-symmetric-needs-uuu"),
    pytest.param("""\
diagram d {
    in  a : 8x0e
    in  b : 4x1o
    in  c : 8x1o
    out y : 8x0e
    y = fuse(a, b, c) mix uuu
}
""", 6, 27, "mix uuu pairs channels one to one: 8x0e, 4x1o, 8x1o, 8x0e must have the same multiplicity",
                 id="trees-nary-multiplicity"),
    pytest.param("""\
diagram d {
    in  a : 8x0e
    in  b : 8x0e
    out y : 8x0e
    y = fuse(a, b; lmax=2) mix uuu
}
""", 5, 20, "lmax bounds the inner labels of a fusion of three or more operands", id="trees-lmax-two-operands"),
    pytest.param("""\
diagram d {
    in  a : 8x1o
    in  b : 8x1o
    in  c : 8x1o
    out y : 8x2o
    y = fuse(a, b, c; lmax=0) -> 8x2o mix uuu
}
""", 6, 34, "no fusion tree of a, b, c gives 8x2o with inner labels up to l=0", id="trees-lmax-unreachable"),
    pytest.param("""\
diagram d {
    in  a : 8x0e
    in  b : 8x0e
    in  c : 8x0e
    out y : 8x0e
    y = fuse(a, b, c; depth=2) mix uuu
}
""", 6, 23, "unknown fuse option 'depth'; the option is lmax=N", id="trees-unknown-option"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  s : 0e
    in  w : weights
    out y : 8x0e
    y = fuse(x, s) mix uvu per w
}
""", 6, 32, "'per w' needs an index input (in w : index(K)), but 'w' is declared as weights",
                 id="per-needs-index-input"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  z : index(4)
    out y : 8x0e
    y = fuse(x, x) mix none per z
}
""", 5, 33, "mix none has no weights to select 'per' index", id="per-with-mix-none"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  w : weights
    in  z : index(4)
    out y : 8x0e
    y = x mix uuu by w per z
}
""", 6, 28, "weights come either 'by' an input or 'per' index", id="per-and-by"),
    # --- index inputs -----------------------------------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  z : index(0)
    out y : 8x0e
    y = x mix uvw
}
""", 3, 13, "an index input needs at least one value: index(K) with K ≥ 1", id="index-zero"),
    # --- found by review, fixed: keep them fixed -----------------------------------------------
    pytest.param("""\
diagram d {
    in  x : 2x(3x(0e))
    out y : 6x0e
    y = x
}
""", 2, 16, "groups cannot be nested", id="irreps-nested-group"),
    pytest.param("""\
diagram d {
    in  x : 8x(0e + 1o
    out y : 8x0e
    y = x
}
""", 2, 23, "expected ')' to close the group", id="irreps-unclosed-group"),
    pytest.param("""\
diagram d {
    in  x : 8x()
    out y : 8x0e
    y = x
}
""", 2, 16, "expected an irrep", id="irreps-empty-group"),
    pytest.param("""\
diagram d {
    in  x : 8x0e +
            8x1
    out y : 8x0e
    y = x
}
""", 3, 15, "O(3) irrep '1' needs a parity", id="irreps-error-on-continuation-line"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = t mix uvw
    let t = x mix uvw
}
""", 4, 9, "'t' is used before it is defined (line 5)", id="names-let-forward-reference"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    y = x mix uvw

diagram e {
}
""", 6, 1, "unexpected 'diagram'; expected", id="syntax-keyword-is-not-a-name"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    in  w : weights
    out y : 8x0e
    y = x mix by w
}
""", 5, 15, "expected a mix mode (uvw, uvu, uuu, uvuv or none)", id="syntax-mix-without-mode"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out in : 8x0e
    in = x mix uvw
}
""", 3, 9, "unexpected 'in'; expected a name", id="syntax-reserved-keyword-as-name"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 8x0e
    let t = x mix uvw
    t = x mix uvw
    y = t
}
""", 5, 5, "'t' is a let, defined once at line 4; it cannot be assigned again", id="names-assign-to-let"),
    pytest.param("""\
diagram d {
    in  x : 8x0e
    out y : 16x0e
    y = x
}
""", 4, 9, "a term without 'mix' maps channels one to one: 8x0e cannot give 16x0e", id="modes-linear-without-mix"),
]


def write_bad(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "bad.fus"
    path.write_bytes(source.encode())  # bytes, so CRLF cases keep their line endings
    return path


def assert_located(stderr: str, path: Path, line: int, column: int, phrase: str) -> None:
    """stderr is `path:line:col: error: ...`, the phrase, the source line and a caret under column."""
    assert "Traceback" not in stderr
    assert stderr.startswith(f"{path}:{line}:{column}: error: "), stderr
    assert phrase in stderr, stderr
    shown = stderr.splitlines()
    assert len(shown) >= 3, stderr
    caret = shown[2]
    assert set(caret.strip()) == {"^"}, stderr
    assert caret.index("^") == 4 + column - 1, stderr  # rendered lines are indented by four spaces


@pytest.mark.parametrize("source, line, column, phrase", CASES)
def test_check_reports_located_error(tmp_path, capsys, source, line, column, phrase):
    path = write_bad(tmp_path, source)
    assert main(["check", str(path)]) == 2
    assert_located(capsys.readouterr().err, path, line, column, phrase)


@pytest.mark.parametrize("source, line, column", [
    pytest.param(CASES[0].values[0], 3, 13, id="syntax-error"),
    pytest.param(next(c for c in CASES if c.id == "physics-output-parity").values[0], 5, 9, id="type-error"),
])
def test_console_entry_exits_2_without_traceback(tmp_path, source, line, column):
    path = write_bad(tmp_path, source)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), FUSIONC_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "fusionc", "check", str(path)],
                            capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"{path}:{line}:{column}: error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_compile_of_bad_file_writes_nothing(tmp_path, capsys):
    bad = write_bad(tmp_path, next(c for c in CASES if c.id == "physics-output-parity").values[0])
    out = tmp_path / "out.py"
    assert main(["compile", str(bad), "-o", str(out)]) == 2
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fus"]  # no stray temporary files
    assert capsys.readouterr().err.startswith(f"{bad}:5:9: error: ")

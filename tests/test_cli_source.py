"""Source text the CLI must read like any other: form feeds and other line-like characters,
bytes that are not UTF-8, a byte-order mark; and irreps that are not irreps, named whole.

Each case gives the exact `line:col` (counted by hand: lines end at "\\n" only, a column is a
character) and the width of the caret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fusionc.cli import main


def _check(tmp_path: Path, source: bytes, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[str]]:
    path = tmp_path / "bad.fus"
    path.write_bytes(source)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return path, err.split("\n")


def _assert_at(path: Path, shown: list[str], line: int, column: int, width: int, phrase: str, text: str) -> None:
    """`path:line:col: error: …phrase…`, then `text` (the offending line), then `width` carets under col."""
    assert shown[0].startswith(f"{path}:{line}:{column}: error: "), shown
    assert phrase in shown[0], shown
    assert shown[1] == "    " + text, shown
    assert shown[2] == "    " + " " * (column - 1) + "^" * width, shown


# --- B: the text of the file -------------------------------------------------------------------

def test_form_feed_is_whitespace_and_lines_count_at_newlines(tmp_path, capsys) -> None:
    source = b"diagram d {\n    in x : 8x0e\n\x0c\n    out y : 8x0e\n    y = fuse(x, q) mix uvw\n}\n"
    path, shown = _check(tmp_path, source, capsys)
    _assert_at(path, shown, 5, 17, 1, "unknown name 'q'", "    y = fuse(x, q) mix uvw")


def test_form_feed_on_the_error_line_keeps_the_caret_under_the_token(tmp_path, capsys) -> None:
    source = b"diagram d {\n    in x : 8x0e\n    out y : 8x0e\n\x0c   y = fuse(x, q) mix uvw\n}\n"
    path, shown = _check(tmp_path, source, capsys)
    _assert_at(path, shown, 4, 17, 1, "unknown name 'q'", "    y = fuse(x, q) mix uvw")


@pytest.mark.parametrize("separator", ["\x0b", "\x1c", "\x85", "\u2028", "\u2029"], ids=repr)
def test_characters_that_python_splits_lines_at_do_not_shift_lines(tmp_path, capsys, separator: str) -> None:
    source = f"diagram d {{  # a{separator}b\n    in x : 8x0e\n    out y : 8x0e\n    y = q\n}}\n".encode()
    path, shown = _check(tmp_path, source, capsys)
    _assert_at(path, shown, 4, 9, 1, "unknown name 'q'", "    y = q")


def test_invalid_utf8_is_located_at_its_first_byte(tmp_path, capsys) -> None:
    source = b"diagram d {\n    in x : 8x0e  # caf\xc3\xa9 \xff\xfe\n    out y : 8x0e\n    y = x\n}\n"
    path, shown = _check(tmp_path, source, capsys)
    # "é" is one column: the bad byte 0xff is the 25th character of line 2
    _assert_at(path, shown, 2, 25, 1, "not UTF-8", "    in x : 8x0e  # café \ufffd\ufffd")
    assert "0xff" in shown[0]


def test_invalid_utf8_from_the_console_exits_2_without_traceback(tmp_path) -> None:
    path = tmp_path / "bad.fus"
    path.write_bytes(b"\x80diagram d {}\n")
    env = {"PYTHONPATH": str(REPO), "FUSIONC_CACHE_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "fusionc", "check", str(path)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:1:1: error: the file is not UTF-8 text"), result.stderr
    assert "Traceback" not in result.stderr


def test_byte_order_mark_and_crlf_are_read_as_text(tmp_path, capsys) -> None:
    path = tmp_path / "bom.fus"
    path.write_bytes(b"\xef\xbb\xbfdiagram d {\r\n    in x : 8x0e\r\n    out y : 8x0e\r\n    y = x\r\n}\r\n")
    assert main(["check", str(path)]) == 0
    assert "1 file, 1 diagram: well typed" in capsys.readouterr().out


# --- D: an irrep that is not one ----------------------------------------------------------------

@pytest.mark.parametrize("declaration, column, bad, phrase", [
    ("in x : 8x1y", 12, "8x1y", "'y' is not a parity; write 8x1e (even) or 8x1o (odd)"),
    ("in x : 1y", 12, "1y", "'y' is not a parity; write 1e (even) or 1o (odd)"),
    ("in x : 8x1y + 2e", 12, "8x1y", "'y' is not a parity"),
    ("in x : 2e + 8x1y", 17, "8x1y", "'y' is not a parity"),
    ("out y : 3x2q", 13, "3x2q", "'q' is not a parity; write 3x2e (even) or 3x2o (odd)"),
    ("in x : 8xy", 12, "8xy", "after '8x' comes an irrep"),
    ("in x : 1e5 + 0e", 12, "1e5", "nothing may follow the parity in 1e"),
    ("in x : 2e + 8x(0e + 1y)", 25, "1y", "'y' is not a parity"),
    ("in x : 8x(1y + 0e)", 15, "1y", "'y' is not a parity"),
    ("in x : 2e + z", 17, "z", "an irrep is a degree l and a parity"),
], ids=lambda v: v if isinstance(v, str) and ":" in v else None)
def test_bad_irrep_is_named_whole(tmp_path, capsys, declaration: str, column: int, bad: str, phrase: str) -> None:
    line = f"    {declaration}"
    source = f"diagram d {{\n{line}\n    in s : 0e\n    out z : 0e\n    z = s\n}}\n"
    path, shown = _check(tmp_path, source.encode(), capsys)
    _assert_at(path, shown, 2, column, len(bad), f"'{bad}' is not an irrep: {phrase}", line)


def test_bad_irrep_on_a_continuation_line(tmp_path, capsys) -> None:
    source = "diagram d {\n    in x : 2e +\n           8x1y\n    out z : 2e\n    z = x\n}\n"
    path, shown = _check(tmp_path, source.encode(), capsys)
    _assert_at(path, shown, 3, 12, 4, "'8x1y' is not an irrep", "           8x1y")


def test_bad_irrep_after_a_target_sum(tmp_path, capsys) -> None:
    """After `-> 8x0e +` lark expects a term; a summand that starts like an irrep is one."""
    source = "diagram d {\n    in x : 8x0e\n    out z : 8x0e\n    z = fuse(x, x) -> 8x0e + 8x1y mix uuu\n}\n"
    path, shown = _check(tmp_path, source.encode(), capsys)
    _assert_at(path, shown, 4, 30, 4, "'8x1y' is not an irrep", "    z = fuse(x, x) -> 8x0e + 8x1y mix uuu")


def test_bad_irrep_in_an_so3_file_needs_no_parity(tmp_path, capsys) -> None:
    source = "group SO3\ndiagram d {\n    in x : 8x1y\n    out z : 8x1\n    z = x\n}\n"
    path, shown = _check(tmp_path, source.encode(), capsys)
    _assert_at(path, shown, 3, 12, 4, "'8x1y' is not an irrep: SO(3) irreps are degrees alone, as in 8x1",
               "    in x : 8x1y")


def test_plus_after_something_else_than_irreps_is_a_plain_syntax_error(tmp_path, capsys) -> None:
    source = "diagram d {\n    in w : weights + 2e\n    in x : 8x0e\n    out z : 8x0e\n    z = x\n}\n"
    path, shown = _check(tmp_path, source.encode(), capsys)
    _assert_at(path, shown, 2, 20, 1, "unexpected '+'", "    in w : weights + 2e")


@pytest.mark.parametrize("separator, column, phrase", [
    ("\t", 9, "unknown name 'q'"),
    ("\x0c", 9, "unknown name 'q'"),  # whitespace, as lark reads it
    ("\x0b", 4, "unexpected character '\\x0b'"),  # not whitespace there: an error at itself
    ("\u2028", 4, "unexpected character '\\u2028'"),  # named by its escape, not printed raw
], ids=["tab", "form-feed", "vertical-tab", "line-separator"])
def test_line_shown_with_a_space_for_a_control_or_separator_character(tmp_path, capsys, separator: str, column: int,
                                                                      phrase: str) -> None:
    source = f"diagram d {{\n    in x : 8x0e\n    out y : 8x0e\n   {separator}y = q  # a{separator}b\n}}\n".encode()
    path, shown = _check(tmp_path, source, capsys)
    _assert_at(path, shown, 4, column, 1, phrase, "    y = q  # a b")

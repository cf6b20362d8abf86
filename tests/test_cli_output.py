"""Where `-o` writes: regular files atomically, devices, FIFOs and symlink targets as they are,
and a path it cannot write as a one-line error."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from conftest import REPO
from fusionc.cli import main

CORMORANT = str(REPO / "kernels" / "cormorant.fus")


def _compile_to(output: Path | str) -> int:
    return main(["compile", CORMORANT, "-o", str(output)])


def _expected(tmp_path: Path) -> bytes:
    reference = tmp_path / "reference.py"
    assert _compile_to(reference) == 0
    return reference.read_bytes()


def test_regular_file_is_replaced_whole_and_keeps_its_permissions(tmp_path) -> None:
    expected = _expected(tmp_path)
    out = tmp_path / "ops.py"
    out.write_text("old")
    out.chmod(0o640)
    before = out.stat().st_ino
    assert _compile_to(out) == 0
    assert out.read_bytes() == expected
    assert out.stat().st_ino != before  # renamed over, not rewritten in place
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.py", "reference.py"]


def test_new_file_gets_the_umask_permissions_not_0600(tmp_path) -> None:
    out = tmp_path / "ops.py"
    umask = os.umask(0o022)
    try:
        assert _compile_to(out) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_fifo_is_written_through(tmp_path) -> None:
    expected = _expected(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    try:
        assert _compile_to(fifo) == 0
    finally:
        reader.join(timeout=60)
    assert received == [expected]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_symlink_to_a_regular_file_writes_the_file_and_stays_a_link(tmp_path) -> None:
    expected = _expected(tmp_path)
    real = tmp_path / "real.py"
    real.write_text("old")
    link = tmp_path / "link.py"
    link.symlink_to("real.py")
    assert _compile_to(link) == 0
    assert link.is_symlink() and os.readlink(link) == "real.py"
    assert real.read_bytes() == expected


def test_symlink_to_a_missing_file_creates_the_file(tmp_path) -> None:
    expected = _expected(tmp_path)
    link = tmp_path / "link.py"
    link.symlink_to("made.py")
    assert _compile_to(link) == 0
    assert link.is_symlink() and (tmp_path / "made.py").read_bytes() == expected


@pytest.mark.skipif(not hasattr(os, "mknod") or os.geteuid() != 0, reason="making a device node needs root")
def test_character_device_stays_a_device(tmp_path) -> None:
    """A private copy of /dev/null (same major and minor numbers), so that a regression cannot
    replace the machine's own."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert _compile_to(null) == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_symlink_to_dev_null_leaves_both_alone(tmp_path) -> None:
    """Through a link, so that a regression replaces the link, never /dev/null itself."""
    link = tmp_path / "out.py"
    link.symlink_to("/dev/null")
    assert _compile_to(link) == 0
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("command", [["compile", CORMORANT, "-o"], ["show", CORMORANT, "-o"]])
def test_output_under_a_regular_file_is_a_one_line_error(tmp_path, capsys, command: list[str]) -> None:
    (tmp_path / "afile").write_text("x")
    output = str(tmp_path / "afile" / ("out.py" if command[0] == "compile" else "out.svg"))
    assert main(command + [output]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"fusionc: error: cannot write {output}: Not a directory\n"
    assert "wrote" not in captured.out


def _unwritable_directory(tmp_path: Path) -> Path:
    """A directory where creating a file fails: a read-only one, or for root (whom permissions
    do not stop) /sys, where the kernel refuses new files."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    for directory in (readonly, Path("/sys")):
        try:
            (directory / "probe").touch()
        except OSError:
            return directory
        (directory / "probe").unlink()
    pytest.skip("no directory here refuses new files")


@pytest.mark.parametrize("command", ["compile", "show"])
def test_unwritable_directory_is_a_one_line_error(tmp_path, capsys, command: str) -> None:
    output = str(_unwritable_directory(tmp_path) / ("out.py" if command == "compile" else "out.svg"))
    assert main([command, CORMORANT, "-o", output]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fusionc: error: cannot write {output}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err

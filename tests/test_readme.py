"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _commands()
    assert len(commands) == 2
    assert "fusionc check --numeric kernels/*.fus" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    assert _commands()[1] in (REPO / ".ci" / "run").read_text()


def python_blocks() -> list[str]:
    """The README's Python examples, in order."""
    return re.findall(r"```python\n(.+?)\n```", (REPO / "README.md").read_text(), re.DOTALL)


def test_quick_start_runs_as_written() -> None:
    """Each example that needs no mace-torch, run from the repository root as a user would, with the
    imports of the first (the others continue it)."""
    blocks = [b for b in python_blocks() if "from mace" not in b]
    assert len(blocks) >= 2
    result = subprocess.run([sys.executable, "-c", "\n\n".join(blocks)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]

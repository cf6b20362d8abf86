"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re

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

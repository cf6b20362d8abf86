"""The `>>>` examples in the package's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["fusionc.ir.irreps", "fusionc.algebra.cg", "fusionc.algebra.rotations", "fusionc.frontend.parser",
           "fusionc.source", "fusionc.loader", "fusionc.testing", "fusionc.limits", "fusionc.show",
           "fusionc.backends.triton_aot"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

"""fusionc.nn: a MACE-style interatomic potential built from fusionc diagrams, its data, training,
an ase calculator and deployment (see README, "Potentials")."""

from fusionc.nn.deploy import export
from fusionc.nn.model import Potential

__all__ = ["Calculator", "Potential", "export"]


def __getattr__(name: str):
    if name == "Calculator":  # ase is needed only here
        from fusionc.nn.calculator import Calculator

        return Calculator
    raise AttributeError(f"module 'fusionc.nn' has no attribute {name!r}")

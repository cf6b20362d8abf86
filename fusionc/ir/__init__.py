"""The IR: irreps types and the diagram graph."""

from fusionc.ir.diagram import MODES, CouplingPath, CouplingVertex, Diagram, Input, Value
from fusionc.ir.irreps import Irrep, Irreps, MulIrrep

__all__ = ["MODES", "CouplingPath", "CouplingVertex", "Diagram", "Input", "Irrep", "Irreps", "MulIrrep", "Value"]

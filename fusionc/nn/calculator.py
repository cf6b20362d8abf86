"""An ase calculator that runs a trained `fusionc.nn.Potential`."""

from __future__ import annotations

from pathlib import Path

import torch
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from fusionc.nn.data import collate, graph
from fusionc.nn.model import Potential


class Calculator(_AseCalculator):
    """Energy and forces of an `ase.Atoms` from a potential, or a `model.pt` that training wrote
    (`atoms.calc = Calculator("runs/ethanol/model.pt")`).

    Forces are the exact negative gradient of the energy (autograd), so dynamics conserve energy.
    A structure with an element the model does not know raises a ValueError naming it.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: Potential | str | Path, dtype: torch.dtype | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model if isinstance(model, Potential) else Potential.from_checkpoint(model)
        if dtype is not None:
            self.model.to(dtype)
        self.model.eval()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        dtype = self.model.embedding.dtype
        batch = collate([graph(self.atoms, self.model.cutoff)], self.model.species_index, dtype)
        energy, forces = self.model.energy_and_forces(*batch.inputs())
        e = float(energy[0])
        self.results = {"energy": e, "free_energy": e, "forces": forces.detach().to(torch.float64).numpy()}

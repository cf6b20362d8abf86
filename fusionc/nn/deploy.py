"""Deploy a potential: its energy-and-forces function exported with `torch.export`, as a program
(`torch.export.save`) or an AOTInductor package, loadable by `fusionc.runtime.deploy.load` in a
process that has torch and fusionc's runtime alone."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import fusionc
from fusionc.nn.model import Potential
from fusionc.runtime.deploy import add_extra


class EnergyAndForces(torch.nn.Module):
    """One structure's energy (1,) and forces (atoms, 3): the function a deployed potential runs."""

    def __init__(self, model: Potential) -> None:
        super().__init__()
        self.model = model

    def forward(self, positions, species, src, dst, shifts, batch):
        return self.model.energy_and_forces(positions, species, src, dst, shifts, batch, 1)


def _example(model: Potential, dtype: torch.dtype):
    """Four atoms (every species in turn) closer than the cutoff, every pair an edge: the example
    inputs export traces with (atoms and edges are dynamic dimensions)."""
    n = 4
    generator = torch.Generator().manual_seed(0)
    positions = torch.rand(n, 3, generator=generator, dtype=dtype) * (model.cutoff / 3)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    src = torch.tensor([i for i, _ in pairs])
    dst = torch.tensor([j for _, j in pairs])
    species = torch.arange(n) % len(model.atomic_numbers)
    return positions, species, src, dst, torch.zeros(len(pairs), 3, dtype=dtype), torch.zeros(n, dtype=torch.int64)


def export(model: Potential, path: str | Path, aoti: bool = True) -> Path:
    """Write `model`'s energy-and-forces function to `path` (.pt2): an AOTInductor package (`aoti`,
    compiled C++ around fusionc's ops) or an exported program; either loads with
    `fusionc.runtime.deploy.load(path)`. The model's dtype is the program's."""
    path = Path(path)
    dtype = model.embedding.dtype
    wrapper = EnergyAndForces(model.eval())
    atoms, edges = torch.export.Dim("atoms", min=2), torch.export.Dim("edges", min=1)
    program = torch.export.export(wrapper, _example(model, dtype), strict=False,
                                  dynamic_shapes=({0: atoms}, {0: atoms}, {0: edges}, {0: edges}, {0: edges},
                                                  {0: atoms}))
    tmp = path.with_name(path.stem + ".tmp.pt2")  # written whole, then moved into place
    if aoti:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    else:
        torch.export.save(program, tmp)
    generated = sorted({type(m).__module__ for m in model.modules() if type(m).__module__.startswith("fusionc_generated_")})
    add_extra(tmp, {"modules": {name: Path(sys.modules[name].__file__).read_text() for name in generated},
                    "atomic_numbers": model.atomic_numbers, "cutoff": model.cutoff,
                    "dtype": str(dtype).removeprefix("torch."), "fusionc": fusionc.__version__})
    tmp.replace(path)
    return path

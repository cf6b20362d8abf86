"""Structures as graphs for `fusionc.nn.Potential`: neighbour lists, datasets read with ase, batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Graph:
    """One structure: atomic numbers, positions (Å), edges within the cutoff (an edge from each
    neighbour `src` to the atom `dst`, with the periodic images' offset `shifts` in Å) and, for
    training data, the reference energy (eV) and forces (eV/Å)."""

    numbers: np.ndarray
    positions: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    shifts: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None


def graph(atoms, cutoff: float, *, labelled: bool = False, where: str = "structure") -> Graph:
    """The graph of an `ase.Atoms`: with `labelled`, its energy and forces from its calculator (a
    ValueError names `where` if it has none)."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        raise ValueError(f"{where} is empty: it has no atoms")
    i, j, offsets = neighbor_list("ijS", atoms, cutoff)
    energy = forces = None
    if labelled:
        calc = atoms.calc
        results = getattr(calc, "results", {}) if calc is not None else {}
        if "energy" not in results and "free_energy" not in results:
            raise ValueError(f"{where} has no energy")
        if "forces" not in results:
            raise ValueError(f"{where} has no forces")
        energy = float(results.get("energy", results.get("free_energy")))
        forces = np.asarray(results["forces"], dtype=np.float64)
    return Graph(np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64),
                 np.asarray(j, dtype=np.int64), np.asarray(i, dtype=np.int64),
                 offsets.astype(np.float64) @ np.asarray(atoms.cell, dtype=np.float64), energy, forces)


def read_dataset(path: str | Path, cutoff: float) -> list[Graph]:
    """Every frame of an ase-readable file (extxyz, …) as a labelled graph; a ValueError names the
    file and frame that is empty or lacks an energy or forces."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset {path} does not exist")
    try:
        frames = ase.io.read(path, ":")
    except Exception as error:  # ase raises many kinds for a malformed file
        raise ValueError(f"dataset {path} could not be read: {error}") from error
    if not frames:
        raise ValueError(f"dataset {path} has no frames")
    return [graph(atoms, cutoff, labelled=True, where=f"{path} frame {k}") for k, atoms in enumerate(frames)]


@dataclass
class Batch:
    """Graphs concatenated for one call of the potential: `inputs()` are its arguments."""

    positions: torch.Tensor
    species: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    atoms: torch.Tensor          # per graph: its number of atoms
    energy: torch.Tensor | None
    forces: torch.Tensor | None

    def inputs(self) -> tuple:
        return self.positions, self.species, self.src, self.dst, self.shifts, self.batch, self.num_graphs


def collate(graphs: list[Graph], species_index, dtype: torch.dtype = torch.float64) -> Batch:
    """One batch of `graphs`; `species_index` maps atomic numbers to the model's species (and names
    unknown ones)."""
    offsets = np.cumsum([0] + [len(g.numbers) for g in graphs])
    cat = np.concatenate
    labelled = all(g.energy is not None for g in graphs)
    return Batch(
        positions=torch.tensor(cat([g.positions for g in graphs]), dtype=dtype),
        species=species_index(torch.tensor(cat([g.numbers for g in graphs]))),
        src=torch.tensor(cat([g.src + o for g, o in zip(graphs, offsets)])),
        dst=torch.tensor(cat([g.dst + o for g, o in zip(graphs, offsets)])),
        shifts=torch.tensor(cat([g.shifts for g in graphs]), dtype=dtype),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(np.diff(offsets))),
        num_graphs=len(graphs),
        atoms=torch.tensor(np.diff(offsets), dtype=dtype),
        energy=torch.tensor([g.energy for g in graphs], dtype=dtype) if labelled else None,
        forces=torch.tensor(cat([g.forces for g in graphs]), dtype=dtype) if labelled else None)


def statistics(graphs: list[Graph], atomic_numbers: list[int]) -> dict:
    """What a potential is normalised with, from its training set: per-species reference energies
    E0 (least squares of the energies on the species counts), the shift (mean energy per atom left
    after E0), the scale (RMS of the force components) and the mean number of neighbours."""
    counts = np.array([[np.sum(g.numbers == z) for z in atomic_numbers] for g in graphs], dtype=np.float64)
    energies = np.array([g.energy for g in graphs])
    e0 = np.linalg.lstsq(counts, energies, rcond=None)[0]
    atoms = counts.sum(axis=1)
    shift = float(np.mean((energies - counts @ e0) / atoms))
    forces = np.concatenate([g.forces.ravel() for g in graphs])
    scale = float(np.sqrt(np.mean(forces ** 2))) or 1.0
    neighbors = float(sum(len(g.src) for g in graphs) / atoms.sum())
    return {"atomic_energies": e0.tolist(), "shift": shift, "scale": scale, "avg_num_neighbors": neighbors}

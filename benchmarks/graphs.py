"""Real molecular graphs for the message-passing benchmark, made here with `ase` (no download):
a periodic box of liquid water replicated to the size asked for, and a batch of `ase`'s g2
molecules, each with its neighbour list (`tests/test_cli_benchmarks.py` checks them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: 64 molecules at 1 g/cm³: (64 · 18.015 g/mol / N_A / 1 g/cm³)^(1/3), in Å
WATER_BOX = (64 * 18.015 / 0.602214076) ** (1 / 3)


@dataclass(frozen=True)
class Graph:
    """Edges j -> i for every pair closer than the cutoff: `src` the sender j, `dst` the receiver
    i, `vectors` r_j - r_i (periodic images included), in the order `ase` lists them (by receiver)."""

    name: str
    atoms: int
    src: torch.Tensor
    dst: torch.Tensor
    vectors: torch.Tensor

    @property
    def edges(self) -> int:
        return int(self.src.numel())


def _graph(name: str, atoms, cutoff: float) -> Graph:
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijD", atoms, cutoff)
    return Graph(name, len(atoms), torch.from_numpy(j).long(), torch.from_numpy(i).long(), torch.from_numpy(d))


def water_box(seed: int = 0, apart: float = 1.6):
    """64 water molecules on a 4 × 4 × 4 grid in a periodic cube at 1 g/cm³, each turned at random
    and shaken by up to 0.3 Å (`seed`), drawn again until its atoms are at least `apart` Å from
    every other molecule's (periodic images included): a liquid's hydrogen bonds, no overlaps."""
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    h2o = molecule("H2O")
    local = h2o.positions - h2o.get_center_of_mass()
    spacing = WATER_BOX / 4
    placed = np.zeros((0, 3))
    for x in range(4):
        for y in range(4):
            for z in range(4):
                for _ in range(1000):
                    turn, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random orthogonal matrix
                    centre = (np.array([x, y, z]) + 0.5) * spacing + rng.uniform(-0.3, 0.3, 3)
                    atoms = local @ turn.T + centre
                    gaps = atoms[:, None] - placed[None]
                    gaps -= WATER_BOX * np.round(gaps / WATER_BOX)  # the nearest periodic image
                    if not len(placed) or np.linalg.norm(gaps, axis=-1).min() >= apart:
                        break
                else:
                    raise RuntimeError("no room for a water molecule: lower `apart`")
                placed = np.concatenate([placed, atoms])
    return Atoms(h2o.get_chemical_symbols() * 64, positions=placed, cell=[WATER_BOX] * 3, pbc=True)


def water(repeat: int | tuple[int, int, int], cutoff: float = 5.0) -> Graph:
    """The water box replicated `repeat` times along each axis (192 atoms per box)."""
    repeat = (repeat,) * 3 if isinstance(repeat, int) else repeat
    atoms = water_box().repeat(repeat)
    return _graph("water", atoms, cutoff)


def g2(cutoff: float = 5.0) -> Graph:
    """Every molecule of `ase`'s g2 set as one batch, without periodicity: the graph of each
    molecule, its node numbers shifted after the last's."""
    from ase.collections import g2 as collection

    parts, offset = [], 0
    for atoms in collection:
        g = _graph("", atoms, cutoff)
        parts.append((g.src + offset, g.dst + offset, g.vectors))
        offset += g.atoms
    src, dst, vectors = (torch.cat(x) for x in zip(*parts))
    return Graph(f"g2 batch of {len(collection)} molecules", offset, src, dst, vectors)

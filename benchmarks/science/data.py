"""Make the experiment's data offline: molecular dynamics with GFN2-xTB energies and forces (tblite).

    python -m benchmarks.science.data [--out DIR] [--frames N] [--quick]

Writes `DIR/{ethanol,malonaldehyde,stilbene}.extxyz` (ase-readable: `ase.io.read(path, ":")`,
energies in eV, forces in eV/Å, each frame's origin in `atoms.info["source"]`) and `DIR/meta.json`
(seeds, settings, the time each molecule took). DIR defaults to `benchmarks/science/data/`, which git
ignores: the files are made, never committed or downloaded.

- ethanol and malonaldehyde: Langevin dynamics at 500 K (time step 0.5 fs, friction 0.01/fs),
  1 ps of equilibration from the relaxed structure, then one frame every 10 fs;
- stilbene: the same in the trans basin and in the cis basin (each from its relaxed structure), plus
  frames along the C=C torsion: at each of 19 dihedral angles from 0° (cis) to 180° (trans) a
  constrained relaxation and a short constrained Langevin run, one frame every 10 fs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data"
TEMPERATURE = 500.0
TIME_STEP = 0.5      # fs
STRIDE = 20          # steps between frames: 10 fs
EQUILIBRATION = 2000  # steps: 1 ps
SEEDS = {"ethanol": 1, "malonaldehyde": 2, "stilbene": 3}


def calculator():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def _relax(atoms, fmax: float = 0.01, steps: int = 500) -> None:
    from ase.optimize import BFGS

    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)


def malonaldehyde():
    """Malonaldehyde in its enol form (the intramolecular hydrogen bond closed), before relaxation."""
    from ase import Atoms

    return Atoms("OCCCOHHHH", positions=[
        (-1.23, 1.10, 0.0), (-1.22, -0.14, 0.0), (0.00, -0.83, 0.0), (1.19, -0.13, 0.0), (1.25, 1.19, 0.0),
        (0.12, 1.46, 0.0), (-2.17, -0.70, 0.0), (0.00, -1.91, 0.0), (2.12, -0.69, 0.0)])


def stilbene(cis: bool):
    """Stilbene (C14H12) built from bond lengths and angles, the phenyls turned 45° (both basins
    relax from there). Atom 0 and 1 are the ethylene carbons; 2 and 3 the phenyls' ipso carbons, so
    the C=C torsion is the dihedral (2, 0, 1, 3)."""
    from ase import Atoms

    def unit(angle):
        return np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle)), 0.0])

    c7, c8 = np.array([-0.67, 0.0, 0.0]), np.array([0.67, 0.0, 0.0])
    ring_dirs = (120.0, 60.0 if cis else -60.0)
    h_dirs = (240.0, -60.0 if cis else 60.0)
    symbols, positions = ["C", "C"], [c7, c8]
    rings = []
    for centre_c, angle, twist in zip((c7, c8), ring_dirs, (45.0, 45.0)):
        d = unit(angle)
        ipso = centre_c + 1.47 * d
        symbols.append("C")
        positions.append(ipso)
        rings.append((ipso, d, twist))
    for centre_c, angle in zip((c7, c8), h_dirs):
        symbols.append("H")
        positions.append(centre_c + 1.09 * unit(angle))
    for ipso, d, twist in rings:
        centre = ipso + 1.39 * d
        # the ring's plane contains d and a normal to d turned by `twist` about d
        perp = np.cross(d, [0.0, 0.0, 1.0])
        perp = np.cos(np.radians(twist)) * perp + np.sin(np.radians(twist)) * np.cross(d, perp)
        for k in range(1, 6):
            direction = -np.cos(np.radians(60 * k)) * d + np.sin(np.radians(60 * k)) * perp
            symbols.append("C")
            positions.append(centre + 1.39 * direction)
            symbols.append("H")
            positions.append(centre + 2.47 * direction)
    return Atoms(symbols, positions=np.array(positions))


def _dynamics(atoms, frames: int, seed: int, source: str, equilibrate: int = EQUILIBRATION):
    """Langevin dynamics at TEMPERATURE; `frames` snapshots STRIDE steps apart, each a copy with its
    energy and forces (a SinglePointCalculator)."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE, rng=rng)
    md = Langevin(atoms, TIME_STEP * units.fs, temperature_K=TEMPERATURE, friction=0.01 / units.fs, fixcm=False,
                  rng=rng)
    if equilibrate:
        md.run(equilibrate)
    out = []
    for _ in range(frames):
        md.run(STRIDE)
        frame = atoms.copy()
        frame.constraints = []
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frame.info["source"] = source
        out.append(frame)
    return out


def _molecule(name: str):
    from ase.build import molecule

    atoms = molecule("CH3CH2OH") if name == "ethanol" else malonaldehyde()
    atoms.calc = calculator()
    _relax(atoms)
    return atoms


def _stilbene_frames(frames: int, seed: int) -> list:
    from ase.constraints import FixInternals

    out = []
    basins = {}
    for i, (label, cis) in enumerate((("trans", False), ("cis", True))):
        atoms = stilbene(cis)
        atoms.calc = calculator()
        _relax(atoms)
        basins[label] = atoms.copy()
        out += _dynamics(atoms, frames * 2 // 5, seed + i, f"stilbene {label} basin")
    per_angle = max(1, (frames - len(out)) // 19)
    start = basins["trans"]
    for k, angle in enumerate(np.linspace(180.0, 0.0, 19)):
        atoms = start.copy()
        atoms.calc = calculator()
        atoms.set_dihedral(2, 0, 1, 3, angle, mask=_half(atoms))
        atoms.set_constraint(FixInternals(dihedrals_deg=[[angle, [2, 0, 1, 3]]]))
        _relax(atoms, fmax=0.05, steps=100)
        start = atoms.copy()
        out += _dynamics(atoms, per_angle, seed + 10 + k, f"stilbene torsion {angle:.0f} deg", equilibrate=200)
    return out


def _half(atoms) -> list[int]:
    """The atoms on the far side of the C=C bond (atom 1 and what hangs on it), for set_dihedral."""
    from ase.neighborlist import natural_cutoffs, NeighborList

    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=True)
    nl.update(atoms)
    side, todo = {1}, [1]
    while todo:
        i = todo.pop()
        for j in nl.get_neighbors(i)[0]:
            if j != 0 and j not in side:
                side.add(int(j))
                todo.append(int(j))
    return [1 if i in side else 0 for i in range(len(atoms))]


def make(name: str, frames: int) -> list:
    """The frames of one molecule (see the module's docstring)."""
    seed = SEEDS[name]
    if name == "stilbene":
        return _stilbene_frames(frames, seed)
    return _dynamics(_molecule(name), frames, seed, f"{name} 500 K")


def main(argv: list[str] | None = None) -> int:
    import ase.io

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--frames", type=int, default=2000, help="frames per molecule (default 2000)")
    parser.add_argument("--molecules", nargs="+", default=list(SEEDS), choices=list(SEEDS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["settings"] = {"method": "GFN2-xTB (tblite)", "temperature_K": TEMPERATURE, "time_step_fs": TIME_STEP,
                        "frame_interval_fs": TIME_STEP * STRIDE, "equilibration_fs": TIME_STEP * EQUILIBRATION,
                        "seeds": SEEDS}
    for name in args.molecules:
        start = time.perf_counter()
        frames = make(name, args.frames)
        seconds = time.perf_counter() - start
        path = args.out / f"{name}.extxyz"
        tmp = path.with_suffix(".tmp")
        ase.io.write(tmp, frames, format="extxyz")
        tmp.replace(path)
        meta[name] = {"frames": len(frames), "seconds": round(seconds, 1), "atoms": len(frames[0])}
        print(f"{name}: {len(frames)} frames of {len(frames[0])} atoms in {seconds:.0f} s -> {path}", flush=True)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

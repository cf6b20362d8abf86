"""NVE molecular dynamics of ethanol with a trained fusionc.nn potential (ase, velocity Verlet):
how well the total energy is conserved, which needs forces that are the exact gradient of the energy.

    python -m benchmarks.science.md [--model benchmarks/science/runs/ethanol/fusionc_fusion/seed0/model.pt]
                                    [--ps 10] [--step 0.5] [--dtype float64]

Starts from the first frame of the ethanol dataset with Maxwell–Boltzmann velocities at 300 K (seed 0),
records the total energy every 10 steps; reports its drift (slope of a linear fit, meV/ps and
meV/ps per atom) and its largest deviation from the start. Writes benchmarks/results/md.json and md.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import write_readme

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def run(model_path: Path, data: Path, picoseconds: float, step_fs: float, dtype: str, temperature: float = 300.0):
    import ase.io
    import torch
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    from fusionc.nn import Calculator

    atoms = ase.io.read(data, 0)
    atoms.calc = Calculator(model_path, dtype=getattr(torch, dtype))
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    md = VelocityVerlet(atoms, step_fs * units.fs)
    steps = int(round(picoseconds * 1000 / step_fs))
    times, energies, potential = [], [], []

    def record():
        times.append(md.nsteps * step_fs / 1000)
        energies.append(atoms.get_total_energy())
        potential.append(atoms.get_potential_energy())

    md.attach(record, interval=10)  # ase calls it at the start too
    start = time.perf_counter()
    md.run(steps)
    seconds = time.perf_counter() - start
    t, e = np.array(times), np.array(energies)
    slope = np.polyfit(t, e, 1)[0]
    return {"model": str(model_path), "dtype": dtype, "picoseconds": picoseconds, "time_step_fs": step_fs,
            "steps": steps, "atoms": len(atoms), "temperature_K": temperature, "seconds": seconds,
            "ms_per_step": 1000 * seconds / steps, "drift_meV_per_ps": 1000 * slope,
            "drift_meV_per_ps_per_atom": 1000 * slope / len(atoms),
            "max_deviation_meV": 1000 * float(np.abs(e - e[0]).max()),
            "potential_energy_range_meV": 1000 * float(np.ptp(potential)),
            "times_ps": t.tolist(), "total_energy_eV": e.tolist()}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, e = np.array(result["times_ps"]), np.array(result["total_energy_eV"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(t, 1000 * (e - e[0]))
    ax.set(xlabel="time (ps)", ylabel="total energy − start (meV)",
           title=f"NVE ethanol, {result['time_step_fs']} fs steps: drift {result['drift_meV_per_ps']:.3f} meV/ps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path,
                        default=REPO / "benchmarks" / "science" / "runs" / "ethanol" / "fusionc_fusion" / "seed0" / "model.pt")
    parser.add_argument("--data", type=Path, default=REPO / "benchmarks" / "science" / "data" / "ethanol.extxyz")
    parser.add_argument("--ps", type=float, default=10.0)
    parser.add_argument("--step", type=float, default=0.5, help="time step in fs")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = parser.parse_args(argv)
    for path in (args.model, args.data):
        if not path.exists():
            print(f"{path} does not exist (train first: python -m benchmarks.science.run)", file=sys.stderr)
            return 2
    result = run(args.model, args.data, args.ps, args.step, args.dtype)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "md.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.results / "md.png")
    model = args.model.resolve()
    shown = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    line = (f"{result['picoseconds']:g} ps of NVE ({result['steps']} steps of {result['time_step_fs']:g} fs, "
            f"{result['dtype']}, model `{shown}`): "
            f"drift {result['drift_meV_per_ps']:.4f} meV/ps ({result['drift_meV_per_ps_per_atom']:.5f} meV/ps per atom), "
            f"largest deviation of the total energy from its start {result['max_deviation_meV']:.3f} meV while the "
            f"potential energy spans {result['potential_energy_range_meV']:.0f} meV; {result['ms_per_step']:.2f} ms "
            f"per step on one structure (ase calculator, 2 threads).")
    print(line)
    if not args.no_readme:
        write_readme("md", line, "python -m benchmarks.science.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

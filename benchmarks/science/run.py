"""The experiment: does a fusion block beat MACE's product basis? Per molecule, three models at the
same width, trained by the same loop (`fusionc.nn.train`) on the same split with the same budget,
three seeds each:

- `fusionc mace`: fusionc.nn's potential with MACE's product (kernels/potential_mace.fus);
- `fusionc fusion`: the same with the fusion block (kernels/potential_fusion.fus);
- `mace-torch`: mace-torch's own ScaleShiftMACE with matching settings (the outside anchor, run in
  the mace environment: `benchmarks/science/mace_anchor.py`).

    python -m benchmarks.science.data                      # first: the data (GFN2-xTB, offline)
    python -m benchmarks.science.run [--mace-python .venv-mace/bin/python] [--epochs N] [--minutes M]

Each training runs in its own process on one thread, two at a time (2 CPUs), so every run sees the
same contention and seconds per epoch compare across models. Writes benchmarks/results/science.json,
the learning curves benchmarks/results/science.png and the README's science table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import write_readme

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO / "benchmarks" / "science" / "data"
MOLECULES = ("ethanol", "malonaldehyde", "stilbene")
MODELS = {"fusionc mace": "mace", "fusionc fusion": "fusion", "mace-torch": None}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks" / "science" / "runs")
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=MOLECULES)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=500, help="training frames (default 500)")
    parser.add_argument("--valid", type=int, default=50)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-time budget per training")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each)")
    parser.add_argument("--mace-python", default=str(REPO / ".venv-mace" / "bin" / "python"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where science.json and science.png go")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--job", nargs=3, metavar=("MOLECULE", "MODEL", "SEED"), help=argparse.SUPPRESS)
    return parser


def config(molecule: str, model: str, seed: int, args) -> dict:
    from fusionc.nn.train import validate

    return validate({
        "data": {"path": str(args.data / f"{molecule}.extxyz"), "train": args.train, "valid": args.valid,
                 "test": args.test, "seed": 0},
        "model": {"product": MODELS[model] or "mace", "dtype": "float32", "atomic_numbers": [1, 6, 8]},
        "train": {"out": str(_run_dir(args, molecule, model, seed)), "epochs": args.epochs,
                  "max_minutes": args.minutes, "batch_size": args.batch_size, "seed": seed, "threads": 1,
                  "progress": False}}, "experiment")


def _run_dir(args, molecule: str, model: str, seed: int) -> Path:
    return args.runs / molecule / model.replace(" ", "_") / f"seed{seed}"


def job(args) -> int:
    """One training, in this process; its results (and learning curve) as one JSON line."""
    from fusionc.nn.train import train

    molecule, model, seed = args.job[0], args.job[1], int(args.job[2])
    make_model = None
    if MODELS[model] is None:
        from benchmarks.science.mace_anchor import make_model
    results = train(config(molecule, model, seed, args), make_model=make_model)
    history = json.loads((_run_dir(args, molecule, model, seed) / "history.json").read_text())
    print(json.dumps({"molecule": molecule, "model": model, "seed": seed, **results, "history": history}))
    return 0


def _launch(args, molecule: str, model: str, seed: int) -> dict:
    python = args.mace_python if MODELS[model] is None else sys.executable
    command = [python, "-m", "benchmarks.science.run", "--job", molecule, model, str(seed),
               "--data", str(args.data), "--runs", str(args.runs), "--train", str(args.train),
               "--valid", str(args.valid), "--test", str(args.test), "--epochs", str(args.epochs),
               "--minutes", str(args.minutes), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{molecule} / {model} / seed {seed} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{molecule:14s} {model:15s} seed {seed}: E MAE {result['test_energy_mae_meV']:7.2f} meV, "
          f"F MAE {result['test_forces_mae_meV_per_A']:7.2f} meV/Å, {result['epochs']} epochs, "
          f"{result['seconds_per_epoch']:.1f} s/epoch ({time.perf_counter() - start:.0f} s)", flush=True)
    return result


def summarise(runs: list[dict]) -> list[dict]:
    """Per molecule and model: parameters, and the mean and standard deviation over seeds."""
    import numpy as np

    rows = []
    for molecule in MOLECULES:
        for model in MODELS:
            mine = [r for r in runs if r["molecule"] == molecule and r["model"] == model]
            if not mine:
                continue
            stat = lambda key: (float(np.mean([r[key] for r in mine])), float(np.std([r[key] for r in mine])))  # noqa: E731
            rows.append({"molecule": molecule, "model": model, "seeds": len(mine), "parameters": mine[0]["parameters"],
                         "product_parameters": mine[0]["product_parameters"], "energy_mae_meV": stat("test_energy_mae_meV"),
                         "forces_mae_meV_per_A": stat("test_forces_mae_meV_per_A"),
                         "seconds_per_epoch": stat("seconds_per_epoch"), "epochs": stat("epochs")})
    return rows


def table(rows: list[dict], settings: dict) -> str:
    lines = ["| molecule | model | parameters (product blocks) | E MAE (meV) | F MAE (meV/Å) | s/epoch | epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['molecule']} | {r['model']} | {r['parameters']:,} ({r['product_parameters']:,}) | "
                     f"{r['energy_mae_meV'][0]:.1f} ± {r['energy_mae_meV'][1]:.1f} | "
                     f"{r['forces_mae_meV_per_A'][0]:.1f} ± {r['forces_mae_meV_per_A'][1]:.1f} | "
                     f"{r['seconds_per_epoch'][0]:.1f} | {r['epochs'][0]:.0f} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    molecules = [m for m in MOLECULES if any(r["molecule"] == m for r in runs)]
    fig, axes = plt.subplots(1, len(molecules), figsize=(5 * len(molecules), 4), squeeze=False)
    for ax, molecule in zip(axes[0], molecules):
        for model in MODELS:
            mine = [r for r in runs if r["molecule"] == molecule and r["model"] == model]
            if not mine:
                continue
            epochs = min(len(r["history"]) for r in mine)
            curve = np.array([[h["valid_forces_mae_meV_per_A"] for h in r["history"][:epochs]] for r in mine])
            x = np.arange(1, epochs + 1)
            line, = ax.plot(x, curve.mean(0), label=model)
            ax.fill_between(x, curve.min(0), curve.max(0), color=line.get_color(), alpha=0.2)
        ax.set(title=molecule, xlabel="epoch", ylabel="validation force MAE (meV/Å)", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.job:
        return job(args)
    for molecule in args.molecules:
        if not (args.data / f"{molecule}.extxyz").exists():
            print(f"no data for {molecule} in {args.data}: run `python -m benchmarks.science.data` first",
                  file=sys.stderr)
            return 2
    tasks = [(m, model, seed) for m in args.molecules for seed in range(args.seeds) for model in args.models]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda t: _launch(args, *t), tasks))
    rows = summarise(runs)
    settings = {k: getattr(args, k) for k in ("train", "valid", "test", "epochs", "minutes", "batch_size", "seeds")}
    meta = json.loads((args.data / "meta.json").read_text()) if (args.data / "meta.json").exists() else {}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "science.json").write_text(json.dumps({"settings": settings, "data": meta, "rows": rows,
                                                            "runs": runs}, indent=1) + "\n")
    plot(runs, args.results / "science.png")
    text = table(rows, settings)
    print(text)
    print(f"{len(runs)} trainings in {(time.perf_counter() - start) / 60:.0f} min")
    if not args.no_readme:
        write_readme("science", _readme_block(text, settings, meta), "python -m benchmarks.science.run")
    return 0


def _readme_block(text: str, settings: dict, meta: dict) -> str:
    data = ", ".join(f"{m} {meta[m]['frames']} frames in {meta[m]['seconds']:.0f} s" for m in MOLECULES if m in meta)
    return (f"{text}\n\nTest-set MAEs (mean ± standard deviation over {settings['seeds']} seeds; energy per "
            f"structure, forces per component) after at most {settings['epochs']} epochs or "
            f"{settings['minutes']:g} minutes of training each, {settings['train']} training and "
            f"{settings['valid']} validation frames, batch {settings['batch_size']}, float32, one thread per "
            f"training and two trainings at once. Data (GFN2-xTB): {data}. Learning curves: "
            f"`benchmarks/results/science.png`.")


if __name__ == "__main__":
    sys.exit(main())

"""A whole mace-torch model with its products swapped (`fusionc.compat.mace.accelerate`) against the
same model as mace-torch builds it: energy and forces, and a training step (energy and force loss,
forces with create_graph, backward to every weight), float32 and float64, 64 and 128 channels.
Both models hold the same weights; their energies and forces are compared before anything is timed.
The two take turns call by call (`time_alternating`); medians. Writes README's mace-model section.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .venv-mace/bin/python -m benchmarks.mace_model [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import relative_error, summary, time_alternating, write_readme  # noqa: E402
from fusionc.nn.train import _default_dtype  # noqa: E402

ELEMENTS = [1, 6, 8]
MOLECULES = ("CH3CH2OH", "CH3COOH", "H2CCO", "CH3OCH3")


def build(channels: int, dtype: torch.dtype, seed: int = 0):
    """ScaleShiftMACE: 2 interactions, hidden `channels`x(0e + 1o), spherical harmonics and product
    inputs to l = 3, correlation 3, 8 Bessel functions, radial MLP [64, 64, 64], H, C and O. The
    atomic reference energies are zero, so that comparisons see the whole energy the layers make."""
    from e3nn import o3
    from mace.modules import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock, ScaleShiftMACE

    with _default_dtype(torch.float64):  # MACE builds its U matrices in the default dtype
        torch.manual_seed(seed)
        model = ScaleShiftMACE(
            atomic_inter_scale=1.0, atomic_inter_shift=0.0, r_max=5.0, num_bessel=8, num_polynomial_cutoff=6,
            max_ell=3, interaction_cls=RealAgnosticResidualInteractionBlock,
            interaction_cls_first=RealAgnosticInteractionBlock, num_interactions=2, num_elements=len(ELEMENTS),
            hidden_irreps=o3.Irreps(f"{channels}x0e + {channels}x1o"), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(ELEMENTS)), avg_num_neighbors=8.0, atomic_numbers=ELEMENTS,
            correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64])
    return model.to(dtype)


def batch(dtype: torch.dtype, copies: int = 4, seed: int = 0, molecules: tuple[str, ...] = MOLECULES) -> dict[str, torch.Tensor]:
    """`copies` of each of `molecules` (ase's geometries, displaced by 0.1 Å), as MACE's data loader
    batches them."""
    from ase.build import molecule
    from mace import data, tools

    rng = np.random.default_rng(seed)
    configs = []
    for name in molecules * copies:
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        configs.append(data.config_from_atoms(atoms))
    table = tools.AtomicNumberTable(ELEMENTS)
    graphs = [data.AtomicData.from_config(c, z_table=table, cutoff=5.0) for c in configs]
    loader = tools.torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)
    out = next(iter(loader)).to_dict()
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}


def energy_and_forces(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(dict(inputs), compute_force=True, training=False)
    return out["energy"].detach(), out["forces"].detach()


def training_step(model, inputs: dict) -> None:
    """Energy and force loss (forces with create_graph), backpropagated to every weight."""
    out = model(dict(inputs), compute_force=True, training=True)
    loss = (out["energy"] ** 2).mean() + (out["forces"] ** 2).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 channels, 3 repeats: a check that it runs")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    from fusionc.compat.mace import accelerate

    widths = (16,) if args.quick else (64, 128)
    repeats = 3 if args.quick else args.repeats
    rows = []
    for channels in widths:
        for dtype in (torch.float32, torch.float64):
            mace, fast = build(channels, dtype), accelerate(build(channels, dtype))
            inputs = batch(dtype)
            (e_ref, f_ref), (e, f) = energy_and_forces(mace, inputs), energy_and_forces(fast, inputs)
            de, df = relative_error(e, e_ref), relative_error(f, f_ref)
            bound = 1e-4 if dtype == torch.float32 else 1e-10
            if de > bound or df > bound:
                raise SystemExit(f"accelerated model differs from mace-torch's: energy {de:.2e}, forces {df:.2e}")
            row = {"channels": channels, "dtype": str(dtype).removeprefix("torch."), "atoms": int(inputs["positions"].shape[0]),
                   "energy_rel_err": de, "forces_rel_err": df}
            for task, fn in (("energy+forces", energy_and_forces), ("training step", training_step)):
                times = time_alternating({"mace": lambda: fn(mace, inputs), "fusionc": lambda: fn(fast, inputs)}, repeats)
                row[task] = {name: summary(t)["median_ms"] for name, t in times.items()}
            rows.append(row)
            print(row, flush=True)
    lines = ["| channels | dtype | energy+forces: mace-torch / accelerated (ms) | speed-up | training step (ms) | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ef, ts = r["energy+forces"], r["training step"]
        lines.append(f"| {r['channels']} | {r['dtype']} | {ef['mace']:.0f} / {ef['fusionc']:.0f} | "
                     f"{ef['mace'] / ef['fusionc']:.2f}× | {ts['mace']:.0f} / {ts['fusionc']:.0f} | "
                     f"{ts['mace'] / ts['fusionc']:.2f}× |")
    markdown = "\n".join(lines)
    print(markdown)
    if not args.quick:
        write_readme("mace-model", markdown, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .venv-mace/bin/python -m benchmarks.mace_model")


if __name__ == "__main__":
    main()

"""mace-torch's own MACE with the settings of fusionc.nn's potential, behind the interface that
`fusionc.nn.train` trains: the experiment's outside anchor. Runs in the environment that has
mace-torch (`.venv-mace`: it pins e3nn 0.4.4)."""

from __future__ import annotations

import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fusionc.nn.data import statistics  # noqa: E402
from fusionc.nn.train import _default_dtype  # noqa: E402


class MaceAnchor(torch.nn.Module):
    """ScaleShiftMACE: 2 interactions (the first without residual, as MACE builds it), hidden irreps
    `channels`x(0e + 1o) and scalars in the last layer, spherical harmonics to l = 3, correlation 3,
    8 Bessel functions under a polynomial cutoff (p = 6), radial MLP [64, 64, 64], readout MLP 16x0e."""

    def __init__(self, atomic_numbers: list[int], stats: dict, cutoff: float, channels: int = 32,
                 num_bessel: int = 8, radial_hidden: tuple[int, ...] = (64, 64, 64), readout_hidden: int = 16) -> None:
        super().__init__()
        from e3nn import o3
        from mace.modules import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock, ScaleShiftMACE

        self.atomic_numbers = list(atomic_numbers)
        self.mace = ScaleShiftMACE(
            atomic_inter_scale=stats["scale"], atomic_inter_shift=stats["shift"], r_max=cutoff,
            num_bessel=num_bessel, num_polynomial_cutoff=6, max_ell=3,
            interaction_cls=RealAgnosticResidualInteractionBlock, interaction_cls_first=RealAgnosticInteractionBlock,
            num_interactions=2, num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps(f"{channels}x0e + {channels}x1o"),
            MLP_irreps=o3.Irreps(f"{readout_hidden}x0e"), atomic_energies=np.array(stats["atomic_energies"]),
            avg_num_neighbors=stats["avg_num_neighbors"], atomic_numbers=list(atomic_numbers), correlation=3,
            gate=torch.nn.functional.silu, radial_MLP=list(radial_hidden))
        lookup = torch.full((119,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.atomic_numbers)] = torch.arange(len(atomic_numbers))
        self.register_buffer("_lookup", lookup, persistent=False)

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        index = self._lookup[torch.as_tensor(numbers, dtype=torch.int64)]
        if bool((index < 0).any()):
            raise ValueError(f"unknown species {sorted({int(z) for z in numbers[index < 0]})}")
        return index

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def product_parameters(self) -> int:
        return sum(p.numel() for block in self.mace.products for p in block.symmetric_contractions.parameters())

    def forward(self, positions, species, src, dst, shifts, batch, num_graphs: int) -> torch.Tensor:
        attrs = torch.nn.functional.one_hot(species, len(self.atomic_numbers)).to(positions.dtype)
        counts = torch.bincount(batch, minlength=num_graphs)
        data = {"positions": positions, "node_attrs": attrs, "edge_index": torch.stack([dst, src]),
                "shifts": shifts, "batch": batch, "ptr": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                "cell": positions.new_zeros(num_graphs, 3, 3)}
        return self.mace(data, training=self.training, compute_force=False)["energy"]

    def energy_and_forces(self, positions, species, src, dst, shifts, batch, num_graphs: int, training: bool = False):
        positions = positions.detach().requires_grad_(True)
        energy = self(positions, species, src, dst, shifts, batch, num_graphs)
        (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=training)
        return (energy, -grad) if training else (energy.detach(), -grad)

    def checkpoint(self) -> dict:
        return {"state_dict": self.state_dict(), "atomic_numbers": self.atomic_numbers}


def make_model(config: dict, train_frames) -> MaceAnchor:
    """`fusionc.nn.train.train`'s `make_model` for MACE, with the statistics fusionc's model gets."""
    m = config["model"]
    numbers = m["atomic_numbers"] or sorted({int(z) for g in train_frames for z in g.numbers})
    with _default_dtype(torch.float64):  # MACE builds its U matrices in the default dtype
        model = MaceAnchor(numbers, statistics(train_frames, numbers), m["cutoff"], num_bessel=m["num_bessel"],
                           radial_hidden=tuple(m["radial_hidden"]), readout_hidden=m["readout_hidden"])
    return model.to(getattr(torch, m["dtype"]))

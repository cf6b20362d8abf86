"""A MACE-style interatomic potential whose equivariant layers are fusionc diagrams.

Per structure: species embedding (scalars) → for each layer l: the radial MLP weights each edge,
`interaction_l` (message passing: linear up, the sender's features coupled with the edge's spherical
harmonics under those weights, summed into the receiver, linear down) gives the atomic basis A,
`product_l` couples A (MACE's symmetric contraction, a fusion block, or any diagram of the same
shape), `update_l` mixes the product and adds a species-wise linear map of the layer's input (the
residual); a readout of the new features' scalars gives each atom's energy term. The energy is
Σ_atoms E0[species] + shift + scale · Σ_layers readout_l, and forces are its negative gradient.

The diagrams come from two `.fus` files: the layers (`interaction_0`, `update_0`, `interaction_1`, …;
by default `kernels/potential.fus`) and the product (`product_0`, `product_1`, …; `"mace"` and
`"fusion"` name `kernels/potential_mace.fus` and `kernels/potential_fusion.fus`). A product diagram
takes `A` and, if it declares them, the node features `h` and the species `z`, and gives `B`; an
update takes `B` and, if it declares them, `h` and `z`.
"""

from __future__ import annotations

from pathlib import Path

import torch

import fusionc
from fusionc.ir.irreps import Irrep, Irreps
from fusionc.nn.blocks import MLP, RadialBasis, SphericalHarmonics, length
from fusionc.source import decode_source

#: `kernels/` in a source checkout; a wheel ships the potential's files as fusionc/kernels/.
_STDLIB = (Path(__file__).resolve().parents[1] / "kernels", Path(__file__).resolve().parents[2] / "kernels")
PRODUCTS = {"mace": "potential_mace.fus", "fusion": "potential_fusion.fus"}
_INTERACTION_INPUTS = ("h", "sh", "w", "src", "dst")


def stdlib_file(name: str) -> Path:
    """A file of fusionc's standard library of diagrams (`kernels/`), from a wheel or a checkout."""
    for root in _STDLIB:
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{name} is not in fusionc's kernels/ (looked in {', '.join(map(str, _STDLIB))})")


def read_source(spec: str) -> tuple[str, str]:
    """(filename, text) of a diagram file: a path, or `default`, `mace`, `fusion` for the standard ones."""
    path = stdlib_file("potential.fus") if spec == "default" else (
        stdlib_file(PRODUCTS[spec]) if spec in PRODUCTS else Path(spec))
    if not path.is_file():
        raise ValueError(f"diagram file '{spec}' does not exist (give a path, or one of: default, "
                         f"{', '.join(PRODUCTS)})")
    return str(path), decode_source(path.read_bytes(), str(path))


class Potential(torch.nn.Module):
    """Energy (and forces) of structures given as graphs: `forward(positions, species, src, dst,
    shifts, batch, num_graphs)`, species as indices into `atomic_numbers` (`species_index` maps
    atomic numbers), an edge from `src` to `dst` for each neighbour `src` of atom `dst` within the
    cutoff, its vector `positions[src] - positions[dst] + shifts` (shifts: periodic images' offsets, in Å);
    `fusionc.nn.data.graph` and `collate` make these from `ase.Atoms`.
    """

    def __init__(self, atomic_numbers: list[int], layers: str = "default", product: str = "mace", *,
                 cutoff: float = 5.0, num_bessel: int = 8, radial_hidden: tuple[int, ...] = (64, 64, 64),
                 readout_hidden: int = 16, avg_num_neighbors: float = 1.0,
                 atomic_energies: list[float] | None = None, scale: float = 1.0, shift: float = 0.0,
                 sources: dict[str, tuple[str, str]] | None = None) -> None:
        super().__init__()
        if len(set(atomic_numbers)) != len(atomic_numbers) or not all(0 < int(z) < 119 for z in atomic_numbers):
            raise ValueError(f"atomic_numbers must be distinct elements (1 to 118), got {list(atomic_numbers)}")
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        self.sources = dict(sources) if sources else {"layers": read_source(layers), "product": read_source(product)}
        self.config = {"atomic_numbers": self.atomic_numbers, "cutoff": float(cutoff), "num_bessel": int(num_bessel),
                       "radial_hidden": [int(n) for n in radial_hidden], "readout_hidden": int(readout_hidden),
                       "avg_num_neighbors": float(avg_num_neighbors), "scale": float(scale), "shift": float(shift),
                       "atomic_energies": [float(e) for e in atomic_energies] if atomic_energies is not None else None}
        layer_ops = fusionc.loads(self.sources["layers"][1], filename=self.sources["layers"][0])
        product_ops = fusionc.loads(self.sources["product"][1], filename=self.sources["product"][0])
        diagrams = {**{("layers", d.name): d for d in layer_ops.diagrams},
                    **{("product", d.name): d for d in product_ops.diagrams}}
        n_layers = sum(1 for kind, name in diagrams if kind == "layers" and name.startswith("interaction_"))
        if n_layers == 0:
            raise ValueError(f"{self.sources['layers'][0]} has no diagram interaction_0")

        def diagram(kind: str, name: str):
            if (kind, name) not in diagrams:
                raise ValueError(f"{self.sources[kind][0]} has no diagram {name} (the potential has {n_layers} "
                                 f"layers: one interaction_l per layer)")
            return diagrams[kind, name]

        species = len(self.atomic_numbers)
        self.interactions = torch.nn.ModuleList()
        self.products = torch.nn.ModuleList()
        self.updates = torch.nn.ModuleList()
        self.radial_mlps = torch.nn.ModuleList()
        self.readouts = torch.nn.ModuleList()
        self.product_inputs: list[tuple[str, ...]] = []
        self.update_inputs: list[tuple[str, ...]] = []
        self.scalars: list[int] = []
        h_irreps = None
        lmax = None
        for l in range(n_layers):
            inter, prod, upd = (diagram("layers", f"interaction_{l}"), diagram("product", f"product_{l}"),
                                diagram("layers", f"update_{l}"))
            _expect_inputs(inter, _INTERACTION_INPUTS, exact=True)
            _expect_inputs(upd, ("B", "h", "z"), exact=False)
            _expect_inputs(prod, ("A", "h", "z"), exact=False)
            irreps_h = inter.irreps_of("h")
            if h_irreps is None:
                if any(b.ir != Irrep(0, 1) for b in irreps_h):
                    raise ValueError(f"interaction_0's input h must be scalars (the species embedding), got {irreps_h}")
                self.embedding = torch.nn.Parameter(torch.randn(species, irreps_h.dim))
            elif irreps_h != h_irreps:
                raise ValueError(f"interaction_{l} takes h : {irreps_h} but update_{l - 1} gives {h_irreps}")
            sh = inter.irreps_of("sh")
            layer_lmax = len(sh) - 1
            if str(sh) != str(Irreps.parse(" + ".join(f"{k}{'eo'[k % 2]}" for k in range(layer_lmax + 1)))):
                raise ValueError(f"interaction_{l}'s input sh must be 0e + 1o + 2e + … (spherical harmonics), got {sh}")
            if lmax is not None and layer_lmax != lmax:
                raise ValueError(f"interaction_{l} takes spherical harmonics up to l = {layer_lmax}, the layers "
                                 f"before up to l = {lmax}")
            lmax = layer_lmax
            _match(prod, "A", inter.outputs[0].irreps, f"interaction_{l}'s output {inter.outputs[0].name}")
            if "h" in _names(prod):
                _match(prod, "h", irreps_h, f"interaction_{l}'s input h")
            _match(upd, "B", prod.outputs[0].irreps, f"product_{l}'s output {prod.outputs[0].name}")
            if "h" in _names(upd):
                _match(upd, "h", irreps_h, f"interaction_{l}'s input h")
            for d in (prod, upd):
                if "z" in _names(d) and d.input("z").size != species:
                    raise ValueError(f"{d.name}'s input z is index({d.input('z').size}), but the potential has "
                                     f"{species} species {self.atomic_numbers}")
            h_irreps = upd.outputs[0].irreps
            if h_irreps[0].ir != Irrep(0, 1):
                raise ValueError(f"update_{l}'s output must start with scalars (0e), for the readout; got {h_irreps}")
            self.scalars.append(h_irreps[0].mul)
            self.interactions.append(getattr(layer_ops, inter.name)())
            self.products.append(getattr(product_ops, prod.name)())
            self.updates.append(getattr(layer_ops, upd.name)())
            self.product_inputs.append(_names(prod))
            self.update_inputs.append(_names(upd))
            self.radial_mlps.append(MLP([num_bessel, *radial_hidden, self.interactions[l].input_weight_numel["w"]]))
            last = l == n_layers - 1
            self.readouts.append(MLP([h_irreps[0].mul, readout_hidden, 1] if last else [h_irreps[0].mul, 1]))
        self.sh = SphericalHarmonics(lmax)
        self.radial = RadialBasis(cutoff, num_bessel)
        energies = atomic_energies if atomic_energies is not None else [0.0] * species
        if len(energies) != species:
            raise ValueError(f"atomic_energies has {len(energies)} values for {species} species")
        self.register_buffer("atomic_energies", torch.tensor(energies, dtype=torch.get_default_dtype()))
        lookup = torch.full((119,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.atomic_numbers)] = torch.arange(species)
        self.register_buffer("_lookup", lookup, persistent=False)

    @property
    def cutoff(self) -> float:
        return self.config["cutoff"]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def product_parameters(self) -> int:
        """The parameters of the product blocks (what a fusion block and MACE's product differ in)."""
        return sum(p.numel() for block in self.products for p in block.parameters())

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers → indices into `atomic_numbers`; a ValueError names any element the model lacks."""
        numbers = torch.as_tensor(numbers, dtype=torch.int64)
        inside = (numbers > 0) & (numbers < 119)
        index = torch.where(inside, self._lookup[numbers.clamp(0, 118)], -1)
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0]})
            raise ValueError(f"unknown species: atomic number(s) {unknown}; the model knows {self.atomic_numbers}")
        return index

    def forward(self, positions: torch.Tensor, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                shifts: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """The energy of each structure, shape (num_graphs,)."""
        vectors = positions[src] - positions[dst] + shifts
        lengths = length(vectors)
        sh = self.sh(vectors)
        radial = self.radial(lengths)
        h = self.embedding[species]
        layers = torch.zeros_like(positions[:, 0])
        inv_neighbors = 1.0 / self.config["avg_num_neighbors"]
        for l, (interaction, product, update) in enumerate(zip(self.interactions, self.products, self.updates)):
            w = self.radial_mlps[l](radial) * inv_neighbors  # messages are linear in w: this averages them
            a = interaction(h, sh, w, src, dst)
            named = {"A": a, "h": h, "z": species}
            named["B"] = product(*[named[name] for name in self.product_inputs[l]])
            h = update(*[named[name] for name in self.update_inputs[l]])
            layers = layers + self.readouts[l](h[:, :self.scalars[l]]).squeeze(-1)
        atom_energy = self.atomic_energies[species] + self.config["shift"] + self.config["scale"] * layers
        if num_graphs == 1:  # one structure (what a calculator or an exported model runs): no scatter
            return atom_energy.sum().reshape(1)
        return torch.zeros(num_graphs, dtype=positions.dtype, device=positions.device).index_add(0, batch, atom_energy)

    def energy_and_forces(self, positions: torch.Tensor, species: torch.Tensor, src: torch.Tensor,
                          dst: torch.Tensor, shifts: torch.Tensor, batch: torch.Tensor, num_graphs: int,
                          training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (num_graphs,) and forces −∂E/∂positions (atoms, 3); `training=True` keeps the graph
        of the forces, for a loss on them (double backward)."""
        if not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        energy = self(positions, species, src, dst, shifts, batch, num_graphs)
        (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=training)
        return (energy, -grad) if training else (energy.detach(), -grad)

    def checkpoint(self) -> dict:
        """What `from_checkpoint` rebuilds the model from: its settings, diagram sources and weights."""
        return {"config": dict(self.config), "sources": dict(self.sources), "state_dict": self.state_dict(),
                "dtype": str(self.embedding.dtype).removeprefix("torch."), "fusionc": fusionc.__version__}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict | str | Path) -> Potential:
        """A model from `checkpoint()`'s dictionary, or a file that `torch.save` wrote it to."""
        if not isinstance(checkpoint, dict):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model = cls(**checkpoint["config"], sources={k: tuple(v) for k, v in checkpoint["sources"].items()})
        model.to(getattr(torch, checkpoint["dtype"]))
        model.load_state_dict(checkpoint["state_dict"])
        return model


def _names(d) -> tuple[str, ...]:
    return tuple(i.name for i in d.inputs)


def _expect_inputs(d, names: tuple[str, ...], exact: bool) -> None:
    """`d` takes exactly `names`, or (not `exact`) the first of them and any of the others; one output."""
    have = _names(d)
    wrong = (set(have) != set(names)) if exact else (not set(have) <= set(names) or names[0] not in have)
    if wrong or len(d.outputs) != 1:
        want = ", ".join(names) if exact else f"{names[0]} and any of {', '.join(names[1:])}"
        raise ValueError(f"diagram {d.name} ({d.source_file}) must take {want} and give one output; "
                         f"it takes {', '.join(have)} and gives {', '.join(v.name for v in d.outputs)}")


def _match(d, name: str, irreps: Irreps, what: str) -> None:
    if d.irreps_of(name) != irreps:
        raise ValueError(f"{d.name}'s input {name} is {d.irreps_of(name)} but {what} is {irreps}")

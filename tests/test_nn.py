"""fusionc.nn: the potential's pieces against independent references (e3nn, formulas, finite
differences, rotations), training, checkpoints and the errors a user meets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, default_dtype

from fusionc.nn import Potential
from fusionc.nn.blocks import RadialBasis, SphericalHarmonics
from fusionc.nn.data import Graph, collate, graph, read_dataset, statistics

#: A small potential (4 channels, l ≤ 2, species H and O, 2 layers) with a product that mixes
#: symmetric powers and fusion trees of h: cheap to compile and run, every kind of block in it.
TINY_LAYERS = """
diagram interaction_0 {
    in h[node] : 4x0e   in sh[edge] : 0e + 1o + 2e   in w[edge] : weights
    in src[edge] : index(node)   in dst[edge] : index(node)   out A[node] : 4x(0e + 1o + 2e)
    let hu = h mix uvw
    let agg[dst] += fuse(hu[src], sh) -> 4x(0e + 1o + 2e) mix uvu by w
    A = agg mix uvw
}
diagram interaction_1 {
    in h[node] : 4x(0e + 1o)   in sh[edge] : 0e + 1o + 2e   in w[edge] : weights
    in src[edge] : index(node)   in dst[edge] : index(node)   out A[node] : 4x(0e + 1o + 2e)
    let hu = h mix uvw
    let agg[dst] += fuse(hu[src], sh) -> 4x(0e + 1o + 2e) mix uvu by w
    A = agg mix uvw
}
diagram update_0 { in B : 4x(0e + 1o)  in h : 4x0e  in z : index(2)  out hn : 4x(0e + 1o)
                   hn = B mix uvw + h mix uvw per z }
diagram update_1 { in B : 4x0e  in h : 4x(0e + 1o)  in z : index(2)  out hn : 4x0e
                   hn = B mix uvw + h mix uvw per z }
"""
TINY_PRODUCT = """
diagram product_0 { in A : 4x(0e + 1o + 2e)  in h : 4x0e  in z : index(2)  out B : 4x(0e + 1o)
                    B = A mix uuu per z + fuse(A, A) mix uuu per z + fuse(h, A, A) mix uuu per z }
diagram product_1 { in A : 4x(0e + 1o + 2e)  in h : 4x(0e + 1o)  in z : index(2)  out B : 4x0e
                    B = A mix uuu per z + fuse(h, A) mix uuu per z + fuse(A, A, A) mix uuu per z }
"""


def tiny(seed: int = 0, **kwargs) -> Potential:
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return Potential([1, 8], sources={"layers": ("tiny_layers.fus", TINY_LAYERS),
                                          "product": ("tiny_product.fus", TINY_PRODUCT)},
                         cutoff=3.0, radial_hidden=(8,), readout_hidden=4, **kwargs)


def water_cluster(seed: int, molecules: int = 3):
    """Water molecules placed at random (O–O at least 2.5 Å), each slightly distorted."""
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    atoms, centres = Atoms(), []
    while len(centres) < molecules:
        c = rng.uniform(0, 3.5, 3)
        if all(np.linalg.norm(c - o) > 2.5 for o in centres):
            centres.append(c)
            w = molecule("H2O")
            w.rotate(rng.uniform(0, 360), rng.normal(size=3))
            w.positions += c + rng.normal(scale=0.05, size=(3, 3))
            atoms += w
    return atoms


def inputs(model: Potential, atoms_list):
    return collate([graph(a, model.cutoff) for a in atoms_list], model.species_index, torch.float64)


def test_spherical_harmonics_equal_e3nns():
    from e3nn import o3

    v = torch.randn(200, 3, dtype=torch.float64) * 3
    with default_dtype(torch.float64):
        ours = SphericalHarmonics(4)(v)
    ref = o3.spherical_harmonics(list(range(5)), v, normalize=True, normalization="component")
    assert torch.allclose(ours, ref, atol=1e-12, rtol=0)
    assert torch.allclose(SphericalHarmonics(3).float()(v.float()), ref[:, :16].float(), atol=1e-5)


def test_radial_basis_is_bessel_times_a_smooth_cutoff():
    basis = RadialBasis(5.0, 8, p=6).double()
    r = torch.linspace(0.5, 6.0, 56, dtype=torch.float64)[:, None]
    x = r / 5.0
    envelope = 1 - 28 * x ** 6 + 48 * x ** 7 - 21 * x ** 8
    n = torch.arange(1, 9, dtype=torch.float64)
    ref = math.sqrt(2 / 5.0) * torch.sin(n * math.pi * r / 5.0) / r * envelope * (x < 1)
    assert torch.allclose(basis(r), ref, atol=1e-14)
    at = torch.tensor([[5.0 - 1e-7]], dtype=torch.float64, requires_grad=True)  # value and slope vanish at r_c
    (slope,) = torch.autograd.grad(basis.envelope(at).sum(), at)
    assert float(basis.envelope(at).detach()) < 1e-12 and abs(float(slope)) < 1e-9


def test_forces_are_the_exact_gradient_of_the_energy():
    """Autograd forces against central differences of the energy: a 4th-order stencil at steps h and
    h/2, Richardson-extrapolated (error ~h⁶), agreeing to 1e-10 of the largest force."""
    model = tiny()
    atoms = water_cluster(1)
    batch = inputs(model, [atoms])
    _, forces = model.energy_and_forces(*batch.inputs())
    pos = batch.positions

    def energy(p):
        with torch.no_grad():
            return float(model(p, *batch.inputs()[1:]))

    def stencil(h):
        numeric = torch.zeros_like(pos)
        for a in range(len(atoms)):
            for k in range(3):
                d = torch.zeros_like(pos)
                d[a, k] = h
                numeric[a, k] = -(-energy(pos + 2 * d) + 8 * energy(pos + d) - 8 * energy(pos - d)
                                  + energy(pos - 2 * d)) / (12 * h)
        return numeric

    numeric = (16 * stencil(2e-4) - stencil(4e-4)) / 15
    scale = float(forces.abs().max())
    assert scale > 1e-3
    assert float((forces - numeric).abs().max()) < 1e-10 * scale


def test_gradcheck_and_gradgradcheck_of_the_energy():
    model = tiny()
    batch = inputs(model, [water_cluster(2, molecules=2)])
    rest = batch.inputs()[1:]
    pos = batch.positions.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: model(p, *rest), (pos,))
    assert torch.autograd.gradgradcheck(lambda p: model(p, *rest), (pos,))
    # the training loss's gradient with respect to weights passes through the forces (double backward)
    weight = model.radial_mlps[1].weights[0]
    assert torch.autograd.gradcheck(
        lambda w: _with(model.radial_mlps[1].weights, 0, w, lambda: model.energy_and_forces(*batch.inputs(),
                                                                                            training=True)[1]),
        (weight.detach().clone().requires_grad_(True),))


def _with(params, index, value, fn):
    saved = params[index]
    params._parameters[str(index)] = value  # a tensor in the parameter's place, so gradcheck can vary it
    try:
        return fn()
    finally:
        params._parameters[str(index)] = saved


@pytest.mark.parametrize("product", ["mace", "fusion"])
def test_standard_potential_is_invariant_and_its_forces_rotate(product):
    """kernels/potential*.fus on ethanol: rotations and the inversion leave the energy unchanged and
    rotate the forces; so does a permutation of the atoms (float64, 1e-10)."""
    from ase.build import molecule

    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = Potential([1, 6, 8], product=product)
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(scale=0.1, size=atoms.positions.shape)
    e, f = model.energy_and_forces(*inputs(model, [atoms]).inputs())
    rng = np.random.default_rng(1)
    for inversion in (False, True):
        q, upper = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(upper)) * np.sign(np.linalg.det(q * np.sign(np.diag(upper))))  # a rotation
        r = q * (-1 if inversion else 1)
        moved = atoms.copy()
        moved.positions = atoms.positions @ r.T + rng.normal(size=3)
        e2, f2 = model.energy_and_forces(*inputs(model, [moved]).inputs())
        assert abs(float(e2 - e)) < 1e-10 * max(1.0, abs(float(e)))
        assert torch.allclose(f2, f @ torch.tensor(r).T, atol=1e-10)
    perm = rng.permutation(len(atoms))
    e3, f3 = model.energy_and_forces(*inputs(model, [atoms[perm]]).inputs())
    assert abs(float(e3 - e)) < 1e-10 and torch.allclose(f3, f[perm], atol=1e-10)


def test_a_batch_is_its_structures():
    model = tiny()
    clusters = [water_cluster(s, molecules=2 + s % 2) for s in range(3)]
    e, f = model.energy_and_forces(*inputs(model, clusters).inputs())
    offset = 0
    for k, atoms in enumerate(clusters):
        e1, f1 = model.energy_and_forces(*inputs(model, [atoms]).inputs())
        assert abs(float(e[k] - e1[0])) < 1e-12
        assert torch.allclose(f[offset:offset + len(atoms)], f1, atol=1e-12)
        offset += len(atoms)


def test_float32_follows_float64():
    model = tiny()
    batch = inputs(model, [water_cluster(3)])
    e64, f64 = model.energy_and_forces(*batch.inputs())
    model32 = tiny().float()
    b = batch.inputs()
    e32, f32 = model32.energy_and_forces(b[0].float(), b[1], b[2], b[3], b[4].float(), b[5], b[6])
    assert torch.allclose(e32.double(), e64, rtol=1e-5, atol=1e-5)
    assert torch.allclose(f32.double(), f64, rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_and_the_calculator(tmp_path):
    from fusionc.nn import Calculator

    model = tiny(atomic_energies=[-13.6, -2041.0], scale=0.7, shift=0.1)
    torch.save(model.checkpoint(), tmp_path / "model.pt")
    again = Potential.from_checkpoint(tmp_path / "model.pt")
    atoms = water_cluster(4)
    e, f = model.energy_and_forces(*inputs(model, [atoms]).inputs())
    atoms.calc = Calculator(tmp_path / "model.pt")
    assert abs(atoms.get_potential_energy() - float(e[0])) < 1e-10
    assert np.allclose(atoms.get_forces(), f.numpy(), atol=1e-10)
    assert again.num_parameters() == model.num_parameters()


def test_unknown_species_and_empty_structures_are_named():
    from ase import Atoms
    from ase.build import molecule

    model = tiny()
    with pytest.raises(ValueError, match=r"unknown species: atomic number\(s\) \[6\]; the model knows \[1, 8\]"):
        inputs(model, [molecule("CH4")])
    with pytest.raises(ValueError, match="structure is empty"):
        inputs(model, [Atoms()])
    with pytest.raises(ValueError, match=r"index\(3\), but the potential has 2 species"):
        Potential([1, 8], sources={"layers": ("l.fus", TINY_LAYERS.replace("index(2)", "index(3)")),
                                   "product": ("p.fus", TINY_PRODUCT)})
    with pytest.raises(ValueError, match="has no diagram product_1"):
        Potential([1, 8], sources={"layers": ("l.fus", TINY_LAYERS),
                                   "product": ("p.fus", TINY_PRODUCT.split("diagram product_1")[0])})


def emt_dataset(path, frames: int = 24) -> None:
    """Water clusters labelled by ase's EMT calculator (offline, instant): data to train on."""
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for s in range(frames):
        atoms = water_cluster(100 + s, molecules=2)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        out.append(atoms)
    ase.io.write(path, out, format="extxyz")


def write_config(tmp_path, data, **sections) -> str:
    text = f'[data]\npath = "{data}"\ntrain = 16\nvalid = 4\ntest = 4\n'
    text += '[model]\nlayers = "{0}"\nproduct = "{1}"\ncutoff = 3.0\nradial_hidden = [8]\nreadout_hidden = 4\n'.format(
        tmp_path / "tiny_layers.fus", tmp_path / "tiny_product.fus")
    text += f'[train]\nout = "{tmp_path / "run"}"\nbatch_size = 4\nepochs = 4\nprogress = false\nlr = 0.005\n'
    for section, lines in sections.items():
        text = text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def emt(tmp_path):
    (tmp_path / "tiny_layers.fus").write_text(TINY_LAYERS)
    (tmp_path / "tiny_product.fus").write_text(TINY_PRODUCT)
    emt_dataset(tmp_path / "water.extxyz")
    return tmp_path / "water.extxyz"


def test_training_lowers_the_loss_and_resumes_where_it_stopped(tmp_path, emt):
    from fusionc.nn.train import load_config, train

    config = load_config(write_config(tmp_path, emt))
    results = train(config)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert results["epochs"] == 4 and results["test_frames"] == 4
    # two epochs, then --resume to four: the same run, epoch for epoch
    config2 = load_config(write_config(tmp_path, emt))
    config2["train"]["out"] = str(tmp_path / "run2")
    config2["train"]["epochs"] = 2
    train(config2)
    config2["train"]["epochs"] = 4
    resumed = train(config2, resume=True)
    history2 = json.loads((tmp_path / "run2" / "history.json").read_text())
    assert [h["train_loss"] for h in history2] == [h["train_loss"] for h in history]
    assert resumed["test_energy_mae_meV"] == results["test_energy_mae_meV"]
    trained = Potential.from_checkpoint(tmp_path / "run" / "model.pt")
    assert trained.num_parameters() == results["parameters"]


def test_bad_configs_and_datasets_are_named_and_write_nothing(tmp_path, emt):
    import contextlib
    import io

    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.build import molecule

    from fusionc.nn.train import main

    good = open(write_config(tmp_path, emt)).read()
    cases = [
        (good.replace("epochs = 4", "epochs = 4\nepoch = 3"), "unknown key 'epoch' in [train]"),
        (good + "[optimizer]\nlr = 1\n", "unknown section [optimizer]"),
        (good.replace("batch_size = 4", "batch_size = \"four\""), "[train] batch_size = 'four' must be an integer"),
        (good.replace("train = 16", "train = 16 16"), "bad.toml: "),
        (good.replace(str(emt), str(tmp_path / "none.extxyz")), "none.extxyz does not exist"),
        (good.replace("train = 16", "train = 30"), "has 24 frames"),
    ]
    no_forces = tmp_path / "no_forces.extxyz"
    frames = ase.io.read(emt, ":")
    frames[5].calc = SinglePointCalculator(frames[5], energy=frames[5].get_potential_energy())  # no forces
    ase.io.write(no_forces, frames, format="extxyz")
    cases.append((good.replace(str(emt), str(no_forces)), "no_forces.extxyz frame 5 has no forces"))
    carbon = tmp_path / "carbon.extxyz"
    methane = molecule("CH4")
    methane.calc = SinglePointCalculator(methane, energy=0.0, forces=np.zeros((5, 3)))
    ase.io.write(carbon, ase.io.read(emt, ":") + [methane], format="extxyz")
    cases.append((good.replace(str(emt), str(carbon)).replace("[model]", "[model]\natomic_numbers = [1, 8]"),
                  "unknown species: atomic number(s) [6]"))
    for text, message in cases:
        buffer = io.StringIO()
        with contextlib.redirect_stderr(buffer):
            path = tmp_path / "bad.toml"
            path.write_text(text)
            assert main([str(path)]) == 2, message
        assert message in buffer.getvalue(), (message, buffer.getvalue())
        assert not (tmp_path / "run").exists(), message


def test_read_dataset_and_statistics(tmp_path, emt):
    graphs = read_dataset(emt, 3.0)
    assert len(graphs) == 24 and all(isinstance(g, Graph) for g in graphs)
    g = graphs[0]
    d = g.positions[g.src] - g.positions[g.dst] + g.shifts
    assert np.all(np.linalg.norm(d, axis=1) < 3.0) and len(g.src) > 0
    stats = statistics(graphs, [1, 8])
    energies = np.array([x.energy for x in graphs])
    counts = np.array([[np.sum(x.numbers == 1), np.sum(x.numbers == 8)] for x in graphs])
    assert np.allclose(counts @ stats["atomic_energies"] + stats["shift"] * counts.sum(1), energies,
                       atol=np.abs(energies - energies.mean()).max() + 1e-9)
    assert stats["avg_num_neighbors"] == pytest.approx(sum(len(x.src) for x in graphs) / counts.sum())


def test_periodic_images_are_edges():
    from ase import Atoms

    atoms = Atoms("H2O", positions=[(0, 0, 0), (0.9, 0, 0), (0, 0.9, 0)], cell=[2.5, 2.5, 2.5], pbc=True)
    g = graph(atoms, 3.0)
    d = g.positions[g.src] - g.positions[g.dst] + g.shifts
    assert np.any(np.abs(g.shifts) > 0) and np.all(np.linalg.norm(d, axis=1) < 3.0)
    assert len(g.src) > 6  # images of each atom are neighbours too


def test_stilbene_builder_makes_both_isomers(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not installed
    from benchmarks.science.data import stilbene

    for cis in (False, True):
        atoms = stilbene(cis)
        assert atoms.get_chemical_formula() == "C14H12"
        d = atoms.get_all_distances() + 10 * np.eye(len(atoms))
        hydrogens = np.array(atoms.symbols) == "H"
        assert d.min() > 1.0 and d[np.ix_(hydrogens, hydrogens)].min() > 2.0  # no clash to relax away
        dihedral = atoms.get_dihedral(2, 0, 1, 3)
        assert min(dihedral, 360 - dihedral) < 1 if cis else abs(dihedral - 180) < 1


def test_data_command_writes_labelled_frames(tmp_path, monkeypatch):
    import ase.io

    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not installed
    import benchmarks.science.data as data

    monkeypatch.setattr(data, "EQUILIBRATION", 10)
    monkeypatch.setattr(data, "STRIDE", 2)
    assert data.main(["--out", str(tmp_path), "--frames", "3", "--molecules", "ethanol"]) == 0
    frames = ase.io.read(tmp_path / "ethanol.extxyz", ":")
    assert len(frames) == 3 and frames[0].get_forces().shape == (9, 3)
    # the labels are GFN2-xTB's: recompute one frame
    atoms = frames[1].copy()
    atoms.calc = data.calculator()
    assert abs(atoms.get_potential_energy() - frames[1].get_potential_energy()) < 1e-6
    assert np.allclose(atoms.get_forces(), frames[1].get_forces(), atol=1e-3)  # SCF from another guess
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["ethanol"]["frames"] == 3 and meta["ethanol"]["seconds"] > 0


FRESH_LOAD = """
import sys, torch
from fusionc.runtime.deploy import load
deployed = load(sys.argv[1])
ref = torch.load(sys.argv[2])
energy, forces = deployed(*ref["inputs"])
compiler = sorted(m for m in sys.modules if m.startswith(("fusionc.nn", "fusionc.frontend", "fusionc.analysis",
                                                          "fusionc.backends", "fusionc.pipeline", "lark")))
assert not compiler, compiler
assert deployed.atomic_numbers == [1, 8] and deployed.cutoff == 3.0, (deployed.atomic_numbers, deployed.cutoff)
scale_e, scale_f = float(ref["energy"].abs().max()), float(ref["forces"].abs().max())
print(deployed.kind, float((energy - ref["energy"]).abs().max()) / scale_e,
      float((forces - ref["forces"]).abs().max()) / scale_f)
"""


@pytest.mark.parametrize("aoti", [False, True], ids=["export", "aotinductor"])
def test_exported_potential_loads_in_a_fresh_process(tmp_path, aoti):
    """`fusionc.nn.export` → a new process with torch and fusionc.runtime only (no compiler, no
    fusionc.nn) → the same energies and forces, float32, on a structure of another size than the one
    export traced with."""
    import subprocess
    import sys

    from fusionc.nn import export

    model = tiny().float()
    path = export(model, tmp_path / "potential.pt2", aoti=aoti)
    batch = inputs(model, [water_cluster(7, molecules=4)])
    args = [batch.positions.float(), batch.species, batch.src, batch.dst, batch.shifts.float(), batch.batch]
    energy, forces = model.energy_and_forces(*args, 1)
    torch.save({"inputs": args, "energy": energy, "forces": forces}, tmp_path / "ref.pt")
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(path), str(tmp_path / "ref.pt")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, de, df = done.stdout.split()
    assert kind == ("aotinductor" if aoti else "export")
    # the exported program runs the same ops in the same order; AOTInductor fuses the torch code around
    # fusionc's ops into C++ and may round float32 otherwise, within the acceptance's 1e-6
    bound = 1e-6 if aoti else 0.0
    assert float(de) <= bound and float(df) <= bound, (de, df)


def test_science_experiment_and_md_run_end_to_end(tmp_path, monkeypatch):
    """`benchmarks.science.run` (both fusionc models, one seed, one epoch, EMT-labelled ethanol) writes
    its table, JSON and learning curves; `benchmarks.science.md` runs NVE with a model it trained."""
    import ase.io
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not installed
    from benchmarks.science import md, run

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(12):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    ase.io.write(tmp_path / "ethanol.extxyz", frames, format="extxyz")
    assert run.main(["--data", str(tmp_path), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path),
                     "--molecules", "ethanol", "--models", "fusionc mace", "fusionc fusion", "--seeds", "1",
                     "--epochs", "1", "--train", "6", "--valid", "2", "--test", "4", "--batch-size", "3",
                     "--no-readme"]) == 0
    science = json.loads((tmp_path / "science.json").read_text())
    assert [r["model"] for r in science["rows"]] == ["fusionc mace", "fusionc fusion"]
    assert science["rows"][0]["product_parameters"] > science["rows"][1]["product_parameters"] > 0
    assert (tmp_path / "science.png").stat().st_size > 0
    model = tmp_path / "runs" / "ethanol" / "fusionc_fusion" / "seed0" / "model.pt"
    assert md.main(["--model", str(model), "--data", str(tmp_path / "ethanol.extxyz"), "--ps", "0.01",
                    "--results", str(tmp_path), "--no-readme"]) == 0
    result = json.loads((tmp_path / "md.json").read_text())
    assert result["steps"] == 20 and len(result["total_energy_eV"]) == 3


def test_ddp_two_processes_give_the_loss_curve_of_one(tmp_path, emt):
    """torchrun with 2 processes (DDP, gloo): each computes half of every batch, and the loss curve
    and the trained weights equal one process's on the same batches."""
    import os
    import subprocess
    import sys

    single = write_config(tmp_path, emt)
    text = open(single).read().replace(str(tmp_path / "run"), str(tmp_path / "ddp"))
    (tmp_path / "ddp.toml").write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in ([sys.executable, "-m", "fusionc.nn.train", single],
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     "-m", "fusionc.nn.train", str(tmp_path / "ddp.toml")]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "run" / "history.json").read_text())
    two = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-9)
    w1 = Potential.from_checkpoint(tmp_path / "run" / "model.pt").state_dict()
    w2 = Potential.from_checkpoint(tmp_path / "ddp" / "model.pt").state_dict()
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-9, atol=1e-12) for k in w1)

"""A whole mace-torch model with its products swapped (`fusionc.compat.mace.accelerate`) does what a
MACE user does with a MACE model, each against the unswapped model or the swapped one in this
process: save and load in a new process, export and load in a new process, TorchScript (e3nn's
`jit.compile`, MACE's LAMMPS export), mace-torch's `extract_model`, and a fresh block that trains.

Runs in the mace-torch environment (mace-torch pins e3nn 0.4.4); skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("mace") is not None:  # only where e3nn 0.4.4 comes with it
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
pytest.importorskip("mace.modules", reason="mace-torch is not installed (pip install mace-torch; it pins e3nn 0.4.4)")

import torch  # noqa: E402

from conftest import REPO, default_dtype  # noqa: E402

sys.path.insert(0, str(REPO))  # benchmarks/: the model and batch the speed-up table uses
from benchmarks.common import relative_error as relative  # noqa: E402
from benchmarks.mace_model import batch, build, energy_and_forces  # noqa: E402
from fusionc.compat.mace import MaceSymmetricContraction, accelerate, from_symmetric_contraction, symmetric_contraction  # noqa: E402

CHANNELS = 8


@pytest.fixture(scope="module")
def models():
    """The model as mace-torch builds it, a swapped twin with the same weights, and a batch (float64)."""
    return build(CHANNELS, torch.float64), accelerate(build(CHANNELS, torch.float64)), batch(torch.float64, copies=1)


def test_accelerate_swaps_every_product_in_place_with_the_same_numbers(models) -> None:
    mace, fast, inputs = models
    assert all(isinstance(p.symmetric_contractions, MaceSymmetricContraction) for p in fast.products)
    assert len(fast.products) == 2
    (e_ref, f_ref), (e, f) = energy_and_forces(mace, inputs), energy_and_forces(fast, inputs)
    assert relative(e, e_ref) < 1e-12 and relative(f, f_ref) < 1e-10
    with pytest.raises(ValueError, match="has no mace-torch SymmetricContraction"):
        accelerate(fast)


def test_float32_model_matches(models) -> None:
    mace, fast = build(CHANNELS, torch.float32), accelerate(build(CHANNELS, torch.float32))
    inputs = batch(torch.float32, copies=1)
    (e_ref, f_ref), (e, f) = energy_and_forces(mace, inputs), energy_and_forces(fast, inputs)
    assert relative(e, e_ref) < 1e-5 and relative(f, f_ref) < 1e-4


LOAD = """
import sys, torch
from benchmarks.mace_model import energy_and_forces
model = torch.load(sys.argv[1], weights_only=False)
ref = torch.load(sys.argv[2], weights_only=False)
energy, forces = energy_and_forces(model, ref["inputs"])
print(float((energy - ref["energy"]).abs().max()), float((forces - ref["forces"]).abs().max()))
"""


def _fresh(script: str, *args: str, cwd=REPO) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]  # mace prints notices of its own


def test_saved_model_loads_in_a_fresh_process(models, tmp_path) -> None:
    """`torch.save(model)` → a new process that imports torch (and mace through the pickle) only."""
    _, fast, inputs = models
    energy, forces = energy_and_forces(fast, inputs)
    torch.save(fast, tmp_path / "model.pt")
    torch.save({"inputs": inputs, "energy": energy, "forces": forces}, tmp_path / "ref.pt")
    de, df = map(float, _fresh(LOAD, str(tmp_path / "model.pt"), str(tmp_path / "ref.pt")).split())
    # e3nn's modules come back as TorchScript (its pickling scripts them), which may round otherwise
    assert de <= 1e-12 * float(energy.abs().max()) and df <= 1e-12 * float(forces.abs().max())


class Energy(torch.nn.Module):
    """The energy of a batch from its tensors: what `torch.export` can take of a MACE model (forces
    need `autograd.grad` inside the program, which torch 2.13 cannot export for MACE's `norm`)."""

    def __init__(self, model: torch.nn.Module, inputs: dict) -> None:
        super().__init__()
        self.model, self.fixed = model, {k: v for k, v in inputs.items() if k != "positions" and torch.is_tensor(v)}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.model({**self.fixed, "positions": positions}, compute_force=False, training=False)["energy"]


EXPORT_LOAD = """
import sys, torch, fusionc
program = torch.export.load(sys.argv[1])
ref = torch.load(sys.argv[2], weights_only=False)
print(float((program.module()(ref["positions"]) - ref["energy"]).abs().max()))
"""


def test_exported_energy_loads_in_a_fresh_process(tmp_path) -> None:
    """Built with e3nn's `jit_script_fx=False`: e3nn 0.4.4 otherwise makes its code-generated modules
    TorchScript, which `torch.export` cannot trace (with or without fusionc: "ScriptModule has not been
    initialized")."""
    import e3nn

    saved = e3nn.get_optimization_defaults()["jit_script_fx"]
    e3nn.set_optimization_defaults(jit_script_fx=False)
    try:
        fast = accelerate(build(CHANNELS, torch.float64))
    finally:
        e3nn.set_optimization_defaults(jit_script_fx=saved)
    inputs = batch(torch.float64, copies=1)
    wrapper = Energy(fast, inputs)
    energy = wrapper(inputs["positions"]).detach()
    torch.export.save(torch.export.export(wrapper, (inputs["positions"],), strict=False), tmp_path / "energy.pt2")
    torch.save({"positions": inputs["positions"], "energy": energy}, tmp_path / "ref.pt")
    assert float(_fresh(EXPORT_LOAD, str(tmp_path / "energy.pt2"), str(tmp_path / "ref.pt"))) == 0.0


def test_scripted_model_matches(models) -> None:
    """e3nn's `jit.compile` (what MACE's own export runs) of a swapped model; scripting replaces the
    model's submodules, so a twin is scripted."""
    from e3nn.util import jit

    mace, _, inputs = models
    twin = accelerate(build(CHANNELS, torch.float64))
    scripted = jit.compile(twin)
    out = scripted(dict(inputs), compute_force=True, training=False)
    e_ref, f_ref = energy_and_forces(mace, inputs)
    assert relative(out["energy"], e_ref) < 1e-12 and relative(out["forces"], f_ref) < 1e-10


LAMMPS_LOAD = """
import sys, torch
try:
    torch.jit.load(sys.argv[1])
    raise SystemExit("loaded without fusionc's ops")
except RuntimeError as e:  # what LAMMPS's libtorch, which has no Python, meets
    assert "Unknown builtin op: fusionc_" in str(e), e
import fusionc
fusionc.register_ops()
lammps = torch.jit.load(sys.argv[1])
ref = torch.load(sys.argv[2], weights_only=False)
inputs = dict(ref["inputs"])
out = lammps(inputs, torch.ones(inputs["positions"].shape[0], dtype=torch.bool))
print(float((out["total_energy_local"] - ref["energy"].sum()).abs().max()), float((out["forces"] - ref["forces"]).abs().max()))
"""


def test_mace_lammps_export_of_a_swapped_model(models, tmp_path) -> None:
    """`python -m mace.cli.create_lammps_model model.pt` (LAMMPS_MACE, e3nn jit.compile, save) on a
    swapped model; the file loads in a new process once fusionc's ops are registered, and gives the
    model's energy and forces."""
    _, fast, _ = models
    inputs = batch(torch.float64, copies=1, molecules=("CH3CH2OH",))  # LAMMPS_MACE takes one structure
    torch.save(fast, tmp_path / "model.pt")
    energy, forces = energy_and_forces(fast, inputs)
    torch.save({"inputs": inputs, "energy": energy, "forces": forces}, tmp_path / "ref.pt")
    done = subprocess.run([sys.executable, "-m", "mace.cli.create_lammps_model", str(tmp_path / "model.pt"),
                           "--dtype", "float64"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    de, df = map(float, _fresh(LAMMPS_LOAD, str(tmp_path / "model.pt-lammps.pt"), str(tmp_path / "ref.pt")).split())
    assert de < 1e-10 * float(energy.abs().sum()) and df < 1e-10 * float(forces.abs().max())


def test_extract_model_gives_mace_model_computing_the_same(models) -> None:
    """mace-torch's `extract_model` rebuilds a plain MACE model from the swapped one's config and state
    dict; its product weights are MACE's layout of fusionc's (the state dict carries both). And a plain
    MACE state dict loads into a swapped model."""
    from mace.modules.symmetric_contraction import SymmetricContraction
    from mace.tools.scripts_utils import extract_model

    mace, fast, inputs = models
    with torch.no_grad():
        for p in fast.products:
            for w in p.symmetric_contractions.weights:
                w.mul_(1.5)  # the extracted model must follow fusionc's weights, not MACE's initial ones
    try:
        with default_dtype(torch.float64):  # extract_model builds the model in the default dtype
            plain = extract_model(fast)
        assert all(type(p.symmetric_contractions) is SymmetricContraction for p in plain.products)
        (e_ref, f_ref), (e, f) = energy_and_forces(fast, inputs), energy_and_forces(plain, inputs)
        assert relative(e, e_ref) < 1e-12 and relative(f, f_ref) < 1e-10
        assert relative(e_ref, energy_and_forces(mace, inputs)[0]) > 1e-6
    finally:
        with torch.no_grad():
            for p in fast.products:
                for w in p.symmetric_contractions.weights:
                    w.div_(1.5)
    twin = accelerate(build(CHANNELS, torch.float64, seed=1))
    twin.load_state_dict(mace.state_dict())
    (e_ref, f_ref), (e, f) = energy_and_forces(mace, inputs), energy_and_forces(twin, inputs)
    assert relative(e, e_ref) < 1e-12 and relative(f, f_ref) < 1e-10


def test_fresh_block_has_mace_initialisation_and_trains() -> None:
    """`symmetric_contraction(...)` is mace-torch's freshly initialised SymmetricContraction (same seed)
    imported; trained alone on a small batch, its loss falls within 50 steps."""
    from e3nn import o3
    from mace.modules.symmetric_contraction import SymmetricContraction

    irreps_in, irreps_out = "8x0e + 8x1o + 8x2e + 8x3o", "8x0e + 8x1o"
    block = symmetric_contraction(irreps_in, irreps_out, 3, num_elements=3, seed=7)
    assert block.contraction_degree == 3 and block.weights[0].dtype == torch.get_default_dtype()
    with default_dtype(torch.float64):
        torch.manual_seed(7)
        reference = from_symmetric_contraction(SymmetricContraction(o3.Irreps(irreps_in), o3.Irreps(irreps_out), 3,
                                                                    num_elements=3))
    for mine, theirs in zip(block.weights, reference.weights):
        assert torch.equal(mine, theirs.to(mine.dtype))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, 16, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (32,), generator=g), 3).float()
    target = torch.randn(32, 8 * 4, generator=g)
    optimizer = torch.optim.Adam(block.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = ((block(x, y) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
def test_block_exports(strict) -> None:
    """`torch.export` of the swapped block, strict (dynamo traces fusionc's Python) or not: the
    program computes what the block does."""
    block = symmetric_contraction("8x0e + 8x1o + 8x2e + 8x3o", "8x0e + 8x1o", 3, num_elements=3,
                                  dtype=torch.float64, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, 16, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (5,), generator=g), 3).double()
    program = torch.export.export(block, (x, y), strict=strict)
    assert torch.equal(program.module()(x, y), block(x, y))

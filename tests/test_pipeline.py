"""The pipeline: every pass listed and dumpable, a frozen program set that back ends only render,
back ends that do not import each other, and the machine model the planner reads."""

from __future__ import annotations

import ast
import copy
import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from conftest import REPO
from fusionc import machine
from fusionc.analysis.program import Einsum, Kernel, liveness
from fusionc.backends import get_backend
from fusionc.cli import main
from fusionc.pipeline import PASS_NAMES, compile

TP = str(REPO / "kernels" / "tensor_products.fus")
SOURCE = (REPO / "kernels" / "mace_product.fus").read_text()


def test_dump_ir_help_lists_the_passes_in_pipeline_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--dump-ir", "help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    positions = [out.index(f"  {name} ") for name in PASS_NAMES]
    assert positions == sorted(positions)
    assert PASS_NAMES == ("parse", "check", "prune", "recouple", "plan", "lower", "differentiate", "mask",
                          "factorize", "segment", "schedule", "liveness")


@pytest.mark.parametrize("name", PASS_NAMES)
def test_every_pass_can_be_dumped(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TP, "--dump-ir", name]) == 0
    out = capsys.readouterr().out
    expected = {"parse": "DiagramDef", "check": "diagram fc_tp", "prune": "diagram fc_tp",
                "recouple": "diagram fc_tp", "plan": "chosen plan", "lower": "program fc_tp\n",
                "differentiate": "program fc_tp__d", "mask": "[when d_x, d_weight]",
                "factorize": "[native] program fc_tp\n", "segment": "native fc_tp__s0",
                "schedule": "[native] program fc_tp__d ",
                "liveness": "    free "}[name]
    assert expected in out


def test_unknown_pass_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check", TP, "--dump-ir", "optimise"])
    assert exit_.value.code == 2
    assert "unknown pass 'optimise'" in capsys.readouterr().err


def test_the_program_set_is_frozen_and_rendering_leaves_it_unchanged() -> None:
    ps = compile(SOURCE, "mace_product.fus", "torch")
    before = copy.deepcopy(ps)
    get_backend("torch")(ps)
    assert ps == before
    with pytest.raises(FrozenInstanceError):
        ps.programs[0].forward.program.name = "x"  # type: ignore[misc]


def test_segmented_programs_hold_kernels_and_liveness_frees_temporaries() -> None:
    ps = compile(SOURCE, "mace_product.fus", "torch")
    native = ps.programs[0].forward.native
    assert any(isinstance(s, Kernel) for s in native.statements)
    assert len(native.frees) == len(native.statements)
    # a temporary is freed after its last reader, and nothing reads it after that
    torch_code = ps.programs[0].forward.torch
    for k, freed in enumerate(torch_code.frees):
        later = {v.tensor for s in torch_code.statements[k + 1:] for v in torch_code.reads(s)}
        assert not set(freed) & later
    assert liveness(replace(torch_code, frees=())).frees == torch_code.frees


def test_explain_reports_the_programs_that_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--explain", str(REPO / "kernels" / "mace_product.fus")]) == 0
    out = capsys.readouterr().out
    assert "order (opt_einsum" not in out  # the plan's pairwise orders were never run
    ps = compile(SOURCE, "mace_product.fus", "torch")
    forward = ps.programs[0].forward.native
    statements = sum(len(s.statements) if isinstance(s, Kernel) else 1 for s in forward.statements)
    kernels = sum(isinstance(s, Kernel) for s in forward.statements)
    line = next(line for line in out.splitlines() if line.split()[:1] == ["mace_product"])
    assert line.split()[1:3] == [str(statements), str(kernels)]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


#: The back ends and the modules each is made of; `writer` is what both share.
BACKEND_MODULES = {"torch": {"torch_backend", "native"}, "triton": {"triton_backend", "triton_program", "triton_aot"}}


def test_no_back_end_imports_another() -> None:
    folder = REPO / "fusionc" / "backends"
    listed = set().union(*BACKEND_MODULES.values()) | {"writer", "__init__"}
    assert {p.stem for p in folder.glob("*.py")} == listed
    for backend, modules in BACKEND_MODULES.items():
        others = set().union(*(m for b, m in BACKEND_MODULES.items() if b != backend))
        for module in modules:
            imported = _imports(folder / f"{module}.py")
            assert not {f"fusionc.backends.{o}" for o in others} & imported, (module, imported)


def test_the_planner_reads_the_machine_model_it_is_given(tmp_path, monkeypatch) -> None:
    shipped = machine.parse(machine.DEFAULT_PATH.read_text())
    assert shipped == machine.Machine()  # the file and the dataclasses' defaults agree
    source = (REPO / "kernels" / "tensor_products.fus").read_text()
    default = compile(source, "tp.fus", "torch")
    data = json.loads(shipped.to_json())
    data["cpu_native"]["shared_native"] = 0  # no shared operand is small enough for native code
    path = tmp_path / "machine.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("FUSIONC_MACHINE", str(path))
    changed = compile(source, "tp.fus", "torch")
    assert changed.machine.cpu_native.shared_native == 0
    assert default.programs[0].forward.native != changed.programs[0].forward.native
    data["cpu_blas"]["no_such_figure"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no_such_figure"):
        compile(source, "tp.fus", "torch")


def test_sparse_statements_are_channelwise_cg_contractions() -> None:
    """Native programs keep couplings whole, as loops over CG non-zeros; torch code factorizes them."""
    ps = compile(SOURCE, "mace_product.fus", "torch")
    forward = ps.programs[0].forward
    inner = [t for s in forward.native.statements for t in (s.statements if isinstance(s, Kernel) else (s,))]
    assert any(isinstance(s, Einsum) and any(v.tensor.startswith("cg_") for v in s.operands) and len(s.operands) >= 3
               for s in inner)
    assert all(len(s.operands) <= 2 for s in forward.torch.statements if isinstance(s, Einsum))

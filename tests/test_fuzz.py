"""The grammar-aware fuzzer (`fusionc.fuzz`), bounded to about two minutes:

- its generators cover every alternative of every rule of the grammar, strict programs type-check,
  cases are the same for the same seed, mutations reach invalid UTF-8, form feeds and huge numbers;
- Hypothesis drives the generators (`HypothesisChooser`) against the CLI oracle (in a worker
  process with a time limit, so a hang or a crash is a finding, not a stuck test) and the library
  oracle (dense reference, derivatives, bad inputs, FUSIONC_NATIVE=0), a few programs also with
  native kernels and a few through a real `python -m fusionc` subprocess; a finding fails the test
  with a minimised reproducer;
- the oracles see planted failures: a fake CLI that prints a traceback, exits 3, raises, prints an
  error without a location or with a misplaced caret, hangs or dies of a signal; a module whose
  numbers are slightly off; and the command writes reproducers and exits 1 on a finding.

Longer runs: `python -m fusionc.fuzz --minutes 10`; FUSIONC_FUZZ_SCALE=N multiplies the example
counts here. The quick subset (`pytest -m "not slow"`) fuzzes each target with a few programs only.
"""

from __future__ import annotations

import os
import random
import types

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import slow, slow_unless
from fusionc import fuzz
from fusionc.fuzz import (CLI_COMMANDS, FILENAMES, Case, Finding, HypothesisChooser, RandomChooser, Worker,
                          check_location, grammar_coverage, loose_program, make_case, minimize, mutate,
                          random_program, run_cli_subprocess, run_loads_case, strict_program)
from fusionc.pipeline import compile_source

SCALE = int(os.environ.get("FUSIONC_FUZZ_SCALE", "1"))
MINIMIZE_S = 20.0


def _settings(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck),
                    print_blob=False)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # module-scoped fixtures start before conftest's per-test cache: name the same directory
    return dict(os.environ, FUSIONC_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "fusionc-cache"),
                FUSIONC_NATIVE="0")


@pytest.fixture(scope="module")
def worker(cache_env: dict):
    w = Worker(env=cache_env)
    yield w
    w.close()


def _assert_no_findings(run, case: Case, findings: list[Finding]) -> None:
    """Fail with a minimised reproducer: the source, how it was run, and what went wrong."""
    if not findings:
        return
    first = findings[0]

    def still_fails(source: bytes) -> bool:
        return any(f.signature == first.signature for f in run(case.with_source(source)))

    small = minimize(case.source, still_fails, MINIMIZE_S)
    again = [f for f in run(case.with_source(small)) if f.signature == first.signature] or [first]
    pytest.fail(f"{first.signature}\ncase: {case.target} command={case.command} native={case.native} "
                f"filename={case.filename!r} seed={case.seed}\nminimised source: {small!r}\n"
                f"original source: {case.source!r}\n{again[0].detail}", pytrace=False)


# --------------------------------------------------------------------------- the generators


def test_generators_cover_every_alternative_of_the_grammar() -> None:
    sources = [strict_program(RandomChooser(random.Random(s))) for s in range(120)]
    sources += [loose_program(RandomChooser(random.Random(s))) for s in range(200)]
    covered, every = grammar_coverage(sources)
    assert len(every) > 30
    assert covered == every, f"never generated: {sorted(every - covered)}"


def test_strict_programs_type_check() -> None:
    sources = [strict_program(RandomChooser(random.Random(1000 + s))) for s in range(60)]
    failures = []
    for source in sources:
        try:
            compile_source(source)
        except Exception as exc:  # noqa: BLE001 (counted; a crash is the CLI test's finding)
            failures.append(f"{exc}\n{source}")
    assert len(failures) <= 3, "\n\n".join(failures[:3])


def test_strict_programs_use_every_feature() -> None:
    text = "\n".join(strict_program(RandomChooser(random.Random(s))) for s in range(200))
    for feature in ("group SO3", "convention e3nn", "let ", "-> ", "; lmax=", " by ", " per ", "index(", ": weights",
                    "x(", "mix uvw", "mix uvu", "mix uuu", "mix uvuv", "mix none", " + fuse(", "#"):
        assert feature in text, feature
    assert any(text.count(f"fuse({n}, {n}, {n}") for n in ("x", "A", "B", "h", "V", "Y"))


def test_cases_are_deterministic_per_seed() -> None:
    for target in ("cli", "loads"):
        assert [make_case(7, i, target) for i in range(30)] == [make_case(7, i, target) for i in range(30)]
    assert make_case(7, 0, "cli") != make_case(8, 0, "cli")


def test_mutations_reach_the_awkward_inputs() -> None:
    outputs = [mutate(RandomChooser(random.Random(s)), strict_program(RandomChooser(random.Random(s))))
               for s in range(300)]
    invalid = sum(1 for o in outputs if not _is_utf8(o))
    assert invalid >= 5
    assert any(b"\x0c" in o for o in outputs)
    assert any(b"2147483648" in o or b"99999999999999999999999" in o for o in outputs)
    assert any(o.count(b" + ") > 150 for o in outputs)
    assert any(b"\r\n" in o for o in outputs)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- bounded fuzzing


def _cli_example(worker: Worker, data) -> None:
    c = HypothesisChooser(data)
    text = random_program(c)
    source = mutate(c, text) if c.chance(0.4) else text.encode()
    case = Case("cli", source, c.integer(0, 2**31), command=c.choice(CLI_COMMANDS), filename=c.choice(FILENAMES))
    _assert_no_findings(lambda k: worker.run(k).findings, case, worker.run(case).findings)


def _library_example(worker: Worker, data) -> None:
    c = HypothesisChooser(data)
    text = random_program(c, strict_probability=0.85)
    source = mutate(c, text, allow_bytes=False) if c.chance(0.2) else text.encode()
    case = Case("loads", source, c.integer(0, 2**31))
    _assert_no_findings(lambda k: worker.run(k).findings, case, worker.run(case).findings)


@slow
@_settings(200)
@given(data=st.data())
def test_cli_on_random_programs(worker: Worker, data) -> None:
    _cli_example(worker, data)


@slow
@_settings(120)
@given(data=st.data())
def test_library_on_random_programs(worker: Worker, data) -> None:
    _library_example(worker, data)


# the quick subset's fuzzing: a few seconds of each target
@_settings(15)
@given(data=st.data())
def test_cli_on_a_few_random_programs(worker: Worker, data) -> None:
    _cli_example(worker, data)


@_settings(8)
@given(data=st.data())
def test_library_on_a_few_random_programs(worker: Worker, data) -> None:
    _library_example(worker, data)


@slow
@pytest.mark.parametrize("seed", [2, 5])
def test_native_kernels_on_random_programs(worker: Worker, seed: int) -> None:
    """Compiling C costs seconds per diagram: two programs, forward and derivatives."""
    case = Case("loads", strict_program(RandomChooser(random.Random(seed))).encode(), seed, native=True)
    _assert_no_findings(lambda k: worker.run(k).findings, case, worker.run(case).findings)


@pytest.mark.parametrize("index", slow_unless([0, 1, 2], lambda i: i == 0))
def test_cli_as_a_subprocess(cache_env: dict, tmp_path, index: int) -> None:
    """Real exit statuses and signals, as a user sees them."""
    case = make_case(11, index, "cli", subprocess_fraction=1.0)

    def run(k: Case) -> list[Finding]:
        directory = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        directory.mkdir()
        return run_cli_subprocess(k, str(directory), 60, env=cache_env)[0]

    _assert_no_findings(run, case, run(case))


# --------------------------------------------------------------------------- planted failures

_FAKE_CLI = '''
import os, signal, sys, time, traceback


def prints_traceback(argv):
    try:
        {}["x"]
    except KeyError:
        traceback.print_exc()
    return 2


def exits_3(argv):
    return 3


def raises(argv):
    raise KeyError("no such diagram")


def unlocated(argv):
    print("error: something is wrong", file=sys.stderr)
    return 2


def misplaced_caret(argv):
    path = argv[-1]
    line = open(path).read().split("\\n")[0]
    print(f"{path}:1:3: error: planted\\n    {line}\\n    ^", file=sys.stderr)
    return 2


def beyond_the_file(argv):
    print(f"{argv[-1]}:99:1: error: planted", file=sys.stderr)
    return 2


def hangs(argv):
    time.sleep(600)


def segfaults(argv):
    os.kill(os.getpid(), signal.SIGSEGV)


def fine(argv):
    print("ok")
    return 0
'''

PLANTED = [("prints_traceback", "traceback-printed"), ("exits_3", "bad-exit-status"),
           ("raises", "uncaught-exception"), ("unlocated", "error-without-location"),
           ("misplaced_caret", "error-caret-misplaced"), ("beyond_the_file", "location-outside-file"),
           ("hangs", "hang"), ("segfaults", "crash")]


@pytest.fixture(scope="module")
def fake_cli(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("fake") / "fake_cli.py"
    path.write_text(_FAKE_CLI)
    return str(path)


@pytest.fixture(scope="module")
def fake_worker(cache_env: dict, fake_cli: str):
    w = Worker(env=cache_env, entry=f"{fake_cli}:fine")
    yield w
    w.close()


@pytest.mark.parametrize("function, kind", slow_unless(PLANTED, lambda planted: planted[0] != "hangs"),
                         ids=[f for f, _ in PLANTED])
def test_the_cli_oracle_reports_planted_failures(fake_worker: Worker, fake_cli: str, function: str,
                                                 kind: str) -> None:
    fake_worker.entry = f"{fake_cli}:{function}"
    case = Case("cli", b"diagram d {\n  in x : 0e\n}\n", 0, command="check")
    findings = fake_worker.run(case, timeout=8).findings
    assert [f.kind for f in findings][:1] == [kind], findings


def test_a_well_behaved_cli_gives_no_finding(fake_worker: Worker, fake_cli: str) -> None:
    fake_worker.entry = f"{fake_cli}:fine"
    assert fake_worker.run(Case("cli", b"", 0)).findings == []


@slow
def test_the_command_writes_reproducers_and_exits_1(fake_cli: str, tmp_path, capsys) -> None:
    out = tmp_path / "findings"
    status = fuzz.main(["--minutes", "1", "--max-programs", "4", "--target", "cli", "--seed", "3",
                        "--cli-entry", f"{fake_cli}:exits_3", "--out", str(out), "--minimize-seconds", "3"])
    report = capsys.readouterr().out
    assert status == 1
    assert "cli: 4 programs" in report and "findings: 1 distinct" in report
    (source,) = out.glob("*.fus")
    assert "bad-exit-status" in source.name and source.with_suffix(".txt").read_text().startswith("finding: ")


def test_the_library_oracle_reports_wrong_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    import fusionc

    monkeypatch.setenv("FUSIONC_NATIVE", "0")
    source = "diagram d {\n  in x : 2x0e + 2x1o\n  in y : 0e + 1o\n  out z : 2x0e + 2x1o\n  z = fuse(x, y) mix uvw\n}\n"
    case = Case("loads", source.encode(), 4)
    assert run_loads_case(case) == ([], True)
    ops = fusionc.loads(source)

    class Off(ops.d):
        """A planted numerical bug: the real module, its output 1e-6 off."""

        def forward(self, *args):
            return super().forward(*args) * (1 + 1e-6)

    fake = types.SimpleNamespace(diagrams=ops.diagrams, d=Off, module=types.SimpleNamespace(d=Off))
    findings, compiled = run_loads_case(case, loads=lambda *args: fake)
    assert compiled and {f.kind for f in findings} == {"reference-mismatch"}, findings


def test_the_library_oracle_reports_a_module_that_is_not_equivariant(monkeypatch: pytest.MonkeyPatch) -> None:
    """...and not an output that vanishes identically, whose relative error is rounding noise."""
    import fusionc

    monkeypatch.setenv("FUSIONC_NATIVE", "0")
    source = "diagram d {\n  in x : 1e\n  out y : 2e\n  out z : 2e\n  let t = fuse(x, x) -> 2e\n  y = t\n  z = fuse(t, x)\n}\n"
    ops = fusionc.loads(source)

    class Squared(ops.d):
        def forward(self, *args):
            return tuple(o * o for o in super().forward(*args))

    oracle = fuzz._LibraryOracle(Case("loads", source.encode(), 0), random.Random(0))
    oracle.equivariance(ops.d(dtype=torch.float64), ops.diagrams[0])
    assert oracle.findings == []
    oracle.equivariance(Squared(dtype=torch.float64), ops.diagrams[0])
    assert [f.kind for f in oracle.findings] == ["not-equivariant"]


def test_error_locations_are_checked_against_the_file() -> None:
    source = b"diagram d {\n\tin x : 0e\n}\n"
    good = "f.fus:2:5: error: planted\n     in x : 0e\n        ^"
    assert check_location("cli", good, "f.fus", source) == []
    assert [f.kind for f in check_location("cli", good.replace("        ^", "       ^"), "f.fus", source)] == [
        "error-caret-misplaced"]
    assert [f.kind for f in check_location("cli", good.replace("in x", "in y"), "f.fus", source)] == [
        "error-shows-wrong-line"]
    assert [f.kind for f in check_location("cli", "f.fus:9:1: error: planted", "f.fus", source)] == [
        "location-outside-file"]
    assert [f.kind for f in check_location("cli", "f.fus: error: planted", "f.fus", source)] == [
        "error-without-location"]


def test_the_minimizer_keeps_the_failure_and_drops_the_rest() -> None:
    source = strict_program(RandomChooser(random.Random(4))).encode() + b"\ndiagram q { in x : 0e  out y : 0e  y = x mix uvuv }\n"
    small = minimize(source, lambda s: b"uvuv" in s, 30)
    assert small == b"uvuv"

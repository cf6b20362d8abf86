"""CPU benchmark suite: fusionc's torch back end against e3nn, cuEquivariance and mace-torch.

    python -m benchmarks.run            # every case, float32 and float64, scaling sweeps, plots;
                                        # writes benchmarks/results/ and the README's results table
    python -m benchmarks.run --quick    # seconds: every case runs and matches its peers; no files

Every contender runs in this one process (mace-torch, which pins e3nn 0.4.4, in its own
environment, started from here: `benchmarks/mace_peer.py`), on 2 threads, taking turns call by
call; each figure is the median of the runs after warm-up, with their 25th and 75th percentiles.
Peers that share fusionc's weights (e3nn, mace-torch) are checked to give the same outputs before
they are timed; cuEquivariance keeps its own weights (its layout of them differs) and is timed on
the same shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import (PASSES, TOLERANCE, check_peers, matmul_peak, peak_bytes, run_pass, spread, summary,
                               time_alternating, write_readme)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
THREADS = 2
#: The input each case differentiates for its double backward (forces): the spherical harmonics
#: of the edges for the products, the features otherwise.
FORCE_INPUT = {"fc_tp": 1, "conv_tp": 1, "mace_product": 0, "fusion_block": 0}


def _fusionc(name: str, source: str | Path):
    import fusionc

    ops = fusionc.load(source) if isinstance(source, Path) else fusionc.loads(source)
    diagram = next(d for d in ops.diagrams if d.name == name)
    return getattr(ops, name), diagram


def _flops(diagram) -> tuple[int, int]:
    """Per-row FLOPs of the forward, chosen and naive, as `fusionc check --explain` reports them."""
    from fusionc.analysis.plan import plan_diagram

    plan = plan_diagram(diagram)
    return plan.planned_flops, plan.naive_flops


def _e3nn_instructions(irreps, mode: str):
    return [(i, j, k, mode, True) for i, (_, a) in enumerate(irreps[0]) for j, (_, b) in enumerate(irreps[1])
            for k, (_, c) in enumerate(irreps[2]) if c in a * b]


def build_case(case: str, dtype: torch.dtype, rows: int, source: str | Path | None = None) -> dict:
    """{contender: (module, inputs, shares fusionc's weights)} and the forward FLOPs per row."""
    from fusionc.testing import random_inputs

    g = torch.Generator().manual_seed(0)
    source = source or REPO / "kernels" / ("tensor_products.fus" if case in ("fc_tp", "conv_tp") else
                                           "mace_product.fus" if case == "mace_product" else "fusion_block.fus")
    cls, diagram = _fusionc(case, source)
    torch.manual_seed(1)
    mine = cls(dtype=dtype)
    inputs = random_inputs(mine, diagram, rows, g, dtype)
    contenders = {"fusionc": (mine, inputs, True)}
    irreps = [str(s) for s in (*mine.irreps_in, mine.irreps_out[0])]
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn builds its CG buffers in the default dtype
    try:
        _peers(case, contenders, irreps, dtype, rows, g)
    finally:
        torch.set_default_dtype(saved)
    flops, naive = _flops(diagram)
    return {"contenders": contenders, "flops": flops, "naive_flops": naive}


def _peers(case: str, contenders: dict, irreps: list, dtype: torch.dtype, rows: int, g: torch.Generator) -> None:
    from e3nn import o3

    mine, inputs, _ = contenders["fusionc"]
    irreps = [o3.Irreps(s) for s in irreps]
    if case == "fc_tp":
        peer = o3.FullyConnectedTensorProduct(*irreps).to(dtype)
        with torch.no_grad():
            peer.weight.copy_(mine.weight)
        contenders["e3nn"] = (peer, inputs, True)
    elif case == "conv_tp":
        peer = o3.TensorProduct(*irreps, _e3nn_instructions(irreps, "uvu"), shared_weights=False,
                                internal_weights=False).to(dtype)
        contenders["e3nn"] = (peer, inputs, True)
    if case in ("fc_tp", "conv_tp"):
        try:
            import cuequivariance as cue
            import cuequivariance_torch as cuet
        except ImportError:
            cuet = None
        if cuet is not None:
            ir = [cue.Irreps("O3", str(s)) for s in irreps]
            if case == "fc_tp":
                peer = cuet.FullyConnectedTensorProduct(*ir, layout=cue.mul_ir, dtype=dtype, method="naive")
                contenders["cuequivariance"] = (peer, inputs, False)
            else:
                peer = cuet.ChannelWiseTensorProduct(ir[0], ir[1], [i for _, i in ir[2]], layout=cue.mul_ir,
                                                     shared_weights=False,
                                                     dtype=dtype, method="naive")
                w = torch.randn(rows, peer.weight_numel, generator=g, dtype=dtype)
                contenders["cuequivariance"] = (peer, inputs[:2] + [w], False)


def check_case(case: str, built: dict, dtype: torch.dtype) -> list[dict]:
    """`check_peers` on a case (cuEquivariance keeps its own weights, and for conv_tp gives one
    output block per path rather than their sum: only finite outputs)."""
    return [{"case": case, **c} for c in check_peers(case, built["contenders"], dtype, FORCE_INPUT[case])]


def measure_case(case: str, built: dict, dtype: torch.dtype, rows: int, repeats: int, memory: bool) -> list[dict]:
    results = []
    for which in PASSES:
        calls = {name: (lambda m=m, i=i: run_pass(m, i, which, FORCE_INPUT[case]))
                 for name, (m, i, _) in built["contenders"].items()}
        times = time_alternating(calls, repeats)
        for name, fn in calls.items():
            row = {"case": case, "contender": name, "dtype": str(dtype)[6:], "pass": which, "rows": rows,
                   **summary(times[name]), "flops_per_row": built["flops"]}
            if memory:
                row["peak_bytes"] = peak_bytes(fn)
            results.append(row)
    return results


def mace_peer(quick: bool, python: str | None) -> dict | None:
    """Run benchmarks/mace_peer.py in the mace-torch environment, if there is one."""
    python = python or os.environ.get("FUSIONC_MACE_PYTHON") or str(REPO / ".venv-mace" / "bin" / "python")
    if not Path(python).exists():
        print(f"mace-torch: skipped (no environment at {python}; see README)")
        return None
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONPATH": str(REPO)}
    command = [python, "-m", "benchmarks.mace_peer"] + (["--quick"] if quick else [])
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.mace_peer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fc_source(lmax: int) -> str:
    features = " + ".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    sh = " + ".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(min(2 * lmax, lmax + 1) + 1))
    return (f"diagram fc_tp {{\n    in x : 32x({features})\n    in y : {sh}\n    out z : 32x({features})\n"
            f"    z = fuse(x, y) mix uvw\n}}\n")


def mace_source(lmax: int) -> str:
    features = " + ".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    return (f"diagram mace_product {{\n    in A : 64x({features})\n    in z : index(10)\n    out B : 64x(0e + 1o)\n"
            f"    B = A mix uuu per z + fuse(A, A) mix uuu per z + fuse(A, A, A) mix uuu per z\n}}\n")


def scaling(repeats: int) -> list[dict]:
    """fc_tp (fusionc against e3nn) and mace_product (fusionc) forward+backward in float32, over
    l_max at 1,000 rows and over rows at the standard library's l_max."""
    sweeps = []
    points = [("lmax", l, 1000) for l in range(1, 6)] + [("rows", 2, r) for r in (100, 1000, 10000, 100000)]
    for case, make in (("fc_tp", fc_source), ("mace_product", mace_source)):
        for axis, lmax, rows in points:
            if case == "mace_product" and axis == "rows":
                lmax = 3
                if rows > 10000:  # fusionc's forward+backward needs more than this machine's 24 GiB here
                    continue
            built = build_case(case, torch.float32, rows, make(lmax))
            contenders = {k: v for k, v in built["contenders"].items() if k in ("fusionc", "e3nn")}
            calls = {name: (lambda m=m, i=i: run_pass(m, i, "forward+backward")) for name, (m, i, _) in contenders.items()}
            times = time_alternating(calls, max(3, repeats // (10 if rows >= 100000 else 1)), warmup=1)
            for name in calls:
                sweeps.append({"case": case, "axis": axis, "lmax": lmax, "rows": rows, "contender": name,
                               **summary(times[name]), "flops_per_row": built["flops"]})
            print(f"  scaling {case:<13} l_max={lmax} rows={rows:>6}: " +
                  ", ".join(f"{n} {sweeps[-k - 1]['median_ms']:.2f} ms" for k, n in enumerate(reversed(list(calls)))))
    return sweeps


def plot(sweeps: list[dict], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, label in (("lmax", "l_max (1,000 rows)"), ("rows", "rows (fc_tp l_max 2, mace_product l_max 3)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for case in ("fc_tp", "mace_product"):
            for contender in ("fusionc", "e3nn"):
                pts = [(s[axis], s["median_ms"]) for s in sweeps
                       if (s["case"], s["axis"], s["contender"]) == (case, axis, contender)]
                if pts:
                    ax.loglog(*zip(*pts), marker="o", label=f"{case} · {contender}")
        ticks = sorted({s[axis] for s in sweeps if s["axis"] == axis})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:,}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.set_ylabel("forward+backward, float32, 2 threads (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = directory / f"scaling_{axis}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def table(report: dict) -> str:
    """The README's results table: float32 medians, fusionc's speed-up over the fastest peer."""
    peaks = report["matmul_gflops"]
    lines = [f"CPU: {report['machine']}, {THREADS} threads, torch {report['torch']}; matrix-product peak "
             f"{peaks['float32']:.0f} GFLOP/s (float32), {peaks['float64']:.0f} GFLOP/s (float64), measured in "
             "the same run. Medians of "
             f"{report['repeats']} runs, contenders alternating; speed-up = fastest peer / fusionc; "
             "GFLOP/s from the planner's forward FLOPs (×3 for forward+backward).",
             "",
             "| case | dtype | pass | fusionc ms | e3nn ms | cuEquivariance ms | mace-torch ms | speed-up | "
             "fusionc GFLOP/s | peak MiB fusionc / best peer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = report["results"]
    keys = sorted({(r["case"], r["dtype"], r["pass"]) for r in rows},
                  key=lambda k: (["fc_tp", "conv_tp", "mace_product", "fusion_block"].index(k[0]), k[1],
                                 PASSES.index(k[2])))
    for case, dtype, which in keys:
        entries = {r["contender"]: r for r in rows if (r["case"], r["dtype"], r["pass"]) == (case, dtype, which)}
        mine = entries["fusionc"]
        peers = {k: v for k, v in entries.items() if k != "fusionc"}
        cells = [f"{peers[p]['median_ms']:.2f}" if p in peers else "–" for p in ("e3nn", "cuequivariance", "mace-torch")]
        speedup = f"{min(p['median_ms'] for p in peers.values()) / mine['median_ms']:.2f}×" if peers else "–"
        if "mace-torch" in peers:  # its ratio comes from its own run, where both took turns
            same_run = next(r for r in report["mace_peer_fusionc"] if (r["dtype"], r["pass"]) == (dtype, which))
            speedup = f"{peers['mace-torch']['median_ms'] / same_run['median_ms']:.1f}× ¹"
        factor = {"forward": 1, "forward+backward": 3}.get(which)
        gflops = f"{factor * mine['flops_per_row'] * mine['rows'] / mine['median_ms'] / 1e6:.1f}" if factor else "–"
        memory = "–"
        if "peak_bytes" in mine:
            best = min((p["peak_bytes"] for p in peers.values() if "peak_bytes" in p), default=None)
            memory = f"{mine['peak_bytes'] / 2**20:.1f} / " + (f"{best / 2**20:.1f}" if best is not None else "–")
        lines.append(f"| {case} | {dtype} | {which} | {mine['median_ms']:.2f} | {' | '.join(cells)} | {speedup} | "
                     f"{gflops} | {memory} |")
    if "mace_peer_fusionc" in report:
        lines += ["", "¹ mace-torch runs in its own environment; its speed-up is over fusionc's module imported "
                      "from the same SymmetricContraction (`fusionc.compat.mace`), timed in that run, contenders "
                      "alternating: " + ", ".join(f"{r['dtype']} {r['pass']} {r['median_ms']:.1f} ms"
                                                 for r in report["mace_peer_fusionc"]) + "."]
    if "first_use" in report:
        lines += ["", "First use of a cached op in a new process (`fc_tp`, 16 rows, medians of {processes} "
                      "processes): import fusionc and torch {import_s:.2f} s, `fusionc.load` {load_s:.2f} s, "
                      "first call {first_call_s:.3f} s.".format(**report["first_use"])]
    if report.get("interaction"):
        from benchmarks import interaction

        lines += ["", "**Message passing** (`benchmarks/interaction.py`): the interaction convolution "
                      "`m[dst] += fuse(h[src], sh) mix uvu by w` (h 32x(0e+1o+2e), sh to l = 3, 24 paths, 768 "
                      "per-edge weights) on water boxes (64 molecules at 1 g/cm³, replicated; `ase` neighbour "
                      "list, 5 Å cutoff: 54 neighbours per atom) and the g2 molecules as one batch; e3nn is "
                      "`index_select` + `o3.TensorProduct` + `index_add`, cuEquivariance its indexed "
                      "`ChannelWiseTensorProduct` (CPU path, its own weights); double backward differentiates "
                      "the forces on `sh`. Peak memory: allocated during one untimed call, inputs excluded. "
                      f"Medians of {min(report['repeats'], interaction.REPEATS)} runs ({interaction.LARGE_REPEATS} "
                      "for the 10,368-atom box, where each peer's pass runs in a process of its own: out of memory "
                      "means the kernel's out-of-memory killer ended it on this 24 GiB machine).", "",
                      interaction.table(report["interaction"]["results"])]
    naive = {r["case"]: r for r in report["flops"]}
    block = naive.get("fusion_block")
    if block:
        lines += ["", f"fusion_block has no peer; its plan needs {block['flops']:,} FLOPs per row against "
                      f"{block['naive_flops']:,} for the naive plan ({block['naive_flops'] / block['flops']:.1f}×)."]
    return "\n".join(lines)


#: One new process's use of a cached op: import, load (parse, check, import the cached module) and
#: the first call (load the cached native library, run).
FIRST_USE = """
import time
start = time.perf_counter()
import torch, fusionc
imported = time.perf_counter()
module = fusionc.load({path!r}).fc_tp()
loaded = time.perf_counter()
module(torch.randn(16, 288), torch.randn(16, 16))
called = time.perf_counter()
print(imported - start, loaded - imported, called - loaded)
"""


def first_use(repeats: int) -> dict:
    """Seconds a new process takes to import fusionc, load `fc_tp` and make its first call, with the
    module and its native kernels already in the cache (a first process fills it): medians."""
    code = FIRST_USE.format(path=str(REPO / "kernels" / "tensor_products.fus"))
    runs = []
    for _ in range(repeats + 1):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
        runs.append([float(x) for x in out.stdout.split()])
    medians = [sorted(column)[len(column) // 2] for column in zip(*runs[1:])]
    return {**dict(zip(("import_s", "load_s", "first_call_s"), medians)), "processes": repeats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 runs: every case runs and matches")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--mace-python", help="python of an environment with mace-torch (default .venv-mace)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--table-only", action="store_true", help="rewrite the table and plots from cpu.json")
    parser.add_argument("--interaction-only", action="store_true",
                        help="re-measure the message-passing rows (benchmarks/interaction.py) into cpu.json, keep the rest")
    args = parser.parse_args()
    if args.table_only:
        report = json.loads((args.output / "cpu.json").read_text())
        return _publish(report, args.output)
    torch.set_num_threads(THREADS)
    if args.interaction_only:
        from benchmarks import interaction

        report = json.loads((args.output / "cpu.json").read_text())
        report["interaction"] = interaction.run(False, args.repeats)
        report["checks"] = [c for c in report["checks"] if c.get("case") != "interaction"]
        report["checks"] += report["interaction"]["checks"]
        (args.output / "cpu.json").write_text(json.dumps(report, indent=1) + "\n")
        return _publish(report, args.output)
    rows = {"fc_tp": 2000, "conv_tp": 2000, "mace_product": 1000, "fusion_block": 1000}
    if args.quick:
        rows = {k: 16 for k in rows}
    repeats = 2 if args.quick else args.repeats
    report = {"machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
              "torch": torch.__version__, "threads": THREADS, "repeats": repeats, "quick": args.quick,
              "results": [], "checks": [], "flops": []}
    report["matmul_gflops"] = {str(d)[6:]: matmul_peak(d, 256 if args.quick else 1536) for d in (torch.float32, torch.float64)}
    for case in ("fc_tp", "conv_tp", "mace_product", "fusion_block"):
        for dtype in (torch.float32, torch.float64):
            built = build_case(case, dtype, rows[case])
            report["checks"] += check_case(case, built, dtype)
            report["results"] += measure_case(case, built, dtype, rows[case], repeats, memory=True)
            for r in report["results"][-3 * len(built["contenders"]):]:
                print(f"  {r['case']:<13}{r['dtype']:<9}{r['pass']:<18}{r['contender']:<16}{spread(r)}")
        report["flops"].append({"case": case, "flops": built["flops"], "naive_flops": built["naive_flops"]})
    from benchmarks import interaction

    report["interaction"] = interaction.run(args.quick, repeats)
    report["checks"] += report["interaction"]["checks"]
    report["first_use"] = first_use(1 if args.quick else 5)
    print("  fc_tp, cached, in a new process: import {import_s:.2f} s, load {load_s:.2f} s, "
          "first call {first_call_s:.3f} s".format(**report["first_use"]))
    peer = mace_peer(args.quick, args.mace_python)
    if peer is not None:
        flops = next(f["flops"] for f in report["flops"] if f["case"] == "mace_product")
        for r in peer["results"]:
            if r["contender"] == "mace-torch":
                report["results"].append({**r, "flops_per_row": flops})
                print(f"  mace_product {r['dtype']:<9}{r['pass']:<18}{'mace-torch':<16}{spread(r)}")
        report["checks"] += peer["checks"]
        report["mace_peer_fusionc"] = [r for r in peer["results"] if r["contender"] == "fusionc"]
        bad = [c for c in peer["checks"] if not c["relative_error"] < TOLERANCE[getattr(torch, c["dtype"])] * 10]
        if bad:
            raise AssertionError(f"mace-torch and fusionc differ: {bad}")
    if args.quick:
        print(f"quick run: {len(report['results'])} timings, {len(report['checks'])} checks, all matched")
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    report["scaling"] = []
    (args.output / "cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_scaling:
        report["scaling"] = scaling(args.repeats)
        (args.output / "cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    return _publish(report, args.output)


def _publish(report: dict, output: Path) -> int:
    if report["scaling"]:
        plot(report["scaling"], output)
    markdown = table(report)
    (output / "cpu.md").write_text(markdown + "\n")
    write_readme("benchmarks", markdown, "python -m benchmarks.run")
    print(markdown)
    print(f"wrote {output}/cpu.json, cpu.md, scaling_*.png and README.md's results")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Message passing on real graphs: the MACE/NequIP interaction convolution (gather the sender's
features, couple them with the edge's spherical harmonics under per-edge weights, sum into the
receiver) as one fusionc diagram, against e3nn composed with index ops and cuEquivariance's
indexed channel-wise product (its CPU path), on water boxes and a batch of g2 molecules
(`benchmarks.graphs`). Part of `python -m benchmarks.run`; alone:

    python -m benchmarks.interaction [--quick]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import PASSES, check_peers, peak_bytes, run_pass, spread, summary, time_alternating
from benchmarks.graphs import Graph, g2, water

SOURCE = """\
diagram interaction {
    in  h[node]   : 32x(0e + 1o + 2e)
    in  sh[edge]  : 0e + 1o + 2e + 3o
    in  w[edge]   : weights
    in  src[edge] : index(node)
    in  dst[edge] : index(node)
    out m[node]   : 32x(0e + 1o + 2e + 1e + 2o + 3o + 3e)
    m[dst] += fuse(h[src], sh) mix uvu by w
}
"""
NODE, EDGE, OUT = "32x0e + 32x1o + 32x2e", "0e + 1o + 2e + 3o", "32x0e + 32x1o + 32x2e + 32x1e + 32x2o + 32x3o + 32x3e"
#: Timed runs on the 10,368-atom box, where one of e3nn's calls takes from 30 s to minutes
LARGE_REPEATS = 2
#: Timed runs on the other graphs (the suite's --repeats when fewer)
REPEATS = 5
#: (graph, dtypes, repeats or None for REPEATS, whether each peer runs in a process of its own):
#: graphs as `graph` makes them. The 10,368-atom box in float32 only, its peers isolated: e3nn's
#: double backward there needs more memory than this machine's 24 GiB (the kernel's out-of-memory
#: killer ends the process that runs it)
FULL = ((("water", (1, 1, 5)), (torch.float32, torch.float64), None, False),
        (("g2", 5.0), (torch.float32, torch.float64), None, False),
        (("water", (3, 3, 6)), (torch.float32,), LARGE_REPEATS, True))
QUICK = ((("water", (1, 1, 1), 3.0), (torch.float32, torch.float64), None, False),
         (("g2", 3.0), (torch.float32, torch.float64), None, False))


def graph(spec: tuple) -> Graph:
    """("water", repeats[, cutoff]) or ("g2", cutoff)."""
    return water(*spec[1:]) if spec[0] == "water" else g2(*spec[1:])


class _E3nn(torch.nn.Module):
    """e3nn's composition: h[src] (index_select), o3.TensorProduct with uvu paths and per-edge
    weights, index_add into the receivers. Takes fusionc's inputs and weight layout."""

    def __init__(self, nodes: int) -> None:
        super().__init__()
        from e3nn import o3

        irreps = [o3.Irreps(s) for s in (NODE, EDGE, OUT)]
        instructions = [(i, j, k, "uvu", True) for i, (_, a) in enumerate(irreps[0])
                        for j, (_, b) in enumerate(irreps[1]) for k, (_, c) in enumerate(irreps[2]) if c in a * b]
        self.tp = o3.TensorProduct(*irreps, instructions, shared_weights=False, internal_weights=False)
        self.nodes, self.dim = nodes, irreps[2].dim

    def forward(self, h, sh, w, src, dst):
        messages = self.tp(h.index_select(0, src), sh, w)
        return messages.new_zeros(self.nodes, self.dim).index_add(0, dst, messages)


class _Cue(torch.nn.Module):
    """cuEquivariance-torch's channel-wise product with its indices (h by src, output by dst); its
    own weight layout and one output block per path (not their sum): timed, not compared."""

    def __init__(self, nodes: int, dtype: torch.dtype) -> None:
        super().__init__()
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        outs = [ir for _, ir in cue.Irreps("O3", OUT.replace("32x", "1x"))]
        self.tp = cuet.ChannelWiseTensorProduct(cue.Irreps("O3", NODE), cue.Irreps("O3", EDGE), outs,
                                                layout=cue.mul_ir, shared_weights=False, dtype=dtype, method="naive")
        self.nodes = nodes

    def forward(self, h, sh, w, src, dst):
        return self.tp(h, sh, w, indices_1=src, indices_out=dst, size_out=self.nodes)


def build(graph: Graph, dtype: torch.dtype, only: str | None = None) -> dict:
    """{contender: (module, inputs, shares fusionc's weights)} on one graph (`only` that one)."""
    import fusionc
    from e3nn import o3

    g = torch.Generator().manual_seed(0)
    mine = fusionc.loads(SOURCE).interaction(dtype=dtype)
    h = torch.randn(graph.atoms, 288, generator=g, dtype=dtype)  # 32x(0e + 1o + 2e)
    sh = o3.spherical_harmonics(EDGE, graph.vectors.to(dtype), True, normalization="component")
    w = torch.randn(graph.edges, mine.input_weight_numel["w"], generator=g, dtype=dtype)
    inputs = [h, sh, w, graph.src, graph.dst]
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn builds its CG buffers in the default dtype
    try:
        contenders = {"fusionc": (mine, inputs, True), "e3nn": (_E3nn(graph.atoms), inputs, True)}
        try:
            cue = _Cue(graph.atoms, dtype) if only in (None, "cuequivariance") else None
        except ImportError:
            cue = None
        if cue is not None:
            their_w = torch.randn(graph.edges, cue.tp.weight_numel, generator=g, dtype=dtype)
            contenders["cuequivariance"] = (cue, [h, sh, their_w, graph.src, graph.dst], False)
    finally:
        torch.set_default_dtype(saved)
    return {k: v for k, v in contenders.items() if only in (None, k)}


def check(graph: Graph, contenders: dict, dtype: torch.dtype) -> list[dict]:
    """`check_peers`: e3nn gives fusionc's numbers in every pass (the double backward
    differentiates the forces on the spherical harmonics); cuEquivariance, finite ones."""
    return [{"case": "interaction", "graph": graph.name, **c}
            for c in check_peers(f"interaction/{graph.name}", contenders, dtype, 1)]


def _row(graph: Graph, name: str, dtype: torch.dtype, which: str, figures: dict) -> dict:
    row = {"case": "interaction", "graph": graph.name, "atoms": graph.atoms, "edges": graph.edges,
           "contender": name, "dtype": str(dtype)[6:], "pass": which, **figures}
    if "median_ms" in figures:
        row["edges_per_s"] = graph.edges / (row["median_ms"] / 1000)
        said = f"{spread(row)}  {row['edges_per_s'] / 1e6:.2f} M edges/s, {row['peak_bytes'] / 2**20:.0f} MiB"
    else:
        said = "out of memory"
    print(f"  interaction  {graph.name} {graph.atoms:<8}{row['dtype']:<9}{which:<18}{name:<16}{said}", flush=True)
    return row


def measure(graph: Graph, contenders: dict, dtype: torch.dtype, repeats: int) -> list[dict]:
    """Per pass and contender: the peak of memory allocated during one call (inputs excluded; an
    untimed call, after `check` ran each once), then the median time of `repeats` calls, taking
    turns call by call, and edges per second."""
    results = []
    for which in PASSES:
        calls = {name: (lambda m=m, i=i: run_pass(m, i, which, 1)) for name, (m, i, _) in contenders.items()}
        peaks = {name: peak_bytes(fn) for name, fn in calls.items()}
        times = time_alternating(calls, repeats, warmup=0)
        results += [_row(graph, name, dtype, which, {**summary(times[name]), "peak_bytes": peaks[name]})
                    for name in calls]
    return results


def _alone(spec: tuple, dtype: torch.dtype, name: str, which: str, repeats: int) -> dict:
    """One contender's pass in this process: its peak memory (the first call), then `repeats` timed calls."""
    module, inputs, _ = build(graph(spec), dtype, only=name)[name]
    call = lambda: run_pass(module, inputs, which, 1)  # noqa: E731
    peak = peak_bytes(call)
    return {**summary(time_alternating({name: call}, repeats, warmup=0)[name]), "peak_bytes": peak}


def _isolated(spec: tuple, dtype: torch.dtype, name: str, which: str, repeats: int) -> dict:
    """`_alone` in a process of its own: a contender that runs out of memory ends that process (the
    kernel's out-of-memory killer, or torch's allocator failing), not the suite."""
    arguments = json.dumps([spec, str(dtype)[6:], name, which, repeats])
    done = subprocess.run([sys.executable, "-m", "benchmarks.interaction", "--alone", arguments],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode == 0:
        return json.loads(done.stdout.splitlines()[-1])
    if done.returncode == -signal.SIGKILL or "can't allocate memory" in done.stderr:
        return {"out_of_memory": True}
    raise RuntimeError(f"interaction/{name}/{which}: {done.stderr[-2000:]}")


def run(quick: bool, repeats: int) -> dict:
    """Every graph, dtype and pass: {"results": timings, "checks": comparisons with e3nn}. On a graph
    whose peers run isolated, fusionc runs here and each peer's pass in a process of its own, after
    this one freed its inputs; nothing is compared there (the other graphs compare every pass)."""
    report = {"results": [], "checks": []}
    for spec, dtypes, fewer, isolated in QUICK if quick else FULL:
        g = graph(spec)
        for dtype in dtypes:
            count = 2 if quick else fewer or min(repeats, REPEATS)
            if not isolated:
                contenders = build(g, dtype)
                report["checks"] += check(g, contenders, dtype)
                report["results"] += measure(g, contenders, dtype, count)
                continue
            for which in PASSES:
                report["results"].append(_row(g, "fusionc", dtype, which, _alone(spec, dtype, "fusionc", which, count)))
            for name in ("e3nn", "cuequivariance"):
                for which in PASSES:
                    report["results"].append(_row(g, name, dtype, which, _isolated(spec, dtype, name, which, count)))
    return report


def table(results: list[dict]) -> str:
    """The results as a markdown table: per graph, dtype and pass, each contender's median, fusionc's
    speed-up over the fastest peer, its edges per second and its peak memory against e3nn's."""
    lines = ["| graph | dtype | pass | fusionc ms | e3nn ms | cuEquivariance ms | speed-up vs best "
             "peer | fusionc M edges/s | peak MiB fusionc / e3nn |", "|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["graph"], r["atoms"], r["dtype"], r["pass"]) for r in results)
    for graph, atoms, dtype, which in keys:
        rows = {r["contender"]: r for r in results
                if (r["graph"], r["atoms"], r["dtype"], r["pass"]) == (graph, atoms, dtype, which)}
        mine = rows["fusionc"]
        peers = {k: v for k, v in rows.items() if k != "fusionc" and "median_ms" in v}
        speedup = f"{min(r['median_ms'] for r in peers.values()) / mine['median_ms']:.1f}×" if peers else "peers out of memory"

        def ms(name: str) -> str:
            if name not in rows:
                return "–"
            return f"{rows[name]['median_ms']:.1f}" if "median_ms" in rows[name] else "out of memory"

        e3nn = rows.get("e3nn", {}).get("peak_bytes")
        memory = f"{mine['peak_bytes'] / 2**20:.0f} / " + (f"{e3nn / 2**20:.0f}" if e3nn else "–")
        lines.append(f"| {graph}: {mine['atoms']:,} atoms, {mine['edges']:,} edges | {dtype} | {which} | {ms('fusionc')} | "
                     f"{ms('e3nn')} | {ms('cuequivariance')} | {speedup} | "
                     f"{mine['edges_per_s'] / 1e6:.2f} | {memory} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small graphs, 2 runs: every contender runs and matches")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--alone", help=argparse.SUPPRESS)  # [graph, dtype, contender, pass, repeats]: `_isolated`
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.alone:
        spec, dtype, name, which, repeats = json.loads(args.alone)
        print(json.dumps(_alone(tuple(spec), getattr(torch, dtype), name, which, repeats)))
        return 0
    report = run(args.quick, args.repeats)
    print(table(report["results"]))
    print(f"{len(report['checks'])} checks, all matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())

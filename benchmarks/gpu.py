"""GPU benchmark of the standard library: fusionc (torch and Triton back ends) against e3nn and
cuEquivariance, forward, forward+backward and the force-training double backward, timed with
triton.testing.do_bench. Not run in CI: it needs a CUDA GPU.

    python benchmarks/gpu.py                 # time every case (needs CUDA), table + JSON
    python benchmarks/gpu.py --check         # no timing: build every contender, check they agree
                                             # (runs on the CPU, Triton under TRITON_INTERPRET=1)

Peers that are not installed are reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # --check on a machine without a GPU

import fusionc  # noqa: E402

PASSES = ("forward", "forward+backward", "double backward")


def _peer(name: str):
    try:
        return __import__(name)
    except ImportError as exc:
        print(f"  {name}: skipped ({exc})")
        return None


def _cases(device: str, rows: int):
    """(case, contender, module, inputs as a list) for every contender that is installed."""
    tp = {backend: fusionc.load(REPO / "kernels" / "tensor_products.fus", backend=backend)
          for backend in ("torch", "triton")}
    mace = {backend: fusionc.load(REPO / "kernels" / "mace_product.fus", backend=backend)
            for backend in ("torch", "triton")}
    block = {backend: fusionc.load(REPO / "kernels" / "fusion_block.fus", backend=backend)
             for backend in ("torch", "triton")}
    g = torch.Generator().manual_seed(0)
    x, sh = torch.randn(rows, 288, generator=g), torch.randn(rows, 16, generator=g)
    inputs = {"fc_tp": [x, sh], "conv_tp": [x, sh, torch.randn(rows, 768, generator=g)],
              "mace_product": [torch.randn(rows, 1024, generator=g), torch.randint(0, 10, (rows,), generator=g)],
              "fusion_block": [torch.randn(rows, 144, generator=g) for _ in range(4)]}
    inputs = {k: [t.to(device) for t in v] for k, v in inputs.items()}
    out = []
    for backend in ("torch", "triton"):
        torch.manual_seed(1)  # the same weights for both back ends
        out.append(("fc_tp", f"fusionc-{backend}", tp[backend].fc_tp().to(device), inputs["fc_tp"]))
        out.append(("conv_tp", f"fusionc-{backend}", tp[backend].conv_tp().to(device), inputs["conv_tp"]))
        torch.manual_seed(2)
        out.append(("mace_product", f"fusionc-{backend}", mace[backend].mace_product().to(device),
                    inputs["mace_product"]))
        torch.manual_seed(3)
        out.append(("fusion_block", f"fusionc-{backend}", block[backend].fusion_block().to(device),
                    inputs["fusion_block"]))
    e3nn = _peer("e3nn")
    if e3nn is not None:
        from e3nn import o3

        reference = tp["torch"].fc_tp
        fc = o3.FullyConnectedTensorProduct(*reference.irreps_in, reference.irreps_out[0]).to(device)
        with torch.no_grad():
            fc.weight.copy_(next(m for c, n, m, _ in out if (c, n) == ("fc_tp", "fusionc-torch")).weight)
        out.append(("fc_tp", "e3nn", fc, inputs["fc_tp"]))
        conv = tp["torch"].conv_tp
        irreps = [o3.Irreps(s) for s in (*conv.irreps_in, conv.irreps_out[0])]
        instructions = [(i, j, k, "uvu", True) for i, (_, a) in enumerate(irreps[0]) for j, (_, b) in enumerate(irreps[1])
                        for k, (_, c) in enumerate(irreps[2]) if c in a * b]
        out.append(("conv_tp", "e3nn", o3.TensorProduct(*irreps, instructions, shared_weights=False,
                                                          internal_weights=False).to(device), inputs["conv_tp"]))
    cue = _peer("cuequivariance_torch")
    if cue is not None:
        import cuequivariance as cueq

        reference = tp["torch"].fc_tp
        irreps = [cueq.Irreps("O3", s) for s in (*reference.irreps_in, reference.irreps_out[0])]
        out.append(("fc_tp", "cuequivariance", cue.FullyConnectedTensorProduct(
            *irreps, layout=cueq.mul_ir, device=device), inputs["fc_tp"]))
        conv = cue.ChannelWiseTensorProduct(irreps[0], irreps[1], layout=cueq.mul_ir, shared_weights=False,
                                            device=device)
        w = torch.randn(inputs["conv_tp"][0].shape[0], conv.weight_numel, device=device)
        out.append(("conv_tp", "cuequivariance", conv, inputs["conv_tp"][:2] + [w]))
    return out


def _run(module, inputs, which: str):
    floats = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    result = module(*floats)
    if which == "forward":
        return result
    if which == "forward+backward":
        result.pow(2).sum().backward()
        return result
    force, = torch.autograd.grad(result.pow(2).sum(), floats[0], create_graph=True)
    force.pow(2).sum().backward()
    return force


def check(device: str) -> int:
    cases = _cases(device, rows=7)
    status = 0
    for case in sorted({c for c, *_ in cases}):
        mine = {name: (m, i) for c, name, m, i in cases if c == case}
        reference = _run(*mine["fusionc-torch"], "forward").detach()
        for name, (module, inputs) in mine.items():
            if name in ("fusionc-torch", "cuequivariance"):  # cuEquivariance's weights are its own
                continue
            out = _run(module, inputs, "forward").detach()
            error = ((out - reference).abs().max() / reference.abs().max()).item()
            ok = error < 1e-4
            status |= not ok
            print(f"  {case:<14}{name:<18} relative difference to fusionc-torch {error:.1e}  {'ok' if ok else 'FAILED'}")
    return status


def bench(device: str, rows: int, output: Path) -> None:
    from triton.testing import do_bench

    results = []
    for case, name, module, inputs in _cases(device, rows):
        for which in PASSES:
            try:
                ms = do_bench(lambda: _run(module, inputs, which), warmup=25, rep=200)
            except RuntimeError as exc:  # e.g. a peer without double backward
                print(f"  {case}/{name}/{which}: failed ({exc})")
                continue
            results.append({"case": case, "contender": name, "pass": which, "rows": rows, "ms": ms})
            print(f"  {case:<14}{name:<18}{which:<18}{ms:>10.3f} ms")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=1))
    print(f"wrote {output}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check the contenders agree; no timing")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "gpu.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.check:
        return check(device)
    if device != "cuda":
        print("benchmarks/gpu.py times GPU kernels and needs CUDA; on this machine run it with --check",
              file=sys.stderr)
        return 2
    bench(device, args.rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

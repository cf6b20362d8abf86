"""The mace_product case against mace-torch's SymmetricContraction, in the environment that has
mace-torch (it pins e3nn 0.4.4, so it cannot share the main suite's environment). fusionc's
module is imported from the mace-torch module (`fusionc.compat.mace`), so both compute the same
function with the same weights; the outputs are compared before anything is timed. Prints one
JSON object; `python -m benchmarks.run` starts this and merges it into its results.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .venv-mace/bin/python -m benchmarks.mace_peer [--quick]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6

import torch  # noqa: E402
from e3nn import o3  # noqa: E402
from mace.modules.symmetric_contraction import SymmetricContraction  # noqa: E402

from benchmarks.common import PASSES, peak_bytes, relative_error, run_pass, summary, time_alternating  # noqa: E402
from fusionc.compat.mace import from_symmetric_contraction  # noqa: E402

IRREPS_IN, IRREPS_OUT, CORRELATION, SPECIES, CHANNELS = "64x0e+64x1o+64x2e+64x3o", "64x0e+64x1o", 3, 10, 64


def build(dtype: torch.dtype, rows: int, irreps_in: str = IRREPS_IN, irreps_out: str = IRREPS_OUT):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # MACE builds its U matrices in the default dtype
    try:
        torch.manual_seed(0)
        sc = SymmetricContraction(o3.Irreps(irreps_in), o3.Irreps(irreps_out), CORRELATION, num_elements=SPECIES)
    finally:
        torch.set_default_dtype(saved)
    with torch.no_grad():
        for p in sc.parameters():
            p.normal_()
    fast = from_symmetric_contraction(sc)
    g = torch.Generator().manual_seed(1)
    channels = o3.Irreps(irreps_in)[0].mul
    x = torch.randn(rows, channels, o3.Irreps(irreps_in).dim // channels, generator=g, dtype=dtype)
    y = torch.nn.functional.one_hot(torch.randint(0, SPECIES, (rows,), generator=g), SPECIES).to(dtype)
    return sc, fast, [x, y]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, repeats = (32, 2) if args.quick else (args.rows, args.repeats)
    results, checks = [], []
    for dtype in (torch.float32, torch.float64):
        sc, fast, inputs = build(dtype, rows)
        contenders = {"mace-torch": sc, "fusionc": fast}
        for which in PASSES:
            outs = {name: run_pass(m, inputs, which) for name, m in contenders.items()}
            error = relative_error(outs["fusionc"], outs["mace-torch"])
            checks.append({"case": "mace_product", "dtype": str(dtype)[6:], "pass": which, "peer": "mace-torch",
                           "relative_error": error})
            times = time_alternating({name: (lambda m=m: run_pass(m, inputs, which)) for name, m in contenders.items()},
                                     repeats, warmup=1)
            for name, m in contenders.items():
                results.append({"case": "mace_product", "contender": name, "dtype": str(dtype)[6:], "pass": which,
                                "rows": rows, **summary(times[name]),
                                "peak_bytes": peak_bytes(lambda m=m: run_pass(m, inputs, which))})
    print(json.dumps({"results": results, "checks": checks}))


if __name__ == "__main__":
    main()

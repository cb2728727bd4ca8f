"""Cost of the exact Skellam sampler (mpc_agg.noise) against numpy's float Poisson sampler.

Run from the repository root::

    python -m benchmarks.noise --dim 1000000 --repeat 5 --json out.json

For per-client noise std 2^8, 2^12 and 2^16 (the ends and middle of the range a
noised round may use): the table's build time (first use in a process; later
rounds reuse it) and size, and the median seconds to draw ``dim`` Skellam values
(two Poisson draws each) with the exact sampler and with numpy's ``poisson`` on
the same AES-CTR generator, and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import check_repo, stats, write_json
from mpc_agg.dp import csprng
from mpc_agg.noise import PoissonTable, poisson_lambda, skellam


def run(dim: int, repeat: int) -> dict:  # type: ignore[type-arg]
    out = {}
    rng = csprng()
    for bits in (8, 12, 16):
        var = 4.0**bits
        lam = poisson_lambda(var)
        PoissonTable.build.cache_clear()
        t0 = time.perf_counter()
        table = PoissonTable.build(lam)
        build_s = time.perf_counter() - t0
        exact, old = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            skellam(var, dim, rng)
            exact.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rng.poisson(lam, dim).astype(np.int64) - rng.poisson(lam, dim).astype(np.int64)
            old.append(time.perf_counter() - t0)
        row = {"lambda": lam, "table_entries": int(table.cdf_hi.size),
               "table_bytes": int(table.cdf_hi.nbytes + table.cdf_rest.nbytes), "build_s": build_s,
               "exact_s": stats(exact), "numpy_s": stats(old),
               "ratio": stats(exact)["median"] / stats(old)["median"]}
        out[f"sigma_2^{bits}"] = row
        print(f"sigma 2^{bits:2d}: table {row['table_entries']:>9,} entries ({row['table_bytes'] / 2**20:5.1f} MiB), "
              f"built in {build_s:.2f} s; {dim:,} values: exact {row['exact_s']['median']:.3f} s, "
              f"numpy {row['numpy_s']['median']:.3f} s (x{row['ratio']:.1f})", flush=True)
    return {"dim": dim, "repeat": repeat, "results": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    check_repo("benchmarks.noise")
    res = run(args.dim, args.repeat)
    write_json(args.json, res)


if __name__ == "__main__":
    main()

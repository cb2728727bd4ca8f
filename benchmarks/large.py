"""The largest delta: one secure round with a d-parameter update (default 1e8) at k=3, n=4.

Run from the repository root (``benchmarks`` is never installed; see benchmarks/__init__.py)::

    python -m benchmarks.large --dim 100000000 --clients 4 --parties 3 --json bench-out/large.json

A real deployment (k party processes, CURVE ZeroMQ on 127.0.0.1) takes n
clients' float32 updates of d values, submitted one after another from this
process.  The leader receives each share in 8 MiB chunks, one upload at a
time, so its memory is the running sum (8·d bytes) plus a few chunks; a helper
holds its running sum and 32-byte seeds.  Client i's update is a cheap
deterministic pattern times (i+1), so the expected mean is exact; the revealed
average is checked against it within 2**-frac_bits.

Reported: each client's submit time and throughput (MB/s of share data), the
close time, each party's peak RSS (VmHWM) against the 8·d bytes of its sum, and
this harness's own peak RSS (client and coordinator side).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_client import SecureAggClient
from mpc_agg.fixedpoint import DEFAULT_FRAC_BITS
from parties.coordinator import Coordinator
from parties.launcher import LocalDeployment

from .common import NAME, check_repo, count, logs_on_failure, mib, party_rss, positive_int, write_json

__all__ = ["run_large", "main"]


def pattern(dim: int) -> npt.NDArray[np.float32]:
    """A small deterministic float32 pattern in [-0.05, 0.05)."""
    return ((np.arange(dim, dtype=np.int64) % 1000).astype(np.float32) - 500.0) * np.float32(1e-4)


def run_large(dim: int, clients: int, parties: int, workdir: Path, timeout_s: float) -> dict[str, Any]:
    base = pattern(dim)
    ld = LocalDeployment(workdir, parties=parties, clients=clients, min_clients=clients, dealer=False)
    submit_s: list[float] = []
    with logs_on_failure(ld.log_dir):
        with ld, Coordinator(ld.deployment) as coord:
            coord.open_round(1, shapes={NAME: (dim,)}, min_clients=clients, timeout_s=timeout_s)
            for i in range(clients):
                with SecureAggClient(ld.deployment, f"client-{i}", timeout_s=timeout_s) as c:
                    update = base * np.float32(i + 1)
                    t0 = time.perf_counter()
                    c.submit(1, {NAME: update})
                    submit_s.append(time.perf_counter() - t0)
                    del update
                print(f"  client {i}: submitted in {submit_s[-1]:.1f} s", flush=True)
            t0 = time.perf_counter()
            result = coord.close_round(1, timeout_s=timeout_s)
            close_s = time.perf_counter() - t0
            rss = party_rss(ld)
            average = result.average[NAME].numpy()
            del result
            expected_scale = (clients + 1) / 2.0  # mean of 1..n
            err = float(np.max(np.abs(average - base.astype(np.float64) * expected_scale)))
    tolerance = 2.0 ** -DEFAULT_FRAC_BITS
    share_mb = 8 * (dim + 1) / 1e6
    return {
        "ok": err <= tolerance,
        "max_abs_error": err,
        "tolerance": tolerance,
        "submit_s": submit_s,
        "submit_median_s": statistics.median(submit_s),
        "leader_share_mb_per_s": share_mb / statistics.median(submit_s),
        "close_s": close_s,
        "party_peak_rss_bytes": rss["peak"],
        "sum_bytes": 8 * (dim + 1),
        "harness_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params": {"dim": dim, "clients": clients, "parties": parties, "frac_bits": DEFAULT_FRAC_BITS,
                   "update_dtype": "float32"},
    }


def print_report(rep: dict[str, Any]) -> None:
    p = rep["params"]
    print(f"\nlargest delta: d={p['dim']:,}, n={p['clients']}, k={p['parties']}: "
          f"{'PASSED' if rep['ok'] else 'FAILED'} (max |error| {rep['max_abs_error']:.2e} <= {rep['tolerance']:.1e})")
    print(f"  submit per client: median {rep['submit_median_s']:.1f} s "
          f"({rep['leader_share_mb_per_s']:.0f} MB/s of leader share); close {rep['close_s']:.1f} s")
    print(f"  party peak RSS: {', '.join(mib(b) for b in rep['party_peak_rss_bytes'])} "
          f"(running sum alone: {mib(rep['sum_bytes'])}); harness {mib(rep['harness_peak_rss_bytes'])}")


def main(argv: list[str] | None = None) -> int:
    check_repo("benchmarks.large")
    p = argparse.ArgumentParser(prog="python -m benchmarks.large", description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=count, default=100_000_000)
    p.add_argument("--clients", type=positive_int, default=4)
    p.add_argument("--parties", type=int, choices=range(2, 11), default=3, metavar="K")
    p.add_argument("--timeout", type=float, default=1800.0, help="bound on every wait, in seconds")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-large-") as tmp:
        print(f"largest delta: d={args.dim:,}, {args.clients} clients, {args.parties} parties", flush=True)
        rep = run_large(args.dim, args.clients, args.parties, Path(tmp), args.timeout)
    print_report(rep)
    write_json(args.json, rep)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

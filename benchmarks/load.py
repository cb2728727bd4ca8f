"""Load test: one secure round with many clients submitting through a bounded pool, nothing lost.

Run from the repository root (``benchmarks`` is never installed; see :mod:`benchmarks.overhead`)::

    python -m benchmarks.load --clients 1000 --dim 10000 --parties 3 --workers 16 --json out.json

A real deployment is started (:class:`parties.launcher.LocalDeployment`: k party
processes, no dealer, CURVE ZeroMQ on 127.0.0.1) with a cohort floor of all n
clients.  One round is opened; then n clients submit from a pool of
``--workers`` threads, each client with its own :class:`SecureAggClient` (its
own ZeroMQ context and CURVE key, built from the already loaded deployment),
closed after its submit.  Client i's update is drawn from a generator seeded
with ``(seed, i)``, so the expected mean is known.  The round is then closed
and checked: every client id in the cohort exactly once, total weight and
report ids n, and the average within ``2**-frac_bits`` of the numpy mean
(each value is rounded to nearest, so the mean of n rounding errors is at most
half that).  Any exception in a worker is a failure; the run exits 1 on any
failure or loss.

Reported: submit wall time and throughput, each client's submit latency
(median, p95, max), close time, each party's peak RSS (VmHWM, Linux) and the
CPU seconds every process used from open to close.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
import psutil

from fl_client import SecureAggClient
from mpc_agg.config import Deployment
from mpc_agg.errors import MpcAggError
from parties.coordinator import Coordinator, RoundResult
from parties.launcher import LocalDeployment

from .common import (NAME, check_repo, cpu_delta, cpu_seconds, logs_on_failure, mib, party_count, party_rss,
                     positive_int, positive_seconds, print_log_tails, proc_status_bytes, write_json)

__all__ = ["ClientFn", "client_update", "main", "one_client", "run_load"]

ROUND = 1


def client_update(index: int, dim: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """Client ``index``'s update: small normal values from a generator seeded with ``(seed, index)``."""
    return np.random.default_rng([seed, index]).normal(0.0, 0.01, size=dim)


ClientFn = Callable[[Deployment, str, npt.NDArray[np.float64], float], tuple[float, float]]
"""What one client does in the load test: ``(deployment, client id, update, timeout_s)`` →
(submit seconds, session seconds); :func:`one_client` by default, a test may pass a faulty one."""


def one_client(dep: Deployment, client_id: str, update: npt.NDArray[np.float64],
               timeout_s: float) -> tuple[float, float]:
    """Connect, submit, close: (submit seconds, seconds from connect to closed)."""
    t0 = time.perf_counter()
    with SecureAggClient(dep, client_id, timeout_s=timeout_s) as client:
        t1 = time.perf_counter()
        client.submit(ROUND, {NAME: update})
        t2 = time.perf_counter()
    return t2 - t1, time.perf_counter() - t0


def _latency(xs: Sequence[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"median": statistics.median(xs), "p95": float(np.percentile(xs, 95)), "max": max(xs), "min": min(xs),
            "mean": statistics.fmean(xs)}


def _submit_all(dep: Deployment, ids: Sequence[str], dim: int, seed: int, workers: int, timeout_s: float,
                client: ClientFn) -> tuple[float, list[float], list[float], list[dict[str, str]]]:
    """Every client's ``client`` call through ``workers`` threads: (wall s, submit s, session s, failures)."""
    submit_s: list[float] = []
    session_s: list[float] = []
    failures: list[dict[str, str]] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load-client") as pool:
        futures: dict[Future[tuple[float, float]], str] = {
            pool.submit(lambda i=i, cid=cid: client(dep, cid, client_update(i, dim, seed), timeout_s)): cid
            for i, cid in enumerate(ids)}
        _, pending = wait(futures, timeout=timeout_s)
        for f in pending:
            f.cancel()
    # leaving the pool waits for running clients: each is bounded by its own timeout_s
    wall = time.perf_counter() - t0
    for f, cid in futures.items():
        if f.cancelled() or f in pending:
            failures.append({"client": cid, "error": f"not finished within {timeout_s:.0f} s"})
        elif (exc := f.exception()) is not None:
            failures.append({"client": cid, "error": f"{type(exc).__name__}: {exc}"})
        else:
            s, t = f.result()
            submit_s.append(s)
            session_s.append(t)
    return wall, submit_s, session_s, failures


def _check(result: RoundResult | None, ids: Sequence[str], expected: npt.NDArray[np.float64],
           tolerance: float) -> dict[str, Any]:
    """Lost, duplicated and unknown clients, weight, report ids and average error of the closed round."""
    if result is None:
        return {"accepted": 0, "lost": list(ids), "duplicates": [], "unexpected": [], "total_weight": None,
                "report_ids": 0, "max_abs_error": None, "average_ok": False}
    counts = Counter(result.clients)
    err = float(np.max(np.abs(result.average[NAME].numpy() - expected)))
    return {
        "accepted": len(result.clients),
        "lost": sorted(set(ids) - set(counts)),
        "duplicates": sorted(c for c, k in counts.items() if k > 1),
        "unexpected": sorted(set(counts) - set(ids)),
        "total_weight": result.total_weight,
        "report_ids": len(set(result.report_ids)),
        "max_abs_error": err,
        "average_ok": err <= tolerance,
    }


def _run_round(ld: LocalDeployment, dim: int, seed: int, workers: int, timeout_s: float, client: ClientFn,
               t_start: float) -> tuple[dict[str, Any], RoundResult | None]:
    """Start the deployment, open the round, run every client, close the round: (figures, the result or
    None if the close failed).  The figures' ``frac_bits`` is the round's."""
    dep = ld.deployment
    clients = len(dep.clients)
    with logs_on_failure(ld.log_dir), ld, Coordinator(dep) as coord:
        coord.status(timeout_s=timeout_s)  # every party serving
        setup_s = time.perf_counter() - t_start
        procs = {name: psutil.Process(p.pid) for name, p in ld.procs.items()}
        cpu0 = cpu_seconds(procs)
        t0 = time.perf_counter()
        spec = coord.open_round(ROUND, shapes={NAME: (dim,)}, min_clients=clients, timeout_s=timeout_s)
        open_s = time.perf_counter() - t0
        print(f"  {len(dep.parties)} parties up in {setup_s:.1f} s; round open; {clients} clients submitting "
              f"through {workers} threads", flush=True)
        ids = [c.id for c in dep.clients]
        wall, submit_s, session_s, failures = _submit_all(dep, ids, dim, seed, workers, timeout_s, client)
        t1 = time.perf_counter()
        result: RoundResult | None = None
        close_error = None
        try:
            result = coord.close_round(ROUND, timeout_s=timeout_s)
        except MpcAggError as exc:
            close_error = f"{type(exc).__name__}: {exc}"
        t2 = time.perf_counter()
        figures = {"failures": failures, "close_error": close_error, "setup_s": setup_s, "open_s": open_s,
                   "submit_wall_s": wall, "throughput_per_s": clients / wall,
                   "submit_latency_s": _latency(submit_s), "client_session_s": _latency(session_s),
                   "close_s": t2 - t1, "round_s": t2 - t0, "cpu_s": cpu_delta(cpu0, cpu_seconds(procs)),
                   "frac_bits": spec.frac_bits}
        rss = party_rss(ld)
    return {**figures, "party_peak_rss_bytes": rss["peak"], "party_current_rss_bytes": rss["current"]}, result


def run_load(clients: int, dim: int, parties: int, workers: int, workdir: Path | None,
             timeout_s: float, *, seed: int = 0, client: ClientFn = one_client) -> dict[str, Any]:
    """Run the load test in ``workdir`` (a temporary directory if None); returns the JSON report.

    ``client`` is what each client does (:func:`one_client`: connect, submit, close)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="mpc-agg-load-") as tmp:
            return run_load(clients, dim, parties, workers, Path(tmp), timeout_s, seed=seed, client=client)
    t_start = time.perf_counter()
    expected = np.zeros(dim)
    for i in range(clients):
        expected += client_update(i, dim, seed)
    expected /= clients
    ld = LocalDeployment(workdir, parties=parties, clients=clients, min_clients=clients, dealer=False)
    ids = [c.id for c in ld.deployment.clients]
    figures, result = _run_round(ld, dim, seed, workers, timeout_s, client, t_start)
    frac_bits = figures.pop("frac_bits")
    tolerance = 2.0 ** -frac_bits
    check = _check(result, ids, expected, tolerance)
    ok = (not figures["failures"] and figures["close_error"] is None and not check["lost"]
          and not check["duplicates"] and not check["unexpected"] and check["accepted"] == clients
          and check["report_ids"] == clients and check["total_weight"] is not None
          and abs(check["total_weight"] - clients) <= 1e-6 and check["average_ok"])
    if not ok:
        print_log_tails(ld.log_dir)
    return {
        "ok": ok,
        **check,
        **figures,
        "tolerance": tolerance,
        "total_s": time.perf_counter() - t_start,
        "harness_peak_rss_bytes": proc_status_bytes(os.getpid(), "VmHWM"),
        "params": {"clients": clients, "dim": dim, "parties": parties, "workers": workers, "timeout_s": timeout_s,
                   "frac_bits": frac_bits, "seed": seed, "dealer": False},
    }


def print_report(rep: dict[str, Any]) -> None:
    p = rep["params"]
    print(f"\nmpc-agg load: n={p['clients']:,} clients, d={p['dim']:,}, k={p['parties']} parties, "
          f"{p['workers']} worker threads, loopback CURVE ZeroMQ, one SecureAggClient per client")
    print(f"  {'accepted / lost / failures':34s}{rep['accepted']:,} / {len(rep['lost']):,} / {len(rep['failures']):,}")
    print(f"  {'total weight, report ids':34s}{rep['total_weight']}, {rep['report_ids']:,}")
    if rep["max_abs_error"] is not None:
        print(f"  {'max |average - numpy mean|':34s}{rep['max_abs_error']:.2e} (tolerance {rep['tolerance']:.1e})")
    print(f"  {'setup: keygen + parties up (s)':34s}{rep['setup_s']:.2f}")
    print(f"  {'open_round (s)':34s}{rep['open_s']:.3f}")
    print(f"  {'submit, all clients (s)':34s}{rep['submit_wall_s']:.2f}  ({rep['throughput_per_s']:.1f} reports/s)")
    print(f"  {'close_round (s)':34s}{rep['close_s']:.3f}")
    print(f"  {'round: open to close (s)':34s}{rep['round_s']:.2f}")
    print(f"  {'total, with setup and stop (s)':34s}{rep['total_s']:.2f}")
    print(f"  {'per client (s)':34s}{'median':>9s}{'p95':>9s}{'max':>9s}")
    for label, key in (("  submit", "submit_latency_s"), ("  connect + submit + close", "client_session_s")):
        if (lat := rep[key]) is not None:
            print(f"  {label:34s}" + "".join(f"{lat[k]:9.3f}" for k in ("median", "p95", "max")))
    peaks = ", ".join(f"party {i}{' (leader)' if i == 0 else ''} {mib(b)}"
                      for i, b in enumerate(rep["party_peak_rss_bytes"]))
    print(f"  party peak RSS: {peaks}; harness (clients + coordinator) {mib(rep['harness_peak_rss_bytes'])}")
    print("  CPU s, open to close: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["cpu_s"].items()))
    for f in rep["failures"][:10]:
        print(f"  FAILED {f['client']}: {f['error']}")
    if len(rep["failures"]) > 10:
        print(f"  ... and {len(rep['failures']) - 10} more failures")
    if rep["close_error"]:
        print(f"  close_round FAILED: {rep['close_error']}")
    for key in ("lost", "duplicates", "unexpected"):
        if rep[key]:
            print(f"  {key}: {len(rep[key])} ({', '.join(rep[key][:10])}{', ...' if len(rep[key]) > 10 else ''})")
    print(f"check: {'PASSED' if rep['ok'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=positive_int, default=1000)
    p.add_argument("--dim", type=positive_int, default=10_000, help="values per update")
    p.add_argument("--parties", type=party_count, default=3)
    p.add_argument("--workers", type=positive_int, default=16, help="client threads submitting at once")
    p.add_argument("--timeout", type=positive_seconds, default=600.0,
                   help="bound on every wait (parties up, all submits, close), in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="deployment directory (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    check_repo("benchmarks.load")
    rep = run_load(args.clients, args.dim, args.parties, args.workers, args.workdir, args.timeout, seed=args.seed)
    print_report(rep)
    write_json(args.json, rep)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

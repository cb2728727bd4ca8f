"""Cost of verified clipping: secure rounds with and without the parties' MPC norm check.

Run from the repository root::

    python -m benchmarks.normcheck --clients 10 --dim 1000000 --parties 3 --repeat 3 --json out.json

One deployment (k party processes + the dealer, CURVE ZeroMQ on loopback); the
rounds alternate unverified / verified (``verify_norm=True``, clip norm 1, all
clients honest), clients submit concurrently from n threads.  Reported: median
round seconds of each kind, their ratio, the parties' own close time, and the
bytes the parties sent each other during close (each party's own figures,
``RoundResult.party_stats``, summed over parties; dealer traffic is not included).
Also the CPU seconds each round costs (parties, dealer, and this process's clients
and coordinator; Linux /proc), which a shared machine's load does not inflate as
much as wall time, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.overhead import run_concurrently, check_repo, stats
from fl_client import SecureAggClient
from parties import Coordinator
from parties.launcher import LocalDeployment


def _party_close(stats: tuple[dict[str, Any], ...], parties: int) -> tuple[int, float]:
    """(peer bytes summed over parties, slowest party's close seconds) from ``RoundResult.party_stats``."""
    if len(stats) != parties or any("close_s" not in s or "peer_bytes" not in s for s in stats):
        raise SystemExit(f"the parties did not report their close figures: {stats}")
    return sum(int(s["peer_bytes"]) for s in stats), max(float(s["close_s"]) for s in stats)


def _cpu_s(ld: LocalDeployment) -> float:
    """CPU seconds used so far by the deployment's processes and this one (nan where /proc is missing)."""
    total = time.process_time()
    for proc in ld.procs.values():
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def run(clients: int, dim: int, parties: int, repeat: int, timeout_s: float) -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(clients, dim))
    updates /= np.linalg.norm(updates, axis=1, keepdims=True) * 1.25  # norm 0.8 < clip 1
    out: dict[str, list[float]] = {"plain": [], "verified": [], "plain_close": [], "verified_close": [],
                                   "plain_bytes": [], "verified_bytes": [],
                                   "plain_cpu": [], "verified_cpu": []}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="mpc-agg-normcheck-") as tmp, \
            LocalDeployment(tmp, parties=parties, clients=clients, min_clients=min(3, clients),
                            allow_verify_norm=True) as ld, \
            Coordinator.from_config(ld.config) as coord, ThreadPoolExecutor(clients) as pool:
        # the parties (allow_verify_norm) and the clients (min_colluders=2) consent to verified rounds
        cls = [SecureAggClient.from_config(ld.config, f"client-{i}", timeout_s=timeout_s, min_colluders=2)
               for i in range(clients)]
        try:
            rid = 0
            for rep in range(repeat + 1):  # the first pair is a warm-up
                for kind in ("plain", "verified"):
                    rid += 1
                    t0, cpu0 = time.perf_counter(), _cpu_s(ld)
                    coord.open_round(rid, shapes={"w": (dim,)}, min_clients=min(3, clients), clip_norm=1.0,
                                     verify_norm=kind == "verified", timeout_s=timeout_s)
                    run_concurrently(pool, [lambda c=c, u=u: c.submit(rid, {"w": u}) for c, u in zip(cls, updates)],
                                      timeout_s)
                    res = coord.close_round(rid, timeout_s=timeout_s)
                    took, cpu = time.perf_counter() - t0, _cpu_s(ld) - cpu0
                    if res.rejected or len(res.clients) != clients:
                        raise SystemExit(f"honest clients were rejected: {res.rejected}")
                    peer_bytes, close_s = _party_close(res.party_stats, parties)
                    if rep:
                        out[kind].append(took)
                        out[f"{kind}_close"].append(close_s)
                        out[f"{kind}_bytes"].append(peer_bytes)
                        out[f"{kind}_cpu"].append(cpu)
                    print(f"  {'warm-up' if not rep else f'repeat {rep}'}: {kind:8s} round {took:.3f} s, "
                          f"parties' close {close_s:.3f} s, CPU {cpu:.2f} s, peer bytes {peer_bytes:,}", flush=True)
        finally:
            for c in cls:
                c.close()
    load.append(os.getloadavg()[0])
    ratio = [v / p for v, p in zip(out["verified"], out["plain"])]
    return {"unverified_round_s": statistics.median(out["plain"]),
            "verified_round_s": statistics.median(out["verified"]), "ratio": statistics.median(ratio),
            "ratio_stats": stats(ratio), "unverified_close_s": statistics.median(out["plain_close"]),
            "verified_close_s": statistics.median(out["verified_close"]),
            "unverified_peer_bytes": statistics.median(out["plain_bytes"]),
            "verified_peer_bytes": statistics.median(out["verified_bytes"]),
            "unverified_cpu_s": statistics.median(out["plain_cpu"]),
            "verified_cpu_s": statistics.median(out["verified_cpu"]), "load_average": load,
            "params": {"clients": clients, "dim": dim, "parties": parties, "repeat": repeat}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.normcheck", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    check_repo("benchmarks.normcheck")
    rep = run(args.clients, args.dim, args.parties, args.repeat, args.timeout)
    print(f"verified clipping: n={args.clients}, d={args.dim:,}, k={args.parties}, {args.repeat} repeats (medians)")
    print(f"  unverified secure round {rep['unverified_round_s']:.3f} s, verified {rep['verified_round_s']:.3f} s, "
          f"ratio {rep['ratio']:.2f} (min {rep['ratio_stats']['min']:.2f}, max {rep['ratio_stats']['max']:.2f})")
    print(f"  parties' close: unverified {rep['unverified_close_s']:.3f} s, verified {rep['verified_close_s']:.3f} s")
    print(f"  bytes between parties during close: unverified {rep['unverified_peer_bytes']:,.0f}, "
          f"verified {rep['verified_peer_bytes']:,.0f}")
    print(f"  CPU per round (all processes): unverified {rep['unverified_cpu_s']:.2f} s, "
          f"verified {rep['verified_cpu_s']:.2f} s; load average {rep['load_average'][0]:.2f} before, "
          f"{rep['load_average'][1]:.2f} after")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

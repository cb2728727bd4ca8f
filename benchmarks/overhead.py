"""Overhead of secure aggregation against plaintext FedAvg, over the same transport on one machine.

Run from the repository root (``benchmarks`` is never installed; CrypTen
installs another top-level ``benchmarks`` package, so this module checks its
own location first)::

    python -m benchmarks.overhead --clients 10 --dim 1000000 --parties 3 --repeat 5 --json out.json

In one run and one process tree (:func:`benchmarks.rounds.run_main`):

* a real deployment is started (k party processes and a dealer, CURVE ZeroMQ
  on 127.0.0.1), and beside it :mod:`benchmarks.plain_server`, one more
  process bound under party 0's key pair on a fresh loopback port;
* one warm-up round of each kind runs untimed, then ``--repeat`` secure rounds
  alternate with plaintext rounds, n clients submitting concurrently from n
  threads; both averages are checked against the numpy mean;
* client encode+share (encoded into one int64 buffer, the leader's share
  computed in place, as ``SecureAggClient.submit`` does) is timed alone,
  single-threaded, before any process is started;
* each party's peak RSS (VmHWM of /proc/PID/status, so Linux only) is read
  after the rounds; then for each ``--rss-clients`` value n a fresh deployment
  runs one secure round with n concurrent clients and its party peak RSS is read.

Both kinds get the same float32 updates.  Plaintext clients upload them as
float32 (4·d bytes, weight in the metadata) and the server averages in float32,
as Flower's and PyTorch's FedAvg do.  Upload bytes are the message bytes (16-byte header, JSON
metadata, payloads) client-0 handed to its sockets in one secure round
(``SecureAggClient.bytes_sent``: its GET_SPEC to each party, the seeds, the
leader's REPORT_BEGIN and chunks); they exclude ZMTP framing and CURVE boxes
(about 40 bytes per frame) and TCP/IP headers.  Stage times are what can be
seen from outside the parties: open, uploads (all clients), one client's
submit, close; the parties' own close time (the slowest party) and the bytes
they sent each other come from ``RoundResult.party_stats``; the CPU seconds
(user + system, via psutil) each process used per round: on a small machine,
CPU is what the processes compete for.  "Client send" is one submit minus
encode+share timed alone, so it also holds the slowdown of encode+share when n
client threads and the parties share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from mpc_agg.fixedpoint import encode
from mpc_agg.sharing import ShareContext, leader_share, new_seeds
from mpc_agg.wire import MsgType, encode_message

# check_repo, run_concurrently and stats stay importable from here (benchmarks/normcheck.py uses them)
from .common import check_repo, mib, party_count, positive_int, positive_seconds, run_concurrently, stats, write_json
from .plain_server import DTYPE
from .rounds import BOUNDS_FRAC_BITS, MainRun, make_updates, run_main, run_rss

__all__ = ["main", "run", "measure_client_shard", "plaintext_upload_bytes", "print_report", "check_repo",
           "run_concurrently", "stats"]

SHARD_SAMPLES = 5
RID_HEX = "0" * 16  # a request id as Requester.send makes it: 8 random bytes in hex


def measure_client_shard(x: npt.NDArray[Any], parties: int, frac_bits: int) -> list[float]:
    """Seconds of encode + share of ``x`` (weight 1) over SHARD_SAMPLES runs, as ``SecureAggClient.submit``
    does it: to float64, encode into one int64 buffer, then the leader's share in place."""
    times: list[float] = []
    for _ in range(SHARD_SAMPLES):
        t0 = time.perf_counter()
        ring = np.empty(x.size + 1, dtype=np.int64)
        encode(x.astype(np.float64, copy=False), frac_bits, out=ring[:-1])
        encode([1.0], frac_bits, out=ring[-1:])
        leader_share(ring, new_seeds(parties), ShareContext(1, "client-0", os.urandom(16)), out=ring)
        times.append(time.perf_counter() - t0)
    return times


def plaintext_upload_bytes(round_id: int, update: npt.NDArray[Any]) -> int:
    """Bytes of the one message a plaintext client sends per round (its update as DTYPE)."""
    meta = {"round": round_id, "client": "client-0", "weight": 1.0, "rid": RID_HEX}
    payload = np.ascontiguousarray(update, dtype=DTYPE)
    return sum(memoryview(f).nbytes for f in encode_message(MsgType.REPORT, meta, [payload.data]))


# --- the report ------------------------------------------------------------------------------

def _party_close(measured: MainRun) -> tuple[list[float], list[int]]:
    """Per secure round: the slowest party's own close seconds and the bytes all parties sent each other
    (rounds where a party's SUM_SHARE reply carried no figures are left out)."""
    seconds, peer_bytes = [], []
    for ps in measured.party_stats:
        if ps and all("close_s" in s and "peer_bytes" in s for s in ps):
            seconds.append(max(float(s["close_s"]) for s in ps))
            peer_bytes.append(sum(int(s["peer_bytes"]) for s in ps))
    return seconds, peer_bytes


def _samples(measured: MainRun, shard_s: list[float]) -> dict[str, list[float]]:
    """Every measured value, by name (the report's medians are taken over these)."""
    secure, plaintext = measured.secure, measured.plaintext
    shard_med = statistics.median(shard_s)
    sec_total = [t.total_s for t in secure]
    pl_total = [t.total_s for t in plaintext]
    sec_submit = [s for t in secure for s in t.submit_s]
    party_close_s, peer_bytes = _party_close(measured)
    return {
        "secure_round_s": sec_total,
        "plaintext_round_s": pl_total,
        "ratio": [s / p for s, p in zip(sec_total, pl_total)],
        "client_shard_ms": [1e3 * s for s in shard_s],
        "secure_open_s": [t.open_s for t in secure],
        "secure_uploads_s": [t.uploads_s for t in secure],
        "secure_client_submit_s": sec_submit,
        "secure_client_send_s": [s - shard_med for s in sec_submit],
        "secure_close_s": [t.close_s for t in secure],
        "secure_close_party_agreement_s": party_close_s,
        "secure_close_peer_bytes": [float(b) for b in peer_bytes],
        "plaintext_open_s": [t.open_s for t in plaintext],
        "plaintext_uploads_s": [t.uploads_s for t in plaintext],
        "plaintext_client_submit_s": [s for t in plaintext for s in t.submit_s],
        "plaintext_close_s": [t.close_s for t in plaintext],
    }


def _stages(s: dict[str, list[float]], measured: MainRun) -> dict[str, dict[str, Any]]:
    """Median of each stage, and of each process's CPU seconds, by kind of round."""
    def med(key: str) -> float | None:
        return statistics.median(s[key]) if s[key] else None

    cpu = {kind: {name: statistics.median([d[name] for d in deltas]) for name in deltas[0]}
           for kind, deltas in measured.cpu.items()}
    shard = statistics.median(s["client_shard_ms"]) / 1e3
    return {
        "secure": {"open_s": med("secure_open_s"), "uploads_s": med("secure_uploads_s"),
                   "client_submit_s": med("secure_client_submit_s"), "client_encode_share_s": shard,
                   "client_send_s": med("secure_client_send_s"), "close_s": med("secure_close_s"),
                   "close_party_agreement_s": med("secure_close_party_agreement_s"),
                   "close_peer_bytes": med("secure_close_peer_bytes"), "cpu_s": cpu["secure"]},
        "plaintext": {"open_s": med("plaintext_open_s"), "uploads_s": med("plaintext_uploads_s"),
                      "client_submit_s": med("plaintext_client_submit_s"), "close_s": med("plaintext_close_s"),
                      "cpu_s": cpu["plaintext"]},
    }


def run(clients: int, dim: int, parties: int, repeat: int, rss_clients: Sequence[int],
        timeout_s: float, ring_bits: int | None = None) -> dict[str, Any]:
    """The whole benchmark; returns the JSON report."""
    updates = make_updates(clients, dim, seed=0)
    shard_s = measure_client_shard(updates[0], parties, BOUNDS_FRAC_BITS)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-bench-") as tmp:
        print(f"main run: {clients} clients, {parties} parties, d={dim:,}, {repeat} repeats", flush=True)
        measured = run_main(Path(tmp) / "main", updates, parties, repeat, timeout_s, ring_bits=ring_bits)
        rss_runs = {}
        for n in rss_clients:
            print(f"RSS run: {n} clients", flush=True)
            rss_runs[n] = run_rss(Path(tmp) / f"rss-{n}", n, dim, parties, timeout_s)
    samples = _samples(measured, shard_s)
    sec, pl = statistics.median(samples["secure_round_s"]), statistics.median(samples["plaintext_round_s"])
    return {
        "secure_round_s": sec,
        "plaintext_round_s": pl,
        "ratio": sec / pl,
        "client_shard_ms": statistics.median(samples["client_shard_ms"]),
        "upload_bytes_per_client": measured.secure_upload_bytes,
        "plaintext_upload_bytes_per_client": plaintext_upload_bytes(1, updates[0]),
        "party_peak_rss_bytes": max(measured.rss["peak"]),
        "party_peak_rss_by_party": measured.rss["peak"],
        "rss_by_clients": {str(n): max(r["peak"]) for n, r in rss_runs.items()},
        "rss_detail_by_clients": {str(n): r for n, r in rss_runs.items()},
        "stages": _stages(samples, measured),
        "max_abs_error": measured.max_abs_error,
        "samples": samples,
        "params": {"clients": clients, "dim": dim, "parties": parties, "repeat": repeat,
                   "rss_clients": list(rss_clients), "frac_bits": measured.frac_bits,
                   "ring_bits": measured.ring_bits,
                   "client_threads": clients, "shard_samples": SHARD_SAMPLES, "update_dtype": "float32",
                   "plaintext_dtype": DTYPE.name},
    }


def _row(label: str, xs: Sequence[float], fmt: str = "{:10.3f}") -> None:
    if xs:
        st = stats(xs)
        print(f"{label:44s}" + "".join(fmt.format(st[k]) for k in ("median", "min", "max")))


def _print_times(s: dict[str, list[float]]) -> None:
    _row("secure round (s)", s["secure_round_s"])
    _row(f"plaintext FedAvg round, {DTYPE.name} (s)", s["plaintext_round_s"])
    _row("ratio secure / plaintext (per repeat)", s["ratio"], "{:10.2f}")
    print("secure stages")
    _row("  open_round (s)", s["secure_open_s"])
    _row("  uploads, all clients concurrently (s)", s["secure_uploads_s"])
    _row("  one client's submit (s)", s["secure_client_submit_s"])
    _row("  client encode+share, alone (ms)", s["client_shard_ms"], "{:10.1f}")
    _row("  client send = submit - encode+share (s)", s["secure_client_send_s"])
    _row("  close_round: agreement + reveal (s)", s["secure_close_s"])
    _row("    of which parties' own close (s)", s["secure_close_party_agreement_s"])
    _row("    bytes between parties in close (MB)", [b / 1e6 for b in s["secure_close_peer_bytes"]])
    print(f"plaintext stages ({DTYPE.name} upload and sum)")
    _row("  open (s)", s["plaintext_open_s"])
    _row("  uploads, all clients concurrently (s)", s["plaintext_uploads_s"])
    _row("  one client's submit (s)", s["plaintext_client_submit_s"])
    _row("  close: average back (s)", s["plaintext_close_s"])


def print_report(rep: dict[str, Any]) -> None:
    p = rep["params"]
    print(f"\nmpc-agg overhead: n={p['clients']} clients, d={p['dim']:,}, k={p['parties']} parties, "
          f"{p['repeat']} repeats, loopback CURVE ZeroMQ, {p['clients']} client threads")
    print(f"plaintext baseline: clients upload {DTYPE.name}, the server sums in {DTYPE.name} "
          "(as Flower's and PyTorch's FedAvg do in float32), same transport")
    print(f"{'':44s}{'median':>10s}{'min':>10s}{'max':>10s}")
    _print_times(rep["samples"])
    cpu = {kind: rep["stages"][kind]["cpu_s"] for kind in ("secure", "plaintext")}
    print(f"{'CPU seconds per round, median':44s}{'secure':>10s}{'plaintext':>10s}")
    for name in cpu["secure"]:
        print(f"  {name:42s}{cpu['secure'][name]:10.3f}{cpu['plaintext'][name]:10.3f}")
    up, d = rep["upload_bytes_per_client"], p["dim"]
    plain_up = rep["plaintext_upload_bytes_per_client"]
    width = p.get("ring_bits", 64) // 8
    print(f"upload per client: secure ({p.get('ring_bits', 64)}-bit ring) {up:,} B = {width}·d + {up - width * d:,} B "
          "(every message to every party); "
          f"plaintext ({DTYPE.name}) {plain_up:,} B = {DTYPE.itemsize}·d + {plain_up - DTYPE.itemsize * d:,} B")
    by_party = ", ".join(mib(b) for b in rep["party_peak_rss_by_party"])
    print(f"party peak RSS after warm-up + {p['repeat']} rounds (n={p['clients']}): "
          f"max {mib(rep['party_peak_rss_bytes'])} (by party: {by_party})")
    for n, r in rep["rss_detail_by_clients"].items():
        print(f"party peak RSS, fresh deployment, 1 round, n={n}: max {mib(max(r['peak']))} "
              f"(by party: {', '.join(mib(b) for b in r['peak'])}; idle before: "
              f"{', '.join(mib(b) for b in r['idle'])})")
    err = rep["max_abs_error"]
    print(f"max |average - numpy mean|: secure {err['secure']:.2e} (<= 2^-{p['frac_bits']}), "
          f"plaintext {err['plaintext']:.2e} ({DTYPE.name} sums)")


def _client_counts(text: str) -> list[int]:
    return [positive_int(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=positive_int, default=10)
    p.add_argument("--dim", type=positive_int, default=1_000_000, help="values per update")
    p.add_argument("--parties", type=party_count, default=3)
    p.add_argument("--repeat", type=positive_int, default=5, help="timed rounds of each kind")
    p.add_argument("--rss-clients", type=_client_counts, default=[10, 50],
                   help="comma-separated client counts, each measured on a fresh deployment (default 10,50)")
    p.add_argument("--timeout", type=positive_seconds, default=300.0, help="bound on every wait, in seconds")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: --clients 3 --dim 1000 --parties 2 --repeat 1 --rss-clients 3")
    p.add_argument("--ring-bits", type=int, choices=(32, 64), default=None,
                   help="the secure rounds' ring (default: 32 where the stated bounds fit, as a deployment picks)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.dim, args.parties, args.repeat, args.rss_clients = 3, 1000, 2, 1, [3]
    check_repo("benchmarks.overhead")
    rep = run(args.clients, args.dim, args.parties, args.repeat, args.rss_clients, args.timeout, args.ring_bits)
    print_report(rep)
    write_json(args.json, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

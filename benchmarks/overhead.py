"""Overhead of secure aggregation against plaintext FedAvg, over the same transport on one machine.

Run from the repository root (``benchmarks`` is never installed; CrypTen
installs another top-level ``benchmarks`` package, so this module checks its
own ``__file__`` first)::

    python -m benchmarks.overhead --clients 10 --dim 1000000 --parties 3 --repeat 5 --json out.json

In one run and one process tree:

* a real deployment is started (:class:`parties.launcher.LocalDeployment`: k
  party processes and a dealer, CURVE ZeroMQ on 127.0.0.1), and beside it
  :mod:`benchmarks.plain_server`, one more process bound under party 0's key
  pair on a fresh loopback port;
* one warm-up round of each kind runs untimed, then ``--repeat`` secure rounds
  alternate with plaintext rounds.  A round is timed from the start of its
  open to the return of its close; its n clients (created once, reused)
  submit concurrently from a pool of n threads of this process.  The secure
  and plaintext averages must both match the numpy mean of the updates
  (secure: within 2**-frac_bits, the fixed-point resolution);
* client encode+share (encoded into one int64 buffer, the leader's share
  computed in place, as ``SecureAggClient.submit`` does) is timed alone,
  single-threaded, before any process is started;
* each party's peak RSS (VmHWM of /proc/PID/status, so Linux only) is read
  after the rounds; then for each ``--rss-clients`` value n a fresh deployment
  runs one secure round with n concurrent clients and its party peak RSS is read.

Plaintext clients upload float64 (8·d bytes, weight in the metadata).  Upload
bytes are the message bytes (16-byte header, JSON metadata, payloads) client-0
handed to its sockets in one secure round (``SecureAggClient.bytes_sent``: its
GET_SPEC to each party, the seeds, the leader's REPORT_BEGIN and chunks); they
exclude ZMTP framing and CURVE boxes (about 40 bytes per frame) and TCP/IP
headers.  Stage times are what can be seen from outside the parties: open,
uploads (all clients), one client's submit, close, and the parties' own
agreement time within close, read from their ``event=reveal`` logs,
and the CPU seconds (user + system, via psutil) each process used per round:
on a small machine, CPU is what the processes compete for.  "Client send" is
one submit minus encode+share timed alone, so it also holds the slowdown of
encode+share when n client threads and the parties share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import psutil

import mpc_agg
from fl_client import SecureAggClient
from mpc_agg.config import Deployment, free_ports
from mpc_agg.fixedpoint import DEFAULT_FRAC_BITS, encode
from mpc_agg.sharing import ShareContext, leader_share, new_seeds
from mpc_agg.wire import MsgType, encode_message
from parties.coordinator import Coordinator, RoundResult
from parties.launcher import LocalDeployment

from .plain_server import PlainClient, PlainCoordinator

__all__ = ["main", "run", "run_main", "run_rss", "make_updates", "secure_round", "plain_round", "check_repo",
           "party_rss", "cpu_seconds", "cpu_delta", "proc_status_bytes", "run_concurrently", "stats", "mib",
           "positive_int", "print_log_tails"]

NAME = "w"
"""The one tensor of every benchmark round, of shape (dim,)."""

REPO = Path(__file__).resolve().parent.parent
SHARD_SAMPLES = 5
RID_HEX = "0" * 16  # a request id as Requester.send makes it: 8 random bytes in hex
REVEAL_LOG = re.compile(r"event=reveal party=(\d+) round=(\d+) .*close_s=([0-9.]+)")


def check_repo(module: str = "benchmarks.overhead") -> None:
    """Refuse to run unless this file and mpc_agg are the checkout in the current directory."""
    cwd = Path.cwd().resolve()
    pkg = Path(mpc_agg.__file__).resolve().parent.parent
    if cwd != REPO or pkg != REPO:
        raise SystemExit(
            f"{module}: run `python -m {module}` from the mpc-agg repository root.\n"
            f"  this module:  {Path(__file__).resolve()}\n  mpc_agg from: {pkg}\n  cwd:          {cwd}")
    print(f"{module}: {Path(__file__).resolve().parent / (module.split('.')[-1] + '.py')} (repository {REPO})",
          flush=True)


RSS_CLIENT_THREADS = 16

# --- measurement helpers ---------------------------------------------------------------

@dataclass(frozen=True)
class RoundTiming:
    """One round's wall times in seconds; ``submit_s`` has one entry per client."""

    total_s: float
    open_s: float
    uploads_s: float
    close_s: float
    submit_s: tuple[float, ...]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_concurrently(pool: ThreadPoolExecutor, calls: Sequence[Callable[[], object]],
                      timeout_s: float) -> tuple[float, tuple[float, ...]]:
    """Run ``calls`` on ``pool`` at once: (wall seconds, each call's seconds); errors re-raised."""
    t0 = time.perf_counter()
    futures = [pool.submit(_timed, c) for c in calls]
    _, pending = wait(futures, timeout=timeout_s)
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(futures)} client uploads did not finish in {timeout_s:.0f} s")
    durations = tuple(f.result() for f in futures)
    return time.perf_counter() - t0, durations


def secure_round(coord: Coordinator, clients: Sequence[SecureAggClient], pool: ThreadPoolExecutor, round_id: int,
                 updates: npt.NDArray[np.float64], min_clients: int, timeout_s: float
                 ) -> tuple[RoundTiming, RoundResult]:
    """open_round → every client's submit, concurrently → close_round."""
    t0 = time.perf_counter()
    coord.open_round(round_id, shapes={NAME: (updates.shape[1],)}, min_clients=min_clients, timeout_s=timeout_s)
    t1 = time.perf_counter()
    calls = [lambda c=c, u=u: c.submit(round_id, {NAME: u}) for c, u in zip(clients, updates)]
    uploads_s, submit_s = run_concurrently(pool, calls, timeout_s)
    t2 = time.perf_counter()
    result = coord.close_round(round_id, timeout_s=timeout_s)
    t3 = time.perf_counter()
    return RoundTiming(t3 - t0, t1 - t0, uploads_s, t3 - t2, submit_s), result


def plain_round(coord: PlainCoordinator, clients: Sequence[PlainClient], pool: ThreadPoolExecutor, round_id: int,
                updates: npt.NDArray[np.float64], timeout_s: float
                ) -> tuple[RoundTiming, npt.NDArray[np.float64], float]:
    """The plaintext counterpart of :func:`secure_round`: (timing, average, total weight)."""
    t0 = time.perf_counter()
    coord.open_round(round_id, updates.shape[1], timeout_s=timeout_s)
    t1 = time.perf_counter()
    calls = [lambda c=c, u=u: c.submit(round_id, u) for c, u in zip(clients, updates)]
    uploads_s, submit_s = run_concurrently(pool, calls, timeout_s)
    t2 = time.perf_counter()
    average, weight = coord.close_round(round_id, timeout_s=timeout_s)
    t3 = time.perf_counter()
    return RoundTiming(t3 - t0, t1 - t0, uploads_s, t3 - t2, submit_s), average, weight


def check_average(what: str, average: npt.NDArray[np.float64], weight: float, expected: npt.NDArray[np.float64],
                  clients: int, tolerance: float) -> float:
    """Max |average - expected|; raises if it exceeds ``tolerance`` or the weight is not ``clients``."""
    err = float(np.max(np.abs(average - expected)))
    if err > tolerance or abs(weight - clients) > 1e-6:
        raise RuntimeError(f"{what} average is wrong: max error {err:.3e} (tolerance {tolerance:.1e}), "
                           f"total weight {weight} for {clients} clients")
    return err


def measure_client_shard(x: npt.NDArray[np.float64], parties: int, frac_bits: int) -> list[float]:
    """Seconds of encode + share of ``x`` (weight 1) over SHARD_SAMPLES runs, as ``SecureAggClient.submit``
    does it: encode into one int64 buffer, then the leader's share in place."""
    times: list[float] = []
    for _ in range(SHARD_SAMPLES):
        t0 = time.perf_counter()
        ring = np.empty(x.size + 1, dtype=np.int64)
        encode(x, frac_bits, out=ring[:-1])
        encode([1.0], frac_bits, out=ring[-1:])
        leader_share(ring, new_seeds(parties), ShareContext(1, "client-0", os.urandom(16)), out=ring)
        times.append(time.perf_counter() - t0)
    return times


def plaintext_upload_bytes(round_id: int, update: npt.NDArray[np.float64]) -> int:
    """Bytes of the one message a plaintext client sends per round."""
    meta = {"round": round_id, "client": "client-0", "weight": 1.0, "rid": RID_HEX}
    return sum(memoryview(f).nbytes for f in encode_message(MsgType.REPORT, meta, [update.data]))


def proc_status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise RuntimeError(f"unexpected unit {unit!r} for {key} in /proc/{pid}/status")
            return int(value) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def party_rss(ld: LocalDeployment) -> dict[str, list[int]]:
    """Each party process's peak (VmHWM) and current (VmRSS) resident set, in bytes, by party id."""
    pids = [ld.procs[f"party-{p.id}"].pid for p in ld.deployment.parties]
    return {"peak": [proc_status_bytes(pid, "VmHWM") for pid in pids],
            "current": [proc_status_bytes(pid, "VmRSS") for pid in pids]}


def cpu_seconds(procs: Mapping[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process (clients and coordinator) and by ``procs``."""
    out = {"clients+coordinator": time.process_time()}
    for name, proc in procs.items():
        t = proc.cpu_times()
        out[name] = t.user + t.system
    return out


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def party_agreement_s(log_dir: Path, parties: int, round_id: int) -> float | None:
    """The slowest party's own close time for ``round_id`` (its ``event=reveal`` log line), if logged."""
    seconds = []
    for i in range(parties):
        log = log_dir / f"party-{i}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        seconds += [float(m[3]) for m in REVEAL_LOG.finditer(text) if int(m[2]) == round_id]
    return max(seconds) if len(seconds) == parties else None


def print_log_tails(log_dir: Path, lines: int = 15) -> None:
    """Print the end of every process log (for a failed run)."""
    for log in sorted(log_dir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {log} (last {len(tail)} lines)", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


class PlainServerProcess:
    """``python -m benchmarks.plain_server`` on a fresh loopback port, stopped with SIGTERM on exit."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.port = free_ports(1)[0]
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "plain-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.plain_server", "--config", str(config), "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def __enter__(self) -> "PlainServerProcess":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def stats(xs: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# --- the runs ------------------------------------------------------------------------------

def make_updates(clients: int, dim: int, seed: int) -> npt.NDArray[np.float64]:
    """One float64 update per client (rows), small like model deltas."""
    return np.random.default_rng(seed).normal(0.0, 0.01, size=(clients, dim))


@dataclass(frozen=True)
class MainRun:
    """What :func:`run_main` measured; ``cpu`` holds one per-process CPU-seconds dict per round and kind."""

    secure: list[RoundTiming]
    plaintext: list[RoundTiming]
    cpu: dict[str, list[dict[str, float]]]
    agreement_s: list[float]
    max_abs_error: dict[str, float]
    rss: dict[str, list[int]]
    secure_upload_bytes: int  # what client-0 sent to all parties in one secure round


def run_main(workdir: Path, updates: npt.NDArray[np.float64], parties: int, repeat: int,
             timeout_s: float) -> MainRun:
    """Warm-up, then ``repeat`` alternating secure/plaintext rounds; timings, errors and party RSS."""
    n, dim = updates.shape
    min_clients = min(3, n)
    expected = updates.mean(axis=0)
    tolerance = 2.0 ** -DEFAULT_FRAC_BITS
    ld = LocalDeployment(workdir, parties=parties, clients=n, min_clients=min_clients)
    try:
        with ExitStack() as stack:
            stack.enter_context(ld)
            dep: Deployment = ld.deployment
            plain = stack.enter_context(PlainServerProcess(ld.config, ld.log_dir))
            coord = stack.enter_context(Coordinator(dep))
            pcoord = stack.enter_context(PlainCoordinator(dep, plain.port))
            clients = [stack.enter_context(SecureAggClient(dep, c.id, timeout_s=timeout_s)) for c in dep.clients]
            pclients = [stack.enter_context(PlainClient(dep, c.id, plain.port, timeout_s=timeout_s))
                        for c in dep.clients]
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=n, thread_name_prefix="client"))
            t0 = time.perf_counter()
            coord.status(timeout_s=timeout_s)  # returns once every party serves (CrypTen imported)
            print(f"  {parties} parties + dealer + plaintext server up in {time.perf_counter() - t0:.1f} s", flush=True)
            secure_round(coord, clients, pool, 0, updates, min_clients, timeout_s)
            plain_round(pcoord, pclients, pool, 0, updates, timeout_s)
            procs = {name: psutil.Process(p.pid) for name, p in ld.procs.items()}
            procs["plain-server"] = psutil.Process(plain.proc.pid)
            secure: list[RoundTiming] = []
            plaintext: list[RoundTiming] = []
            cpu: dict[str, list[dict[str, float]]] = {"secure": [], "plaintext": []}
            agreement: list[float] = []
            errors = {"secure": 0.0, "plaintext": 0.0}
            upload = 0
            for r in range(1, repeat + 1):
                c0, b0 = cpu_seconds(procs), clients[0].bytes_sent
                st, result = secure_round(coord, clients, pool, r, updates, min_clients, timeout_s)
                upload = clients[0].bytes_sent - b0
                c1 = cpu_seconds(procs)
                pt, average, weight = plain_round(pcoord, pclients, pool, r, updates, timeout_s)
                c2 = cpu_seconds(procs)
                cpu["secure"].append(cpu_delta(c0, c1))
                cpu["plaintext"].append(cpu_delta(c1, c2))
                errors["secure"] = max(errors["secure"], check_average(
                    "secure", result.average[NAME].numpy(), result.total_weight, expected, n, tolerance))
                errors["plaintext"] = max(errors["plaintext"], check_average(
                    "plaintext", average, weight, expected, n, 1e-12))
                secure.append(st)
                plaintext.append(pt)
                seconds = party_agreement_s(ld.log_dir, parties, r)
                if seconds is not None:
                    agreement.append(seconds)
                print(f"  round {r}/{repeat}: secure {st.total_s:.3f} s, plaintext {pt.total_s:.3f} s", flush=True)
            rss = party_rss(ld)
    except BaseException:
        print_log_tails(ld.log_dir)
        raise
    return MainRun(secure, plaintext, cpu, agreement, errors, rss, upload)


def run_rss(workdir: Path, clients: int, dim: int, parties: int, timeout_s: float) -> dict[str, list[int]]:
    """Party RSS of a fresh deployment: idle (all parties serving) and peak after one secure round.

    At most RSS_CLIENT_THREADS clients submit at once (each holds a few copies of its update, so n=50
    at d=1e7 would not fit in this harness otherwise); the leader runs at most a few uploads at once anyway."""
    updates = make_updates(clients, dim, seed=clients)
    min_clients = min(3, clients)
    ld = LocalDeployment(workdir, parties=parties, clients=clients, min_clients=min_clients)
    try:
        with ExitStack() as stack:
            stack.enter_context(ld)
            dep = ld.deployment
            coord = stack.enter_context(Coordinator(dep))
            sclients = [stack.enter_context(SecureAggClient(dep, c.id, timeout_s=timeout_s)) for c in dep.clients]
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=min(clients, RSS_CLIENT_THREADS),
                                                          thread_name_prefix="client"))
            coord.status(timeout_s=timeout_s)
            idle = party_rss(ld)["current"]
            _, result = secure_round(coord, sclients, pool, 1, updates, min_clients, timeout_s)
            check_average("secure", result.average[NAME].numpy(), result.total_weight, updates.mean(axis=0),
                          clients, 2.0 ** -DEFAULT_FRAC_BITS)
            after = party_rss(ld)
    except BaseException:
        print_log_tails(ld.log_dir)
        raise
    return {"idle": idle, "peak": after["peak"], "current": after["current"]}


def run(clients: int, dim: int, parties: int, repeat: int, rss_clients: Sequence[int],
        timeout_s: float) -> dict[str, Any]:
    """The whole benchmark; returns the JSON report."""
    updates = make_updates(clients, dim, seed=0)
    shard_s = measure_client_shard(updates[0], parties, DEFAULT_FRAC_BITS)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-bench-") as tmp:
        print(f"main run: {clients} clients, {parties} parties, d={dim:,}, {repeat} repeats", flush=True)
        measured = run_main(Path(tmp) / "main", updates, parties, repeat, timeout_s)
        rss_runs = {}
        for n in rss_clients:
            print(f"RSS run: {n} clients", flush=True)
            rss_runs[n] = run_rss(Path(tmp) / f"rss-{n}", n, dim, parties, timeout_s)
    secure, plaintext = measured.secure, measured.plaintext
    shard_med = statistics.median(shard_s)
    sec_total = [t.total_s for t in secure]
    pl_total = [t.total_s for t in plaintext]
    sec_submit = [s for t in secure for s in t.submit_s]
    samples = {
        "secure_round_s": sec_total,
        "plaintext_round_s": pl_total,
        "ratio": [s / p for s, p in zip(sec_total, pl_total)],
        "client_shard_ms": [1e3 * s for s in shard_s],
        "secure_open_s": [t.open_s for t in secure],
        "secure_uploads_s": [t.uploads_s for t in secure],
        "secure_client_submit_s": sec_submit,
        "secure_client_send_s": [s - shard_med for s in sec_submit],
        "secure_close_s": [t.close_s for t in secure],
        "secure_close_party_agreement_s": measured.agreement_s,
        "plaintext_open_s": [t.open_s for t in plaintext],
        "plaintext_uploads_s": [t.uploads_s for t in plaintext],
        "plaintext_client_submit_s": [s for t in plaintext for s in t.submit_s],
        "plaintext_close_s": [t.close_s for t in plaintext],
    }
    cpu_med = {kind: {name: statistics.median([d[name] for d in deltas]) for name in deltas[0]}
               for kind, deltas in measured.cpu.items()}
    stages = {
        "secure": {
            "open_s": statistics.median(samples["secure_open_s"]),
            "uploads_s": statistics.median(samples["secure_uploads_s"]),
            "client_submit_s": statistics.median(sec_submit),
            "client_encode_share_s": shard_med,
            "client_send_s": statistics.median(samples["secure_client_send_s"]),
            "close_s": statistics.median(samples["secure_close_s"]),
            "close_party_agreement_s": statistics.median(measured.agreement_s) if measured.agreement_s else None,
            "cpu_s": cpu_med["secure"],
        },
        "plaintext": {
            "open_s": statistics.median(samples["plaintext_open_s"]),
            "uploads_s": statistics.median(samples["plaintext_uploads_s"]),
            "client_submit_s": statistics.median(samples["plaintext_client_submit_s"]),
            "close_s": statistics.median(samples["plaintext_close_s"]),
            "cpu_s": cpu_med["plaintext"],
        },
    }
    return {
        "secure_round_s": statistics.median(sec_total),
        "plaintext_round_s": statistics.median(pl_total),
        "ratio": statistics.median(sec_total) / statistics.median(pl_total),
        "client_shard_ms": 1e3 * shard_med,
        "upload_bytes_per_client": measured.secure_upload_bytes,
        "plaintext_upload_bytes_per_client": plaintext_upload_bytes(1, updates[0]),
        "party_peak_rss_bytes": max(measured.rss["peak"]),
        "party_peak_rss_by_party": measured.rss["peak"],
        "rss_by_clients": {str(n): max(r["peak"]) for n, r in rss_runs.items()},
        "rss_detail_by_clients": {str(n): r for n, r in rss_runs.items()},
        "stages": stages,
        "max_abs_error": measured.max_abs_error,
        "samples": samples,
        "params": {"clients": clients, "dim": dim, "parties": parties, "repeat": repeat,
                   "rss_clients": list(rss_clients), "frac_bits": DEFAULT_FRAC_BITS,
                   "client_threads": clients, "shard_samples": SHARD_SAMPLES, "plaintext_dtype": "float64"},
    }


# --- report ----------------------------------------------------------------------------------

def mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def print_report(rep: dict[str, Any]) -> None:
    p, s = rep["params"], rep["samples"]
    print(f"\nmpc-agg overhead: n={p['clients']} clients, d={p['dim']:,}, k={p['parties']} parties, "
          f"{p['repeat']} repeats, loopback CURVE ZeroMQ, {p['clients']} client threads")
    print(f"{'':44s}{'median':>10s}{'min':>10s}{'max':>10s}")

    def row(label: str, xs: Sequence[float], fmt: str = "{:10.3f}") -> None:
        if xs:
            st = stats(xs)
            print(f"{label:44s}" + "".join(fmt.format(st[k]) for k in ("median", "min", "max")))

    row("secure round (s)", s["secure_round_s"])
    row("plaintext FedAvg round (s)", s["plaintext_round_s"])
    row("ratio secure / plaintext (per repeat)", s["ratio"], "{:10.2f}")
    print("secure stages")
    row("  open_round (s)", s["secure_open_s"])
    row("  uploads, all clients concurrently (s)", s["secure_uploads_s"])
    row("  one client's submit (s)", s["secure_client_submit_s"])
    row("  client encode+share, alone (ms)", s["client_shard_ms"], "{:10.1f}")
    row("  client send = submit - encode+share (s)", s["secure_client_send_s"])
    row("  close_round: agreement + reveal (s)", s["secure_close_s"])
    row("    of which parties' own close (s)", s["secure_close_party_agreement_s"])
    print("plaintext stages")
    row("  open (s)", s["plaintext_open_s"])
    row("  uploads, all clients concurrently (s)", s["plaintext_uploads_s"])
    row("  one client's submit (s)", s["plaintext_client_submit_s"])
    row("  close: average back (s)", s["plaintext_close_s"])
    cpu = {kind: rep["stages"][kind]["cpu_s"] for kind in ("secure", "plaintext")}
    print(f"{'CPU seconds per round, median':44s}{'secure':>10s}{'plaintext':>10s}")
    for name in cpu["secure"]:
        print(f"  {name:42s}{cpu['secure'][name]:10.3f}{cpu['plaintext'][name]:10.3f}")
    up, d = rep["upload_bytes_per_client"], p["dim"]
    print(f"upload per client: secure {up:,} B = 8·d + {up - 8 * d:,} B (every message to every party); "
          f"plaintext {rep['plaintext_upload_bytes_per_client']:,} B")
    by_party = ", ".join(mib(b) for b in rep["party_peak_rss_by_party"])
    print(f"party peak RSS after warm-up + {p['repeat']} rounds (n={p['clients']}): "
          f"max {mib(rep['party_peak_rss_bytes'])} (by party: {by_party})")
    for n, d in rep["rss_detail_by_clients"].items():
        print(f"party peak RSS, fresh deployment, 1 round, n={n}: max {mib(max(d['peak']))} "
              f"(by party: {', '.join(mib(b) for b in d['peak'])}; idle before: "
              f"{', '.join(mib(b) for b in d['idle'])})")
    err = rep["max_abs_error"]
    print(f"max |average - numpy mean|: secure {err['secure']:.2e} (<= 2^-{p['frac_bits']}), "
          f"plaintext {err['plaintext']:.2e}")


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _client_counts(text: str) -> list[int]:
    return [positive_int(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=positive_int, default=10)
    p.add_argument("--dim", type=positive_int, default=1_000_000, help="values per update")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--repeat", type=positive_int, default=5, help="timed rounds of each kind")
    p.add_argument("--rss-clients", type=_client_counts, default=[10, 50],
                   help="comma-separated client counts, each measured on a fresh deployment (default 10,50)")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on every wait, in seconds")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: --clients 3 --dim 1000 --parties 2 --repeat 1 --rss-clients 3")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.dim, args.parties, args.repeat, args.rss_clients = 3, 1000, 2, 1, [3]
    if args.parties < 2:
        p.error("--parties must be >= 2")
    check_repo()
    rep = run(args.clients, args.dim, args.parties, args.repeat, args.rss_clients, args.timeout)
    print_report(rep)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

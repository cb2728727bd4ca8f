"""Timed secure and plaintext rounds on a real deployment: what :mod:`benchmarks.overhead`,
:mod:`benchmarks.sweep` and :mod:`benchmarks.flower_secagg` measure.

A deployment here is :class:`parties.launcher.LocalDeployment` (k party processes and a dealer,
CURVE ZeroMQ on 127.0.0.1) and, for comparisons, :class:`benchmarks.plain_server.PlainServerProcess`
beside it.  A round is timed from the start of its open to the return of its close; its n clients
(created once, reused) submit concurrently from a pool of threads of this process.  Every round's
average is checked: secure within 2**-frac_bits of the numpy mean (the fixed-point resolution),
plaintext within the float32 rounding bound of :func:`plain_tolerance`.  The parties' own close
figures come from ``RoundResult.party_stats`` (each party's SUM_SHARE reply), never from their logs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import psutil

from fl_client import SecureAggClient
from parties.coordinator import Coordinator, RoundResult
from parties.launcher import LocalDeployment

from .common import NAME, cpu_delta, cpu_seconds, logs_on_failure, party_rss, run_concurrently
from .plain_server import PlainClient, PlainCoordinator, PlainServerProcess

__all__ = ["RoundTiming", "MainRun", "Harness", "harness", "make_updates", "secure_round", "plain_round",
           "check_average", "plain_tolerance", "round_bounds", "secure_tolerance", "BOUNDS_FRAC_BITS", "run_main",
           "run_rss", "RSS_CLIENT_THREADS"]

RSS_CLIENT_THREADS = 16
BOUNDS_FRAC_BITS = 20
"""Fractional bits of the benchmark's secure rounds (Flower's SecAgg+ quantises to about 2**-19 by default)."""

Updates = npt.NDArray[np.float32]


def make_updates(clients: int, dim: int, seed: int) -> Updates:
    """One float32 update per client (rows), small like model deltas (float32, as models hold them)."""
    return np.random.default_rng(seed).normal(0.0, 0.01, size=(clients, dim)).astype(np.float32)


def plain_tolerance(updates: Updates) -> float:
    """Bound on |float32 FedAvg - exact mean| for weight-1 clients: each of the n float32 additions
    rounds by at most 2**-24 of a partial sum (<= n·max|x|), the division once more."""
    n = updates.shape[0]
    return (n + 1) * float(np.max(np.abs(updates))) * 2.0**-24


def round_bounds(updates: Updates, ring_bits: int | None = None) -> dict[str, Any]:
    """What a deployment that clips states for these updates (``open_round``'s bounds): clip at twice the
    largest update's norm (nothing is clipped), weight 1, a cohort of at most n, BOUNDS_FRAC_BITS fractional
    bits.  Such a round fits the 32-bit ring (mpc_agg.ring); ``ring_bits=64`` asks for the wide one."""
    norm = max(float(np.linalg.norm(u.astype(np.float64))) for u in updates)
    return {"clip_norm": 2 * norm, "max_weight": 1.0, "max_cohort": updates.shape[0], "frac_bits": BOUNDS_FRAC_BITS,
            "ring_bits": ring_bits}


def secure_tolerance(coord: Coordinator, round_id: int) -> float:
    """The fixed-point resolution of the round: a secure average is within it of the exact mean."""
    return 2.0 ** -coord.specs[round_id].frac_bits


@dataclass(frozen=True)
class RoundTiming:
    """One round's wall times in seconds; ``submit_s`` has one entry per client."""

    total_s: float
    open_s: float
    uploads_s: float
    close_s: float
    submit_s: tuple[float, ...]


def secure_round(coord: Coordinator, clients: Sequence[SecureAggClient], pool: ThreadPoolExecutor, round_id: int,
                 updates: Updates, min_clients: int, timeout_s: float,
                 bounds: Mapping[str, Any]) -> tuple[RoundTiming, RoundResult]:
    """open_round (with ``bounds``: :func:`round_bounds`) → every client's submit, concurrently → close_round."""
    t0 = time.perf_counter()
    coord.open_round(round_id, shapes={NAME: (updates.shape[1],)}, min_clients=min_clients, timeout_s=timeout_s,
                     **bounds)
    t1 = time.perf_counter()
    calls = [lambda c=c, u=u: c.submit(round_id, {NAME: u}) for c, u in zip(clients, updates)]
    uploads_s, submit_s = run_concurrently(pool, calls, timeout_s)
    t2 = time.perf_counter()
    result = coord.close_round(round_id, timeout_s=timeout_s)
    t3 = time.perf_counter()
    return RoundTiming(t3 - t0, t1 - t0, uploads_s, t3 - t2, submit_s), result


def plain_round(coord: PlainCoordinator, clients: Sequence[PlainClient], pool: ThreadPoolExecutor, round_id: int,
                updates: Updates, timeout_s: float) -> tuple[RoundTiming, npt.NDArray[np.float32], float]:
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


def check_average(what: str, average: npt.NDArray[Any], weight: float, expected: npt.NDArray[np.float64],
                  clients: int, tolerance: float) -> float:
    """Max |average - expected|; raises if it exceeds ``tolerance`` or the weight is not ``clients``."""
    err = float(np.max(np.abs(average.astype(np.float64) - expected)))
    if err > tolerance or abs(weight - clients) > 1e-6:
        raise RuntimeError(f"{what} average is wrong: max error {err:.3e} (tolerance {tolerance:.1e}), "
                           f"total weight {weight} for {clients} clients")
    return err


# --- a deployment with its clients ---------------------------------------------------------------

@dataclass
class Harness:
    """A running deployment, its coordinator and clients (and the plaintext side, if asked for)."""

    ld: LocalDeployment
    coord: Coordinator
    clients: list[SecureAggClient]
    pool: ThreadPoolExecutor
    plain: PlainServerProcess | None = None
    pcoord: PlainCoordinator | None = None
    pclients: list[PlainClient] = field(default_factory=list)

    def plain_side(self) -> tuple[PlainCoordinator, list[PlainClient]]:
        if self.pcoord is None:
            raise RuntimeError("this harness was started without the plaintext server")
        return self.pcoord, self.pclients

    def procs(self) -> dict[str, psutil.Process]:
        """Every process of the deployment (and the plaintext server), for CPU accounting."""
        out = {name: psutil.Process(p.pid) for name, p in self.ld.procs.items()}
        if self.plain is not None:
            out["plain-server"] = psutil.Process(self.plain.proc.pid)
        return out


@contextmanager
def harness(workdir: Path, clients: int, parties: int, timeout_s: float, *, plain: bool,
            threads: int) -> Iterator[Harness]:
    """Start a deployment of ``parties`` with ``clients`` clients (and the plaintext server if ``plain``);
    yields once every party serves.  On a failure the processes' log tails are printed."""
    ld = LocalDeployment(workdir, parties=parties, clients=clients, min_clients=min(3, clients))
    with logs_on_failure(ld.log_dir), ExitStack() as stack:
        stack.enter_context(ld)
        dep = ld.deployment
        coord = stack.enter_context(Coordinator(dep))
        sclients = [stack.enter_context(SecureAggClient(dep, c.id, timeout_s=timeout_s)) for c in dep.clients]
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="client"))
        h = Harness(ld, coord, sclients, pool)
        if plain:
            h.plain = stack.enter_context(PlainServerProcess(ld.config, ld.log_dir))
            h.pcoord = stack.enter_context(PlainCoordinator(dep, h.plain.port))
            h.pclients = [stack.enter_context(PlainClient(dep, c.id, h.plain.port, h.plain.bulk_port, timeout_s=timeout_s))
                          for c in dep.clients]
        coord.status(timeout_s=timeout_s)  # returns once every party serves (CrypTen imported)
        yield h


# --- the runs ------------------------------------------------------------------------------------

@dataclass
class MainRun:
    """What :func:`run_main` measured, one entry per timed round: ``cpu`` holds per-process CPU seconds
    by kind, ``party_stats`` each secure round's ``RoundResult.party_stats``."""

    secure: list[RoundTiming] = field(default_factory=list)
    plaintext: list[RoundTiming] = field(default_factory=list)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"secure": [], "plaintext": []})
    party_stats: list[tuple[dict[str, Any], ...]] = field(default_factory=list)
    max_abs_error: dict[str, float] = field(default_factory=lambda: {"secure": 0.0, "plaintext": 0.0})
    rss: dict[str, list[int]] = field(default_factory=dict)
    secure_upload_bytes: int = 0  # what client-0 sent to all parties in one secure round
    ring_bits: int = 64  # of the secure rounds' update shares
    frac_bits: int = BOUNDS_FRAC_BITS


def _timed_pair(h: Harness, run: MainRun, round_id: int, updates: Updates, timeout_s: float,
                bounds: Mapping[str, Any]) -> None:
    """One secure round, then one plaintext round; both checked, everything recorded in ``run``."""
    pcoord, pclients = h.plain_side()
    n = updates.shape[0]
    expected = updates.mean(axis=0, dtype=np.float64)
    procs = h.procs()
    c0, b0 = cpu_seconds(procs), h.clients[0].bytes_sent
    st, result = secure_round(h.coord, h.clients, h.pool, round_id, updates, min(3, n), timeout_s, bounds)
    run.secure_upload_bytes = h.clients[0].bytes_sent - b0
    run.ring_bits, run.frac_bits = h.coord.specs[round_id].ring_bits, h.coord.specs[round_id].frac_bits
    c1 = cpu_seconds(procs)
    pt, average, weight = plain_round(pcoord, pclients, h.pool, round_id, updates, timeout_s)
    c2 = cpu_seconds(procs)
    run.cpu["secure"].append(cpu_delta(c0, c1))
    run.cpu["plaintext"].append(cpu_delta(c1, c2))
    err = run.max_abs_error
    err["secure"] = max(err["secure"], check_average("secure", result.average[NAME].numpy(), result.total_weight,
                                                     expected, n, secure_tolerance(h.coord, round_id)))
    err["plaintext"] = max(err["plaintext"], check_average("plaintext", average, weight, expected, n,
                                                           plain_tolerance(updates)))
    run.secure.append(st)
    run.plaintext.append(pt)
    run.party_stats.append(result.party_stats)


def run_main(workdir: Path, updates: Updates, parties: int, repeat: int, timeout_s: float, *,
             ring_bits: int | None = None) -> MainRun:
    """One untimed warm-up round of each kind, then ``repeat`` alternating secure/plaintext rounds with n
    concurrent client threads; timings, errors, the parties' close figures and party RSS.  The secure
    rounds state :func:`round_bounds` (``ring_bits``: None picks 32 when they fit, as a deployment would)."""
    n = updates.shape[0]
    bounds = round_bounds(updates, ring_bits)
    run = MainRun()
    t0 = time.perf_counter()
    with harness(workdir, n, parties, timeout_s, plain=True, threads=n) as h:
        print(f"  {parties} parties + dealer + plaintext server up in {time.perf_counter() - t0:.1f} s", flush=True)
        secure_round(h.coord, h.clients, h.pool, 0, updates, min(3, n), timeout_s, bounds)
        plain_round(*h.plain_side(), h.pool, 0, updates, timeout_s)
        for r in range(1, repeat + 1):
            _timed_pair(h, run, r, updates, timeout_s, bounds)
            print(f"  round {r}/{repeat}: secure {run.secure[-1].total_s:.3f} s, "
                  f"plaintext {run.plaintext[-1].total_s:.3f} s", flush=True)
        run.rss = party_rss(h.ld)
    return run


def run_rss(workdir: Path, clients: int, dim: int, parties: int, timeout_s: float) -> dict[str, list[int]]:
    """Party RSS of a fresh deployment: idle (all parties serving) and peak after one secure round.

    At most RSS_CLIENT_THREADS clients submit at once (each holds a few copies of its update, so n=50
    at d=1e7 would not fit in this harness otherwise); the leader runs at most a few uploads at once anyway."""
    updates = make_updates(clients, dim, seed=clients)
    with harness(workdir, clients, parties, timeout_s, plain=False,
                 threads=min(clients, RSS_CLIENT_THREADS)) as h:
        idle = party_rss(h.ld)["current"]
        _, result = secure_round(h.coord, h.clients, h.pool, 1, updates, min(3, clients), timeout_s,
                                 round_bounds(updates))
        check_average("secure", result.average[NAME].numpy(), result.total_weight,
                      updates.mean(axis=0, dtype=np.float64), clients, secure_tolerance(h.coord, 1))
        after = party_rss(h.ld)
    return {"idle": idle, "peak": after["peak"], "current": after["current"]}

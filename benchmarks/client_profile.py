"""Where one client's submit spends its CPU: our Python thread (by stage) vs ZeroMQ's I/O threads.

Run from the repository root::

    python -m benchmarks.client_profile --dim 1000000 --parties 3 --submits 8

One deployment (k parties on loopback); one round with the bounds the other benchmarks state
(:func:`benchmarks.rounds.round_bounds`: a 32-bit ring unless ``--ring-bits 64``);
``--submits`` clients submit the same update one after another (no contention).  Reported per
submit: process CPU (all threads), this thread's CPU, its split over the client's stages
(``cProfile`` with ``time.thread_time`` as its timer: the cumulative CPU of the functions in
``STAGES``; the profiler's own cost lands in "other") and the remainder, which is ZeroMQ's I/O
threads (CURVE on the control messages, the kernel copies of the sealed chunks).  For contrast,
the CPU of moving the same d values as float32 through CURVE inside this process, and through
AES-256-GCM (:mod:`mpc_agg.bulk`, seal and open: what a plaintext FedAvg round,
:mod:`benchmarks.plain_server`, pays per client, both ends).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from fl_client import SecureAggClient
from fl_client.client import clip_to_norm
from mpc_agg.bulk import UploadSeal, new_key
from mpc_agg.fixedpoint import encode
from mpc_agg.sharing import leader_share
from mpc_agg.transport import SecureContext
from parties.coordinator import Coordinator
from parties.launcher import LocalDeployment

from .common import NAME, check_repo, positive_int, write_json
from .rounds import round_bounds

__all__ = ["profile_submits", "main"]

STAGES = {"fetch_spec": SecureAggClient.fetch_spec, "clip": clip_to_norm, "encode": encode,
          "leader_share": leader_share, "seal": UploadSeal.seal_chunk}
"""The functions ``SecureAggClient.submit`` calls whose CPU is reported apart (cumulative, this thread)."""


def _stage_seconds(prof: cProfile.Profile) -> dict[str, float]:
    """Each stage's cumulative thread-CPU seconds in ``prof`` (0 where the function was never called)."""
    by_code = {(fn.__code__.co_filename, fn.__code__.co_firstlineno, fn.__code__.co_name): name
               for name, fn in STAGES.items()}
    out = dict.fromkeys(STAGES, 0.0)
    for key, (_cc, _nc, _tt, cumulative, _callers) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if key in by_code:
            out[by_code[key]] += cumulative
    return out


def _curve_send_cpu(payload: np.ndarray, sends: int) -> float:
    """Process CPU seconds (seal + open) per send of ``payload`` over a CURVE DEALER→ROUTER pair here."""
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    with SecureContext() as sctx:
        router = sctx.server(zmq.ROUTER, "tcp://127.0.0.1:*", public_key=server_pub.decode(),
                             secret_key=server_sec.decode(), domain="sink", allowed={client_pub.decode(): "c"})
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        dealer = sctx.client(zmq.DEALER, endpoint, public_key=client_pub.decode(), secret_key=client_sec.decode(),
                             server_key=server_pub.decode())

        def sink() -> None:
            for _ in range(sends + 1):
                if not router.poll(30_000):
                    return
                router.recv_multipart(copy=False)

        t = threading.Thread(target=sink)
        t.start()
        dealer.send(payload.data, copy=False)  # warm-up: handshake
        p0 = time.process_time()
        for _ in range(sends):
            dealer.send(payload.data, copy=False)
        t.join(60)
        return (time.process_time() - p0) / sends


def _gcm_send_cpu(payload: np.ndarray, sends: int) -> float:
    """Thread CPU seconds to seal and open ``payload`` with AES-256-GCM (mpc_agg.bulk), per send."""
    seal = UploadSeal(new_key(), 1, bytes(16))
    t0 = time.thread_time()
    for _ in range(sends):
        seal.open_chunk(0, payload.size, seal.seal_chunk(0, payload.size, payload.data))
    return (time.thread_time() - t0) / sends


def profile_submits(dim: int, parties: int, submits: int, workdir: Path,
                    ring_bits: int | None = None) -> dict[str, Any]:
    """``submits`` clients submit one after another; this thread is profiled (cProfile, thread CPU time)."""
    update = np.random.default_rng(0).normal(0.0, 0.01, dim)
    prof = cProfile.Profile(timer=time.thread_time)
    with LocalDeployment(workdir, parties=parties, clients=submits + 1, min_clients=1, dealer=False) as ld, \
            Coordinator(ld.deployment) as coord:
        spec = coord.open_round(1, shapes={NAME: (dim,)}, min_clients=1,
                                **{**round_bounds(update[None, :], ring_bits), "max_cohort": submits + 1})
        clients = [SecureAggClient(ld.deployment, f"client-{i}") for i in range(submits + 1)]
        try:
            clients[0].submit(1, {NAME: update})  # warm-up
            p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            prof.enable()
            for c in clients[1:]:
                c.submit(1, {NAME: update})
            prof.disable()
            process, thread, wall = (time.process_time() - p0, time.thread_time() - t0, time.perf_counter() - w0)
        finally:
            for c in clients:
                c.close()
    totals = _stage_seconds(prof)
    per = {name: 1e3 * totals.get(name, 0.0) / submits for name in STAGES}
    thread_ms = 1e3 * thread / submits
    return {
        "process_cpu_ms": 1e3 * process / submits,
        "client_thread_cpu_ms": thread_ms,
        "stages_ms": per,
        "client_thread_other_ms": thread_ms - sum(per.values()),
        "zmq_io_thread_cpu_ms": 1e3 * (process - thread) / submits,
        "wall_ms": 1e3 * wall / submits,
        "curve_seal_and_open_cpu_ms": 1e3 * _curve_send_cpu(update.astype(np.float32), submits),
        "gcm_seal_and_open_cpu_ms": 1e3 * _gcm_send_cpu(update.astype(np.float32), submits),
        "params": {"dim": dim, "parties": parties, "submits": submits, "ring_bits": spec.ring_bits},
    }


def main(argv: list[str] | None = None) -> int:
    check_repo("benchmarks.client_profile")
    p = argparse.ArgumentParser(prog="python -m benchmarks.client_profile", description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=positive_int, default=1_000_000)
    p.add_argument("--parties", type=int, choices=range(2, 11), default=3, metavar="K")
    p.add_argument("--submits", type=positive_int, default=8)
    p.add_argument("--ring-bits", type=int, choices=(32, 64), default=None,
                   help="force the ring (default: 32 bits, as the round's bounds allow)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-profile-") as tmp:
        rep = profile_submits(args.dim, args.parties, args.submits, Path(tmp) / "dep", args.ring_bits)
    print(f"one client's submit, d={args.dim:,}, k={args.parties}, {rep['params']['ring_bits']}-bit ring "
          f"(mean of {args.submits}, ms of CPU):")
    print(f"  process, all threads      {rep['process_cpu_ms']:8.1f}   (wall {rep['wall_ms']:.1f})")
    print(f"  client thread             {rep['client_thread_cpu_ms']:8.1f}")
    for name, ms in rep["stages_ms"].items():
        print(f"    {name:24s}{ms:8.1f}")
    print(f"    {'other':24s}{rep['client_thread_other_ms']:8.1f}")
    print(f"  ZeroMQ I/O threads        {rep['zmq_io_thread_cpu_ms']:8.1f}")
    print(f"  for contrast, seal + open of the float32 vector: CURVE {rep['curve_seal_and_open_cpu_ms']:.1f}, "
          f"AES-256-GCM {rep['gcm_seal_and_open_cpu_ms']:.1f} (what a plaintext round pays per client)")
    write_json(args.json, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

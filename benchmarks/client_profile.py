"""Where one client's submit spends its CPU: our Python thread (by stage) vs ZeroMQ's I/O thread (CURVE).

Run from the repository root::

    python -m benchmarks.client_profile --dim 1000000 --parties 3 --submits 8

One deployment (k parties on loopback); one round; ``--submits`` clients submit the same
update one after another (no contention).  Reported per submit: process CPU (all
threads), this thread's CPU, its split over the client's stages (timed with
``time.thread_time`` around the functions ``SecureAggClient.submit`` calls) and the
remainder, which is ZeroMQ's I/O thread: CURVE sealing of every frame.  For contrast,
the CPU of sending the same d float64 values over a CURVE socket pair inside this
process (seal and open: what a plaintext round pays per client, both ends).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

import fl_client.client as client_mod
from fl_client import SecureAggClient
from mpc_agg.transport import SecureContext
from parties.coordinator import Coordinator
from parties.launcher import LocalDeployment

from .common import NAME, check_repo, positive_int, write_json

__all__ = ["profile_submits", "main"]

STAGES = ("fetch_spec", "encode", "leader_share")


def _timed(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.thread_time() - t0
    return wrapper


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


def profile_submits(dim: int, parties: int, submits: int, workdir: Path) -> dict[str, Any]:
    totals: dict[str, float] = {}
    originals = {name: getattr(client_mod, name) for name in ("encode", "leader_share")}
    fetch = SecureAggClient.fetch_spec
    update = np.random.default_rng(0).normal(0.0, 0.01, dim)
    ld = LocalDeployment(workdir, parties=parties, clients=submits + 1, min_clients=1, dealer=False)
    try:
        for name, fn in originals.items():
            setattr(client_mod, name, _timed(totals, name, fn))
        SecureAggClient.fetch_spec = _timed(totals, "fetch_spec", fetch)  # type: ignore[method-assign]
        with ld, Coordinator(ld.deployment) as coord:
            coord.open_round(1, shapes={NAME: (dim,)}, min_clients=1)
            clients = [SecureAggClient(ld.deployment, f"client-{i}") for i in range(submits + 1)]
            try:
                clients[0].submit(1, {NAME: update})  # warm-up
                totals.clear()
                p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
                for c in clients[1:]:
                    c.submit(1, {NAME: update})
                process, thread, wall = (time.process_time() - p0, time.thread_time() - t0,
                                         time.perf_counter() - w0)
            finally:
                for c in clients:
                    c.close()
    finally:
        for name, fn in originals.items():
            setattr(client_mod, name, fn)
        SecureAggClient.fetch_spec = fetch  # type: ignore[method-assign]
    per = {name: 1e3 * totals.get(name, 0.0) / submits for name in STAGES}
    thread_ms = 1e3 * thread / submits
    return {
        "process_cpu_ms": 1e3 * process / submits,
        "client_thread_cpu_ms": thread_ms,
        "stages_ms": per,
        "client_thread_other_ms": thread_ms - sum(per.values()),
        "zmq_io_thread_cpu_ms": 1e3 * (process - thread) / submits,
        "wall_ms": 1e3 * wall / submits,
        "curve_seal_and_open_cpu_ms": 1e3 * _curve_send_cpu(update, submits),
        "params": {"dim": dim, "parties": parties, "submits": submits},
    }


def main(argv: list[str] | None = None) -> int:
    check_repo("benchmarks.client_profile")
    p = argparse.ArgumentParser(prog="python -m benchmarks.client_profile", description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=positive_int, default=1_000_000)
    p.add_argument("--parties", type=int, choices=range(2, 11), default=3, metavar="K")
    p.add_argument("--submits", type=positive_int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-profile-") as tmp:
        rep = profile_submits(args.dim, args.parties, args.submits, Path(tmp) / "dep")
    print(f"one client's submit, d={args.dim:,}, k={args.parties} (mean of {args.submits}, ms of CPU):")
    print(f"  process, all threads      {rep['process_cpu_ms']:8.1f}   (wall {rep['wall_ms']:.1f})")
    print(f"  client thread             {rep['client_thread_cpu_ms']:8.1f}")
    for name, ms in rep["stages_ms"].items():
        print(f"    {name:24s}{ms:8.1f}")
    print(f"    {'other':24s}{rep['client_thread_other_ms']:8.1f}")
    print(f"  ZeroMQ I/O thread (CURVE) {rep['zmq_io_thread_cpu_ms']:8.1f}")
    print(f"  for contrast, CURVE seal + open of the float64 vector (what a plaintext round pays per client): "
          f"{rep['curve_seal_and_open_cpu_ms']:.1f}")
    write_json(args.json, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plaintext FedAvg aggregator: the baseline that :mod:`benchmarks.overhead` compares against.

Run as ``python -m benchmarks.plain_server --config deployment.toml --port P --bulk-port B``
from the repository root (:class:`PlainServerProcess` starts it so).  It uses the
secure path's transport and process layout: one process with a CURVE ROUTER
(:class:`mpc_agg.transport.SecureContext`) bound on loopback under party 0's key
pair, admitting only the deployment's clients and coordinator by their CURVE
keys, and a bulk endpoint where the update travels in chunks sealed with AES-GCM
under a per-upload key handed out over CURVE (:mod:`mpc_agg.bulk`, as a party's
dense share does), speaking the wire format of :mod:`mpc_agg.wire`.  What it does
not do is secret sharing: clients upload their update in the clear as float32, as
Flower's and PyTorch's FedAvg send model parameters, and the server keeps one
float32 running sum of weight·update per round (one round open at a time) and
divides it by the total weight at close, as Flower's FedAvg aggregates float32
layers (``flwr.server.strategy.aggregate.aggregate``)::

    OPEN_ROUND    coordinator  meta {round, dim}                      -> OK
    REPORT_BEGIN  client       meta {round, client, weight, report_id} -> OK meta {key, chunk}
    REPORT_CHUNK  bulk         meta {report_id, offset},
                               payload: sealed little-endian float32  -> OK meta {next, done, tag}
    CLOSE_ROUND   coordinator  meta {round}                           -> OK meta {clients, total_weight},
                                                                         payload: the float32 weighted average

:class:`PlainClient` and :class:`PlainCoordinator` are the two callers' sides.
The server runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from mpc_agg.bulk import TAG_BYTES, UploadSeal, new_key
from mpc_agg.config import Deployment, free_ports, read_secret_key
from mpc_agg.errors import AuthError, DuplicateReportError, RoundStateError, WireError
from mpc_agg.service import Reply, Request, Service, reporting_client
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import UPLOAD_WINDOW, MsgType, require

from .common import REPO

__all__ = ["DTYPE", "PlainServer", "PlainClient", "PlainCoordinator", "PlainServerProcess", "main"]

log = logging.getLogger("benchmarks.plain_server")

DTYPE = np.dtype("<f4")
"""What a plaintext client uploads and the server sums in: float32, as Flower and PyTorch FedAvg do."""


CHUNK = 1 << 20
"""Values per sealed chunk, as a party's."""


def endpoint(port: int) -> str:
    """The plaintext server's loopback endpoint."""
    return f"tcp://127.0.0.1:{port}"


@dataclass
class _Upload:
    client: str
    weight: float
    seal: UploadSeal
    received: int = 0


@dataclass
class _PlainRound:
    round_id: int
    total: npt.NDArray[np.float32]
    weight: float = 0.0
    clients: set[str] = field(default_factory=set)
    uploads: dict[str, _Upload] = field(default_factory=dict)  # report id -> upload in progress


class PlainServer(Service):
    """The aggregator process's state; ``serve()`` runs until ``stop()``."""

    def __init__(self, deployment: Deployment, port: int, bulk_port: int) -> None:
        leader = deployment.party(0)
        secret = read_secret_key(leader.private_key_file, "party 0")
        allowed = {c.public_key: f"client:{c.id}" for c in deployment.clients}
        allowed[deployment.coordinator_public_key] = "coordinator"
        self.sctx = SecureContext()
        self.sock = self.sctx.server(zmq.ROUTER, endpoint(port), public_key=leader.public_key, secret_key=secret,
                                     domain="clients", allowed=allowed)
        bulk = self.sctx.bulk_server(endpoint(bulk_port), max_message=4 * CHUNK + TAG_BYTES + (1 << 16))
        self.round: _PlainRound | None = None
        super().__init__(self.sctx, self.sock, {MsgType.OPEN_ROUND: self._on_open,
                                                MsgType.REPORT_BEGIN: self._on_begin,
                                                MsgType.CLOSE_ROUND: self._on_close}, "plain-server",
                         bulk=bulk, bulk_handlers={MsgType.REPORT_CHUNK: self._on_chunk})

    def _open_round(self, meta: dict[str, Any]) -> _PlainRound:
        r = require(meta, "round", int)
        if self.round is None or self.round.round_id != r:
            raise RoundStateError(f"round {r} is not open")
        return self.round

    def _on_open(self, req: Request) -> Reply:
        if req.identity != "coordinator":
            raise AuthError("only the coordinator opens rounds")
        r = require(req.meta, "round", int)
        dim = require(req.meta, "dim", int)
        if dim < 1:
            raise WireError("dim must be >= 1")
        self.round = _PlainRound(r, np.zeros(dim, dtype=DTYPE))
        return MsgType.OK, {}, []

    def _on_begin(self, req: Request) -> Reply:
        client = reporting_client(req.identity, req.meta)
        st = self._open_round(req.meta)
        weight = float(require(req.meta, "weight", (int, float)))
        if not (math.isfinite(weight) and weight > 0):
            raise WireError("weight must be positive and finite")
        if client in st.clients or any(u.client == client for u in st.uploads.values()) or \
                req.meta.get("report_id") in st.uploads:
            raise DuplicateReportError(f"client {client!r} already reported in round {st.round_id}")
        report, key = require(req.meta, "report_id", str), new_key()
        if len(report) != 32 or report.strip("0123456789abcdef"):
            raise WireError("report_id must be 32 lowercase hex characters")
        st.uploads[report] = _Upload(client, weight, UploadSeal(key, st.round_id, bytes.fromhex(report)))
        return MsgType.OK, {"key": key.hex(), "chunk": CHUNK}, []

    def _on_chunk(self, req: Request) -> Reply:
        """A sealed chunk (mpc_agg.bulk), added to the float32 running sum as it arrives."""
        st = self.round
        up = None if st is None else st.uploads.get(require(req.meta, "report_id", str))
        if st is None or up is None:
            raise RoundStateError("no upload of this report is in progress")
        count = min(CHUNK, st.total.size - up.received)
        if require(req.meta, "offset", int) != up.received or len(req.msg.payloads) != 1:
            raise WireError(f"expected the chunk at {up.received}")
        update = np.frombuffer(up.seal.open_chunk(up.received, count, req.msg.payloads[0]), dtype=DTYPE)
        if update.size != count:
            raise WireError(f"expected {count} values")
        part = st.total[up.received:up.received + count]
        np.add(part, update * np.float32(up.weight), out=part)  # float32, as Flower's FedAvg
        up.received += count
        done = up.received == st.total.size
        if done:
            del st.uploads[req.meta["report_id"]]
            st.weight += up.weight
            st.clients.add(up.client)
        return MsgType.OK, {"next": up.received, "done": done, "tag": up.seal.ack_tag(up.received, done)}, []

    def _on_close(self, req: Request) -> Reply:
        if req.identity != "coordinator":
            raise AuthError("only the coordinator closes rounds")
        st = self._open_round(req.meta)
        if not st.clients:
            raise RoundStateError(f"round {st.round_id} has no reports")
        self.round = None
        average = st.total / np.float32(st.weight)
        return MsgType.OK, {"clients": sorted(st.clients), "total_weight": st.weight}, [average.data]


class PlainClient:
    """One client's side: uploads its update as float32 under its own CURVE key."""

    def __init__(self, deployment: Deployment, client_id: str, port: int, bulk_port: int, *,
                 timeout_s: float) -> None:
        cfg = deployment.client(client_id)
        secret = read_secret_key(cfg.private_key_file, f"client {client_id}")
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.sctx = SecureContext()
        self._req = Requester(self.sctx.client(zmq.DEALER, endpoint(port), public_key=cfg.public_key,
                                               secret_key=secret, server_key=deployment.party(0).public_key),
                              typed=False)  # this baseline's own dialect, not the party protocol
        self._bulk = Requester(self.sctx.bulk_client(endpoint(bulk_port)), typed=False)

    @property
    def bytes_sent(self) -> int:
        return self._req.bytes_sent + self._bulk.bytes_sent

    def submit(self, round_id: int, update: npt.NDArray[np.floating[Any]], *, weight: float = 1.0) -> None:
        """Upload ``update`` as float32: the key over CURVE, then sealed chunks (two in flight, as a party's)."""
        x = np.ascontiguousarray(update, dtype=DTYPE).reshape(-1)
        report = os.urandom(16)
        meta = {"round": round_id, "client": self.client_id, "weight": weight, "report_id": report.hex()}
        deadline = time.monotonic() + self.timeout_s
        go = self._req.request(MsgType.REPORT_BEGIN, meta, timeout_s=self.timeout_s, what="plaintext server")
        seal, chunk = UploadSeal(bytes.fromhex(go.meta["key"]), round_id, report), int(go.meta["chunk"])
        pending: collections.deque[tuple[str, int]] = collections.deque()
        for start in range(0, x.size, chunk):
            part = x[start:start + chunk]
            head = {"report_id": report.hex(), "offset": start}
            pending.append((self._bulk.send(MsgType.REPORT_CHUNK, head, [seal.seal_chunk(start, part.size,
                                                                                          part.data)]),
                            start + part.size))
            while pending and (len(pending) >= UPLOAD_WINDOW or start + chunk >= x.size):
                rid, upto = pending.popleft()
                ack = self._bulk.wait(rid, deadline, "plaintext server")
                seal.check_ack(upto, upto == x.size, ack.meta.get("tag"))

    def close(self) -> None:
        self.sctx.close()

    def __enter__(self) -> "PlainClient":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class PlainCoordinator:
    """The coordinator's side: opens a round and gets the average back."""

    def __init__(self, deployment: Deployment, port: int) -> None:
        secret = read_secret_key(deployment.coordinator_private_key_file, "the coordinator")
        self.sctx = SecureContext()
        self._req = Requester(self.sctx.client(zmq.DEALER, endpoint(port), public_key=deployment.coordinator_public_key,
                                               secret_key=secret, server_key=deployment.party(0).public_key),
                              typed=False)  # this baseline's own dialect, not the party protocol

    def open_round(self, round_id: int, dim: int, *, timeout_s: float) -> None:
        self._req.request(MsgType.OPEN_ROUND, {"round": round_id, "dim": dim}, timeout_s=timeout_s,
                          what="plaintext server")

    def close_round(self, round_id: int, *, timeout_s: float) -> tuple[npt.NDArray[np.float32], float]:
        """(weighted average, total weight) of the round."""
        msg = self._req.request(MsgType.CLOSE_ROUND, {"round": round_id}, timeout_s=timeout_s,
                                what="plaintext server")
        if len(msg.payloads) != 1:
            raise WireError("the plaintext server sent a malformed average")
        return np.frombuffer(msg.payloads[0], dtype=DTYPE).copy(), float(msg.meta["total_weight"])

    def close(self) -> None:
        self.sctx.close()

    def __enter__(self) -> "PlainCoordinator":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class PlainServerProcess:
    """``python -m benchmarks.plain_server`` on a fresh loopback port, stopped with SIGTERM on exit."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.port, self.bulk_port = free_ports(2)
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "plain-server.log", "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.plain_server", "--config", str(config), "--port", str(self.port),
                 "--bulk-port", str(self.bulk_port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plain_server", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the deployment.toml whose keys to use")
    p.add_argument("--port", type=int, required=True, help="loopback TCP port to bind (CURVE)")
    p.add_argument("--bulk-port", type=int, required=True, help="loopback TCP port for sealed chunks")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    log.info("event=start file=%s port=%d", Path(__file__).resolve(), args.port)
    server = PlainServer(Deployment.load(args.config), args.port, args.bulk_port)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    server.serve()
    log.info("event=stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())

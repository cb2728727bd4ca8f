"""Plaintext FedAvg aggregator: the baseline that :mod:`benchmarks.overhead` compares against.

Run as ``python -m benchmarks.plain_server --config deployment.toml --port P``
from the repository root (:class:`PlainServerProcess` starts it so).  It uses the
secure path's transport and process layout: one process with a CURVE ROUTER
(:class:`mpc_agg.transport.SecureContext`) bound on loopback under party 0's key
pair, admitting only the deployment's clients and coordinator by their CURVE
keys, speaking the wire format of :mod:`mpc_agg.wire`.  What it does not do is
secret sharing: clients upload their update in the clear as float32, as Flower's
and PyTorch's FedAvg send model parameters, and the server keeps one float32
running sum of weight·update per round (one round open at a time) and divides it
by the total weight at close, as Flower's FedAvg aggregates float32 layers
(``flwr.server.strategy.aggregate.aggregate``)::

    OPEN_ROUND   coordinator  meta {round, dim}                       -> OK
    REPORT       client       meta {round, client, weight},
                              payload: dim little-endian float32      -> OK
    CLOSE_ROUND  coordinator  meta {round}                            -> OK meta {clients, total_weight},
                                                                         payload: the float32 weighted average

:class:`PlainClient` and :class:`PlainCoordinator` are the two callers' sides.
The server runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from mpc_agg.config import Deployment, free_ports, read_secret_key
from mpc_agg.errors import AuthError, DuplicateReportError, RoundStateError, WireError
from mpc_agg.service import Reply, Request, Service, reporting_client
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import MsgType, require

from .common import REPO

__all__ = ["DTYPE", "PlainServer", "PlainClient", "PlainCoordinator", "PlainServerProcess", "main"]

log = logging.getLogger("benchmarks.plain_server")

DTYPE = np.dtype("<f4")
"""What a plaintext client uploads and the server sums in: float32, as Flower and PyTorch FedAvg do."""


def endpoint(port: int) -> str:
    """The plaintext server's loopback endpoint."""
    return f"tcp://127.0.0.1:{port}"


@dataclass
class _PlainRound:
    round_id: int
    total: npt.NDArray[np.float32]
    weight: float = 0.0
    clients: set[str] = field(default_factory=set)


class PlainServer(Service):
    """The aggregator process's state; ``serve()`` runs until ``stop()``."""

    def __init__(self, deployment: Deployment, port: int) -> None:
        leader = deployment.party(0)
        secret = read_secret_key(leader.private_key_file, "party 0")
        allowed = {c.public_key: f"client:{c.id}" for c in deployment.clients}
        allowed[deployment.coordinator_public_key] = "coordinator"
        self.sctx = SecureContext()
        self.sock = self.sctx.server(zmq.ROUTER, endpoint(port), public_key=leader.public_key, secret_key=secret,
                                     domain="clients", allowed=allowed)
        self.round: _PlainRound | None = None
        super().__init__(self.sctx, self.sock, {MsgType.OPEN_ROUND: self._on_open, MsgType.REPORT: self._on_report,
                                                MsgType.CLOSE_ROUND: self._on_close}, "plain-server")

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

    def _on_report(self, req: Request) -> Reply:
        client = reporting_client(req.identity, req.meta)
        st = self._open_round(req.meta)
        weight = float(require(req.meta, "weight", (int, float)))
        if not (math.isfinite(weight) and weight > 0):
            raise WireError("weight must be positive and finite")
        if client in st.clients:
            raise DuplicateReportError(f"client {client!r} already reported in round {st.round_id}")
        if len(req.msg.payloads) != 1 or memoryview(req.msg.payloads[0]).nbytes != st.total.nbytes:
            raise WireError(f"expected one payload of {st.total.nbytes} bytes")
        update = np.frombuffer(req.msg.payloads[0], dtype=DTYPE)
        np.add(st.total, update * np.float32(weight), out=st.total)  # float32, as Flower's FedAvg
        st.weight += weight
        st.clients.add(client)
        return MsgType.OK, {}, []

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

    def __init__(self, deployment: Deployment, client_id: str, port: int, *, timeout_s: float) -> None:
        cfg = deployment.client(client_id)
        secret = read_secret_key(cfg.private_key_file, f"client {client_id}")
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.sctx = SecureContext()
        self._req = Requester(self.sctx.client(zmq.DEALER, endpoint(port), public_key=cfg.public_key,
                                               secret_key=secret, server_key=deployment.party(0).public_key),
                              typed=False)  # this baseline's own dialect, not the party protocol

    def submit(self, round_id: int, update: npt.NDArray[np.floating[Any]], *, weight: float = 1.0) -> None:
        x = np.ascontiguousarray(update, dtype=DTYPE)
        meta = {"round": round_id, "client": self.client_id, "weight": weight}
        self._req.request(MsgType.REPORT, meta, [x.data], timeout_s=self.timeout_s, what="plaintext server")

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
        self.port = free_ports(1)[0]
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "plain-server.log", "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.plain_server", "--config", str(config), "--port", str(self.port)],
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
    p.add_argument("--port", type=int, required=True, help="loopback TCP port to bind")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    log.info("event=start file=%s port=%d", Path(__file__).resolve(), args.port)
    server = PlainServer(Deployment.load(args.config), args.port)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    server.serve()
    log.info("event=stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())

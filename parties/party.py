"""One aggregator party process: ZeroMQ wiring around :class:`parties.core.PartyCore`.

Runs as ``mpc-agg party --config deployment.toml --id I`` until SIGTERM.  Each party
receives the dense shares of the reports whose dense party it is (whole in a REPORT when
small, else in sealed chunks), and a 32-byte seed of every other report, which it expands
(mpc_agg.sharing, ``dense_party``).
The protocol itself (docs/PROTOCOL.md) lives in parties/core.py and its rooms; this module owns the sockets: the CURVE
ROUTER that clients and the coordinator talk to, the bulk endpoint for sealed share
chunks (mpc_agg.bulk), the party-to-party communicator
(CrypTen's, for the close), and the dealer connection.
"""

from __future__ import annotations

import os
import signal
import time

import zmq

from mpc_agg.bulk import TAG_BYTES
from mpc_agg.config import Deployment, read_secret_key
from mpc_agg.crypten_glue import DealerProvider, ZmqCommunicator, activate, deactivate
from mpc_agg.messages import validate_request
from mpc_agg.service import Reply, Request, Service
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import INLINE_MAX, MAX_META_BYTES, SMALL_META_BYTES, UPLOAD_WINDOW, MsgType
from parties.agreement import Collective
from parties.core import PartyCore
from parties.uploads import UploadLimits

__all__ = ["Party", "ZmqPeers"]


class ZmqPeers:
    """The other parties over CURVE ZeroMQ (parties.core.PeerLink): CrypTen's session for each close.

    The session exchanges no PRNG seeds: the close's MPC checks (mpc_agg.normcheck, signcircuit)
    take all their randomness from the dealer, and CrypTen's generators stay unset (an error if used)."""

    def __init__(self, comm: ZmqCommunicator, provider: DealerProvider | None, timeout_s: float) -> None:
        self.comm, self.provider, self.timeout_s = comm, provider, timeout_s
        self.has_dealer = provider is not None

    def begin(self, tag: str, seconds: float) -> Collective:
        self.comm.timeout_s = min(seconds, self.timeout_s)  # give up when the coordinator does
        if self.provider is not None:  # and tell it why a dealer failure happened, while it still listens
            self.provider.deadline = time.monotonic() + seconds
        activate(self.comm, self.provider, tag, prng=False)
        return self.comm

    def bytes_sent(self) -> int:
        return self.comm.comm_bytes


class Party(Service):
    """Party ``party_id`` of a deployment; ``serve()`` runs until ``stop()`` or SIGTERM."""

    chunk_values = PartyCore.chunk_values
    client_hwm = 8  # messages libzmq queues per client connection before it stops reading that socket

    def __init__(self, deployment: Deployment, party_id: int, *, peer_timeout_s: float = 60.0,
                 upload_limits: UploadLimits | None = None) -> None:
        cfg = deployment.party(party_id)
        secret = read_secret_key(cfg.private_key_file, f"party {party_id}")
        sctx = SecureContext()
        allowed = {c.public_key: f"client:{c.id}" for c in deployment.clients}
        allowed[deployment.coordinator_public_key] = "coordinator"
        sock = sctx.server(zmq.ROUTER, cfg.client_endpoint, public_key=cfg.public_key, secret_key=secret,
                           domain="clients", allowed=allowed,
                           max_message=max(MAX_META_BYTES, INLINE_MAX + SMALL_META_BYTES) + (1 << 16))
        sock.rcvhwm = self.client_hwm
        bulk = sctx.bulk_server(cfg.bulk_endpoint, max_message=8 * self.chunk_values + TAG_BYTES + (1 << 16))
        bulk.rcvhwm = UPLOAD_WINDOW  # sealed chunks a client may have in flight (mpc_agg.wire)
        transcript = os.environ.get("MPC_AGG_TRANSCRIPT")
        comm = ZmqCommunicator(
            sctx, rank=party_id, endpoints=[p.peer_endpoint for p in deployment.parties],
            public_keys=[p.public_key for p in deployment.parties], secret_key=secret, timeout_s=peer_timeout_s,
            transcript=transcript and f"{transcript}.party{party_id}",
        )
        provider = None
        if deployment.dealer_endpoint and deployment.dealer_public_key:
            dsock = sctx.client(zmq.DEALER, deployment.dealer_endpoint, public_key=cfg.public_key,
                                secret_key=secret, server_key=deployment.dealer_public_key)
            provider = DealerProvider(Requester(dsock), rank=party_id, timeout_s=peer_timeout_s)
        self.core = PartyCore(cfg, party_id, len(deployment.parties), peers=ZmqPeers(comm, provider, peer_timeout_s),
                              outbox=self.send_reply, upload_limits=upload_limits)
        handlers = {**self.core.handlers, MsgType.STATUS: self._on_status}
        super().__init__(sctx, sock, handlers, f"party-{party_id}", validate=validate_request, bulk=bulk,
                         bulk_handlers=self.core.bulk_handlers)

    def _on_status(self, req: Request) -> Reply:
        mtype, meta, payloads = self.core.on_status(req)
        return mtype, {**meta, **self.health()}, payloads

    def tick(self) -> None:
        self.core.tick(idle=not self.pending())

    def close(self) -> None:
        self.core.sync_and_ack()
        deactivate()
        super().close()


def run_party(config: str | os.PathLike[str], party_id: int) -> int:
    """Entry point of ``mpc-agg party``: serve until SIGTERM/SIGINT, then exit 0."""
    dep = Deployment.load(config)
    party = Party(dep, party_id)
    signal.signal(signal.SIGTERM, party.stop)
    signal.signal(signal.SIGINT, party.stop)
    party.serve()
    return 0

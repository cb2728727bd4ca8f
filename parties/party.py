"""One aggregator party: accepts shares, agrees on the cohort with its peers, reveals its share of the sum.

Runs as ``mpc-agg party --config deployment.toml --id I`` until SIGTERM.  Party 0
(the leader) receives each client's int64 share vector; helpers receive a
32-byte seed and expand it (mpc_agg.sharing).  Each party keeps one running sum
(O(d) memory) and spools each report's own share material to disk, so that a
report that is missing at another party can be subtracted again at close time.

Closing is the party-to-party protocol, run through the CrypTen ZeroMQ
communicator (README, "How it works"; parties/cohort.py): exchange status (spec
digest, floors, revealed flag) and report ids, keep the intersection, refuse below
any floor or on a second reveal, and hand the coordinator only this party's share
of the cohort's sum, held as a CrypTen ArithmeticSharedTensor.

The upload rules (parties/uploads.py) and the close's cohort steps
(parties/cohort.py) live apart; what stays here (about 400 lines) are the handlers
that share the round table, the running sums and the deferred replies.  Splitting
those further (recovery, group commit, the close's status exchange) goes with
making the protocol explicit (issue 11).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from mpc_agg.config import Deployment, read_secret_key
from mpc_agg.crypten_glue import DealerProvider, ZmqCommunicator, activate, deactivate, import_crypten
from mpc_agg.errors import (
    RefusedError,
    AlreadyRevealedError,
    AuthError,
    CohortTooSmallError,
    DuplicateReportError,
    RoundStateError,
    SpecMismatchError,
    WireError,
)
from mpc_agg.logs import event
from mpc_agg.ring import chunk_nbytes, sum_share_frames, widen_chunk
from mpc_agg.sharing import SEED_BYTES, ShareContext, accumulate_seed
from mpc_agg.spec import RoundSpec
from mpc_agg.store import RoundStore, StoredReport
from mpc_agg.trust import check_party_consent
from mpc_agg.service import Reply, Service, reporting_client
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.messages import validate_request
from mpc_agg.wire import MAX_META_BYTES, MAX_PAYLOADS, Message, MsgType, require
from parties.cohort import CohortSteps
from parties.uploads import Upload, UploadLimits, UploadScheduler

__all__ = ["Party"]

log = logging.getLogger("mpc_agg.party")


@dataclass
class _Round:
    spec: RoundSpec
    digest: str
    dir: Path
    total: np.ndarray
    reports: dict[str, str] = field(default_factory=dict)  # report id (hex) -> client id
    stored: dict[str, StoredReport] = field(default_factory=dict)  # where each report's material lies
    clients: set[str] = field(default_factory=set)
    revealed: bool = False


class Party(Service):
    """Party ``party_id`` of a deployment; ``serve()`` runs until ``stop()`` or SIGTERM."""

    chunk_values = 1 << 20  # values per upload chunk (8 MiB; even, for keystream block alignment)
    max_group = 64  # reports acknowledged by one fsync at most
    client_hwm = 8  # messages libzmq queues per client connection before it stops reading that socket

    def __init__(self, deployment: Deployment, party_id: int, *, peer_timeout_s: float = 60.0,
                 upload_limits: UploadLimits | None = None) -> None:
        self.dep = deployment
        self.cfg = deployment.party(party_id)
        self.id = party_id
        self.k = len(deployment.parties)
        self.is_leader = party_id == 0
        self.peer_timeout_s = peer_timeout_s
        secret = read_secret_key(self.cfg.private_key_file, f"party {party_id}")
        self.sctx = SecureContext()
        allowed = {c.public_key: f"client:{c.id}" for c in deployment.clients}
        allowed[deployment.coordinator_public_key] = "coordinator"
        self.sock = self.sctx.server(
            zmq.ROUTER, self.cfg.client_endpoint, public_key=self.cfg.public_key, secret_key=secret,
            domain="clients", allowed=allowed, max_message=8 * self.chunk_values + MAX_META_BYTES + (1 << 16),
        )
        self.sock.rcvhwm = self.client_hwm
        self.comm = ZmqCommunicator(
            self.sctx, rank=party_id, endpoints=[p.peer_endpoint for p in deployment.parties],
            public_keys=[p.public_key for p in deployment.parties], secret_key=secret, timeout_s=peer_timeout_s,
            transcript=os.environ.get("MPC_AGG_TRANSCRIPT") and f"{os.environ['MPC_AGG_TRANSCRIPT']}.party{party_id}",
        )
        self.provider: DealerProvider | None = None
        if deployment.dealer_endpoint and deployment.dealer_public_key:
            dsock = self.sctx.client(zmq.DEALER, deployment.dealer_endpoint, public_key=self.cfg.public_key,
                                     secret_key=secret, server_key=deployment.dealer_public_key)
            self.provider = DealerProvider(Requester(dsock), rank=party_id, timeout_s=peer_timeout_s)
        self.rounds: dict[int, _Round] = {}
        self.seen_report_ids: set[str] = set()
        self.uploads: UploadScheduler[tuple[bytes, str | None]] = UploadScheduler(upload_limits or UploadLimits())
        self.unsynced: dict[Path, list[tuple[bytes, str, Message, dict[str, Any]]]] = {}
        self.store = RoundStore(self.cfg.state_dir)
        self._recover()
        import_crypten()
        super().__init__(self.sctx, self.sock, {
            MsgType.GET_SPEC: self._on_get_spec,
            MsgType.OPEN_ROUND: self._on_open,
            MsgType.REPORT: self._on_report,
            MsgType.REPORT_BEGIN: self._on_begin,
            MsgType.REPORT_CHUNK: self._on_chunk,
            MsgType.CLOSE_ROUND: self._on_close,
            MsgType.STATUS: self._on_status,
        }, f"party-{party_id}", validate=validate_request)

    def close(self) -> None:
        self._sync_and_ack()
        deactivate()
        super().close()

    def _recover(self) -> None:
        """Reload every round and acknowledged report from disk (after a restart or a crash)."""
        for stored in self.store.load():
            spec = stored.spec
            st = _Round(spec, spec.digest(), stored.dir, np.zeros(0 if stored.revealed else spec.dim + 1, np.int64),
                        revealed=stored.revealed)
            for rep in stored.reports:
                if not stored.revealed:
                    self._apply_stored(st, rep)
                    st.stored[rep.report] = rep
                st.reports[rep.report] = rep.client
                st.clients.add(rep.client)
                self.seen_report_ids.add(rep.report)
            self.rounds[spec.round_id] = st
            event(log, "recovered", party=self.id, round=spec.round_id, reports=len(stored.reports),
                  revealed=stored.revealed, torn_tail=stored.torn)

    # --- handlers ----------------------------------------------------------------------
    def _round(self, meta: dict[str, Any]) -> _Round:
        r = require(meta, "round", int)
        if r not in self.rounds:
            raise RoundStateError(f"party {self.id}: round {r} is not open")
        return self.rounds[r]

    def _on_status(self, identity: str, msg: Message) -> tuple[MsgType, dict[str, Any], list[Any]]:
        rounds = {str(r): {"reports": len(st.reports), "revealed": st.revealed} for r, st in self.rounds.items()}
        return MsgType.STATUS, {"party": self.id, "leader": self.is_leader, "rounds": rounds,
                                "min_clients": self.cfg.min_clients, **self.health()}, []

    def _on_get_spec(self, identity: str, msg: Message) -> tuple[MsgType, dict[str, Any], list[Any]]:
        st = self._round(msg.meta)
        return MsgType.SPEC, {"spec": st.spec.to_json(), "digest": st.digest, "party": self.id}, []

    def _on_open(self, identity: str, msg: Message) -> tuple[MsgType, dict[str, Any], list[Any]]:
        if identity != "coordinator":
            raise AuthError("only the coordinator opens rounds")
        spec = RoundSpec.from_json(require(msg.meta, "spec", dict))
        digest = spec.digest()
        existing = self.rounds.get(spec.round_id)
        if existing is not None:
            if existing.revealed:
                raise AlreadyRevealedError(f"round {spec.round_id} was already revealed; round ids are never reused")
            if existing.digest != digest:
                raise RoundStateError(f"round {spec.round_id} is already open with a different spec")
            return MsgType.OK, {"digest": digest}, []
        check_party_consent(spec, parties=self.k, allow_verify_norm=self.cfg.allow_verify_norm,
                            has_dealer=self.provider is not None, who=f"party {self.id}")
        if self.store.is_revealed(spec.round_id):
            raise AlreadyRevealedError(f"round {spec.round_id} was already revealed; round ids are never reused")
        rdir = self.store.create_round(spec)
        self.rounds[spec.round_id] = _Round(spec, digest, rdir, np.zeros(spec.dim + 1, dtype=np.int64))
        event(log, "open", party=self.id, round=spec.round_id, dim=spec.dim, digest=digest[:16])
        return MsgType.OK, {"digest": digest}, []

    def _apply_stored(self, st: _Round, rep: StoredReport, *, subtract: bool = False) -> None:
        """Add (or subtract) one stored report's share to the round's running sum, block by block."""
        op = np.subtract if subtract else np.add
        if self.is_leader:
            for pos, block in self.store.iter_material(st.dir, rep):
                view = st.total[pos // 8: pos // 8 + len(block) // 8]
                op(view, np.frombuffer(block, dtype="<i8"), out=view)
        else:
            ctx = ShareContext(st.spec.round_id, rep.client, bytes.fromhex(rep.report))
            accumulate_seed(st.total, self.store.read_material(st.dir, rep), ctx, self.id, subtract=subtract,
                            bits=st.spec.ring_bits)

    def _check_report(self, identity: str, meta: dict[str, Any]) -> tuple[_Round, str, str]:
        """The checks every new report passes before any of it is accepted: (round, client, report id)."""
        client = reporting_client(identity, meta)
        st = self._round(meta)
        if st.revealed:
            raise RoundStateError(f"round {st.spec.round_id} is closed")
        if require(meta, "spec_digest", str) != st.digest:
            raise SpecMismatchError(f"report for round {st.spec.round_id} was made for a different spec")
        report_hex = require(meta, "report_id", str)  # 32 lowercase hex characters (mpc_agg.messages)
        if report_hex in self.seen_report_ids:
            raise DuplicateReportError(f"report id {report_hex} was already used")
        if client in st.clients:
            raise DuplicateReportError(f"client {client!r} already reported in round {st.spec.round_id}")
        cap = min(self.cfg.max_reports, st.spec.cohort_limit)  # a cohort is within every helper's cap: no wrap
        if len(st.reports) >= cap:
            raise RoundStateError(f"round {st.spec.round_id} is full ({cap} reports)")
        return st, client, report_hex

    def _acknowledge(self, st: _Round, client: str, report_hex: str, stored: StoredReport) -> None:
        st.stored[report_hex] = stored
        st.reports[report_hex] = client
        st.clients.add(client)
        self.seen_report_ids.add(report_hex)
        event(log, "report", party=self.id, round=st.spec.round_id, client=client, report=report_hex)

    def _on_report(self, identity: str, msg: Message) -> Reply | None:
        """A helper's whole report: one 32-byte seed."""
        if self.is_leader:
            raise WireError("the leader takes reports in chunks (REPORT_BEGIN, REPORT_CHUNK)")
        st, client, report_hex = self._check_report(identity, msg.meta)
        if msg.payloads[0].nbytes != SEED_BYTES:
            raise WireError(f"a helper's report is one seed of {SEED_BYTES} bytes")
        material = msg.payloads[0]
        stored = self.store.add_report(st.dir, report_hex, client, material, sync=False)
        accumulate_seed(st.total, bytes(material), ShareContext(st.spec.round_id, client, bytes.fromhex(report_hex)),
                        self.id, bits=st.spec.ring_bits)
        self._acknowledge(st, client, report_hex, stored)
        return self._ack_when_durable(st, identity, msg, {"report_id": report_hex})

    # --- the leader's chunked uploads (parties/uploads.py: slots, queue, limits) ---------------
    # REPORT_BEGIN is answered when the upload gets a slot (others wait in a FIFO queue that
    # holds no payload).  Each active upload has its record reserved in the log; its chunks
    # are added to the running sum and written at their offsets as they arrive, in order; the
    # last one seals the record (acknowledged after the next group fsync).  Memory: the sum,
    # whatever n; each chunk is written and dropped as soon as it is read.

    def _on_begin(self, identity: str, msg: Message) -> Reply | None:
        if not self.is_leader:
            raise WireError("helpers take a report as one REPORT message")
        st, client, report_hex = self._check_report(identity, msg.meta)
        self._schedule()  # free what has expired before judging this one
        now = time.monotonic()
        stated = now + (float(msg.meta["deadline"]) - time.time())
        up = self.uploads.offer((self._routing_id, self._rid(msg)), st.spec.round_id, client, report_hex,
                                8 * (st.spec.dim + 1), client_deadline=stated, now=now)
        if up is None:
            return None  # queued: answered by _schedule
        return self._start(st, up)

    def _start(self, st: _Round, up: Upload) -> Reply:
        up.writer = self.store.begin_report(st.dir, up.report, up.client, up.size)
        return MsgType.OK, {"report_id": up.report, "chunk": self.chunk_values}, []

    def _schedule(self) -> None:
        """Cut off uploads past a limit, then give free slots to queued requests, in order."""
        for up, why in self.uploads.expired(time.monotonic()):
            self._abort(up, why)
        admitted, gone = self.uploads.admit(time.monotonic())
        for q in gone:
            self.reply_error(*q.token, RoundStateError("waited too long for an upload slot; try again"))
        for q, up in admitted:
            st = self.rounds.get(q.round_id)
            if st is None or st.revealed:
                self.uploads.finish(up)
                self.reply_error(*q.token, RoundStateError(f"round {q.round_id} is closed"))
                continue
            mtype, meta, payloads = self._start(st, up)
            self.reply(q.token[0], mtype, {**meta, "rid": q.token[1]}, payloads)

    def _on_chunk(self, identity: str, msg: Message) -> Reply | None:
        report_hex = msg.meta["report_id"]
        up = self.uploads.get(report_hex, identity.removeprefix("client:"))  # only clients send chunks (schema)
        if up is None:
            raise RoundStateError("no upload of this report is in progress for this client")
        st = self.rounds[up.round_id]
        size = st.spec.dim + 1
        count = min(self.chunk_values, size - up.received)
        bits = st.spec.ring_bits  # 32-bit shares are kept sign-extended to int64, on disk and in the sum
        if msg.meta["offset"] != up.received or msg.payloads[0].nbytes != chunk_nbytes(bits, size - 1, up.received,
                                                                                      count):
            self._abort(up, "bad chunk")
            raise WireError(f"expected the chunk at {up.received} of {count} values")
        chunk = widen_chunk(msg.payloads[0], bits, size - 1, up.received, count)
        up.writer.write(chunk.data)
        view = st.total[up.received:up.received + count]
        np.add(view, chunk, out=view)
        self.uploads.progress(up, count, time.monotonic())
        if up.received < size:
            return MsgType.OK, {"report_id": report_hex, "next": up.received}, []
        stored = up.writer.commit(sync=False)
        self.uploads.finish(up)
        self._acknowledge(st, up.client, report_hex, stored)
        self._schedule()
        return self._ack_when_durable(st, identity, msg, {"report_id": report_hex, "done": True})

    def _abort(self, up: Upload, why: str) -> None:
        """Take an unfinished upload back out of the sum; its record stays unfinished (skipped on load)."""
        self.uploads.finish(up)
        st = self.rounds[up.round_id]
        if not st.revealed:  # (after a reveal the sum has left and nothing is held)
            self._apply_stored(st, up.writer.material(), subtract=True)
        up.writer.abort()
        event(log, "upload_aborted", logging.WARNING, party=self.id, round=up.round_id, client=up.client,
              report=up.report, received=up.received, reason=why)

    def _drop_uploads(self, round_id: int) -> None:
        """A close is starting: uploads of that round still in progress cannot count (their clients retry)."""
        active, queued = self.uploads.drop_round(round_id)
        for up in active:
            self._abort(up, f"round {round_id} is closing")
        for q in queued:
            self.reply_error(*q.token, RoundStateError(f"round {round_id} is closing"))

    def tick(self) -> None:
        if self.unsynced and (len(self.unsynced) > 1 or len(next(iter(self.unsynced.values()))) >= self.max_group
                              or not self.sock.poll(0, zmq.POLLIN)):
            self._sync_and_ack()  # nothing else queued (or enough waiting): one fsync for them all
        self._schedule()

    # --- group commit: a report is acknowledged only after an fsync that covers it ---------------

    def _ack_when_durable(self, st: _Round, identity: str, msg: Message, meta: dict[str, Any]) -> None:
        self.unsynced.setdefault(st.dir, []).append((self._routing_id, identity, msg, meta))
        return None

    def _sync_and_ack(self) -> None:
        """fsync every round log with sealed, unacknowledged reports, then send their acknowledgements."""
        pending, self.unsynced = self.unsynced, {}
        for rdir, acks in pending.items():
            self.store.sync(rdir)
            for routing_id, identity, msg, meta in acks:
                self.answer(routing_id, identity, msg, lambda m=meta: (MsgType.OK, m, []))

    def _on_close(self, identity: str, msg: Message) -> tuple[MsgType, dict[str, Any], list[Any]]:
        if identity != "coordinator":
            raise AuthError("only the coordinator closes rounds")
        extra = set(msg.meta) - {"round", "session", "deadline", "rid"}
        if extra:  # e.g. a cohort or client list: the parties alone decide who counts
            raise RefusedError(f"close takes only a round id, not {sorted(extra)}: the parties choose the cohort")
        r = require(msg.meta, "round", int)
        session = require(msg.meta, "session", str)
        left = float(require(msg.meta, "deadline", (int, float))) - time.time()
        if not left > 0:  # e.g. delivered late after a network cut: the coordinator has given up on it
            raise RoundStateError(f"close request for round {r} arrived after its deadline; ignored")
        self._sync_and_ack()  # every report the close may count is durable and acknowledged first
        self._drop_uploads(r)  # and no partial upload is in the sum share that may leave
        self.comm.timeout_s = min(left, self.peer_timeout_s)  # give up when the coordinator does
        if self.provider is not None:  # and tell it why a dealer failure happened, while it still listens
            self.provider.deadline = time.monotonic() + left
        st = self.rounds.get(r)
        t0, bytes0 = time.monotonic(), self.comm.comm_bytes
        event(log, "close_start", party=self.id, round=r, session=session, timeout_s=round(self.comm.timeout_s, 1))
        # Every party runs the agreement even when it will refuse, so that all refuse together.
        activate(self.comm, self.provider, f"close:{r}:{session}")
        status = torch.zeros(8, dtype=torch.int64)  # open, revealed, floor, spec digest (4), has a dealer
        if st is not None:
            status[0] = 1
            status[1] = int(st.revealed)
            status[2] = self.cfg.min_clients
            status[3:7] = torch.from_numpy(np.frombuffer(bytes.fromhex(st.digest), dtype=np.int64).copy())
        status[7] = int(self.provider is not None)
        statuses = self.comm.all_gather(status)
        if any(int(s[0]) == 0 for s in statuses):
            missing = [j for j, s in enumerate(statuses) if int(s[0]) == 0]
            raise RoundStateError(f"round {r} is not open at parties {missing}")
        if any(int(s[1]) for s in statuses):
            raise AlreadyRevealedError(f"round {r} was already revealed")
        if any(not torch.equal(s[3:7], statuses[0][3:7]) for s in statuses):
            raise SpecMismatchError(f"parties hold different specs for round {r}: refusing to reveal")
        if st is None:  # unreachable after the status check; keeps the type narrow
            raise RoundStateError(f"round {r} is not open")
        peers = CohortSteps(self.comm, self.store, self.id, self.k, st)
        cohort, rejected = peers.screen(peers.intersect(), session, dealer=all(int(s[7]) for s in statuses))
        floor = max([st.spec.min_clients] + [int(s[2]) for s in statuses])
        if len(cohort) < floor:
            raise CohortTooSmallError(
                f"round {r}: {len(cohort)} reports are held by every party, the floor is {floor}; nothing revealed")
        for h in set(st.reports) - set(cohort):  # reports some other party never got
            self._apply_stored(st, st.stored[h], subtract=True)
        from crypten.mpc.primitives import ArithmeticSharedTensor

        held = ArithmeticSharedTensor.from_shares(torch.from_numpy(st.total), precision=0)
        st.revealed = True
        self.store.mark_revealed(st.dir, cohort, st.reports)
        st.total = np.zeros(0, dtype=np.int64)  # the sum share leaves with this reply; keep nothing
        st.stored.clear()
        clients = sorted(st.reports[h] for h in cohort)
        stats = {"close_s": round(time.monotonic() - t0, 4), "peer_bytes": self.comm.comm_bytes - bytes0}
        event(log, "reveal", party=self.id, round=r, cohort=len(cohort),
              dropped=len(st.reports) - len(cohort) - len(rejected), rejected=len(rejected), **stats)
        share = held.share.numpy()
        meta = {"round": r, "party": self.id, "cohort": cohort, "clients": clients,
                "rejected": sorted(st.reports[h] for h in rejected), "stats": stats}
        # several frames (views, no copy): CURVE then seals frame by frame, not one d-sized copy
        step = max(self.chunk_values, -(-share.size // MAX_PAYLOADS))
        return MsgType.SUM_SHARE, meta, sum_share_frames(share, st.spec.ring_bits, step)


def run_party(config: str | os.PathLike[str], party_id: int) -> int:
    """Entry point of ``mpc-agg party``: serve until SIGTERM/SIGINT, then exit 0."""
    dep = Deployment.load(config)
    party = Party(dep, party_id)
    signal.signal(signal.SIGTERM, party.stop)
    signal.signal(signal.SIGINT, party.stop)
    party.serve()
    return 0

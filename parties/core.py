"""One party's protocol logic with no sockets: requests in, replies out (docs/PROTOCOL.md).

:class:`PartyCore` handles every request a party serves, in every round state, over
three seams: an ``outbox`` for replies sent later (a :class:`~mpc_agg.service.ReplyTo`
token each: queued uploads, group-committed acknowledgements), a :class:`PeerLink` to
the other parties for the close, and the round store on disk.  parties/party.py wires
it to ZeroMQ; parties/inprocess.py runs k of them in one process, as the tests do.
Its rooms: the round table (parties/rounds.py), the running sums (parties/running_sum.py),
the upload scheduler (parties/uploads.py), group commit (parties/group_commit.py) and
the close agreement (parties/agreement.py, parties/cohort.py).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

import torch

from mpc_agg.bulk import TAG_BYTES, UploadSeal, new_key
from mpc_agg.config import PartyConfig
from mpc_agg.crypten_glue import import_crypten
from mpc_agg.errors import AuthError, DuplicateReportError, MpcAggError, RefusedError, RoundStateError, WireError
from mpc_agg.logs import event
from mpc_agg.ring import add_chunk, chunk_nbytes, report_nbytes, sum_share_frames
from mpc_agg.service import Reply, ReplyTo, Request
from mpc_agg.sharing import SEED_BYTES
from mpc_agg.spec import RoundSpec
from mpc_agg.store import RoundStore
from mpc_agg.trust import check_party_consent
from mpc_agg.wire import INLINE_MAX, MAX_PAYLOADS, MsgType, require
from parties.agreement import CloseStatus, Collective, agree
from parties.cohort import CohortSteps
from parties.group_commit import GroupCommit
from parties.rounds import Phase, RoundTable
from parties.running_sum import HeldRound
from parties.uploads import Upload, UploadLimits, UploadScheduler

__all__ = ["PartyCore", "PeerLink", "Outbox"]

log = logging.getLogger("mpc_agg.party")
Outbox = Callable[[ReplyTo, "Reply | MpcAggError"], None]


class PeerLink(Protocol):
    """The other parties, as the close sees them."""

    has_dealer: bool

    def begin(self, tag: str, seconds: float) -> Collective:
        """Start the close's session ``tag`` (CrypTen's, in a process); give up after ``seconds``."""

    def bytes_sent(self) -> int:
        """Bytes sent to the other parties so far."""


class PartyCore:
    """Party ``party_id`` of ``k``: its handlers (:attr:`handlers`), its periodic work (:meth:`tick`)."""

    chunk_values = 1 << 20  # values per upload chunk (8 MiB; even, for keystream block alignment)

    def __init__(self, cfg: PartyConfig, party_id: int, k: int, *, peers: PeerLink, outbox: Outbox,
                 upload_limits: UploadLimits | None = None, max_group: int = 64) -> None:
        self.cfg, self.id, self.k, self.is_leader = cfg, party_id, k, party_id == 0
        self.peers, self.outbox = peers, outbox
        self.store = RoundStore(cfg.state_dir)
        self.table = RoundTable(self.store, party_id, k, cfg.max_reports)
        self.uploads: UploadScheduler[ReplyTo] = UploadScheduler(upload_limits or UploadLimits())
        self.commit = GroupCommit(self.store, max_group)
        self.now: Callable[[], float] = time.monotonic  # upload timeouts
        self.wall: Callable[[], float] = time.time  # deadlines stated by clients and the coordinator
        self.table.recover()
        import_crypten()
        self.handlers: dict[MsgType, Callable[[Request], Reply | None]] = {
            MsgType.GET_SPEC: self.on_get_spec,
            MsgType.OPEN_ROUND: self.on_open,
            MsgType.REPORT: self.on_report,
            MsgType.REPORT_BEGIN: self.on_begin,
            MsgType.CLOSE_ROUND: self.on_close,
            MsgType.STATUS: self.on_status,
        }
        self.bulk_handlers: dict[MsgType, Callable[[Request], Reply | None]] = {MsgType.REPORT_CHUNK: self.on_chunk}

    # --- rounds ------------------------------------------------------------------------------
    def on_status(self, req: Request) -> Reply:
        return MsgType.STATUS, {"party": self.id, "leader": self.is_leader, "rounds": self.table.summary(),
                                "min_clients": self.cfg.min_clients}, []

    def on_get_spec(self, req: Request) -> Reply:
        st = self.table.get(req.meta)
        return MsgType.SPEC, {"spec": st.spec.to_json(), "digest": st.digest, "party": self.id}, []

    def on_open(self, req: Request) -> Reply:
        if req.identity != "coordinator":
            raise AuthError("only the coordinator opens rounds")
        spec = RoundSpec.from_json(require(req.meta, "spec", dict))
        if self.table.phase(spec.round_id) is Phase.ABSENT:
            check_party_consent(spec, parties=self.k, allow_verify_norm=self.cfg.allow_verify_norm,
                                has_dealer=self.peers.has_dealer, who=f"party {self.id}")
        st, _ = self.table.open(spec)
        return MsgType.OK, {"digest": st.digest}, []

    # --- reports -----------------------------------------------------------------------------
    def on_report(self, req: Request) -> None:
        """A whole report, acknowledged after the next fsync: one 32-byte seed, or at the report's dense
        party a dense share of at most INLINE_MAX bytes (larger ones come in chunks: REPORT_BEGIN)."""
        st, client, report_hex, dense = self.table.check_report(req.identity, req.meta, dense=False)
        if self.uploads.busy(client) or self.uploads.has(report_hex):  # (counted once it completes)
            raise DuplicateReportError("this client or report id has an upload queued or in progress here")
        payload, bits, dim = req.msg.payloads[0], st.spec.ring_bits, st.spec.dim
        if dense:
            if report_nbytes(bits, dim) > INLINE_MAX:
                raise WireError(f"party {self.id} takes report {report_hex}'s dense share in chunks (REPORT_BEGIN)")
            if payload.nbytes != report_nbytes(bits, dim):
                raise WireError(f"a dense report of this round is {report_nbytes(bits, dim)} bytes")
            stored = self.store.add_report(st.dir, report_hex, client, payload, "dense", sync=False)
            add_chunk(st.total, payload, bits, dim, 0, dim + 1)
        else:
            if payload.nbytes != SEED_BYTES:
                raise WireError(f"a seed report is one seed of {SEED_BYTES} bytes")
            stored = self.store.add_report(st.dir, report_hex, client, payload, "seed", sync=False)
            self.table.sums.add_seed(st, client, report_hex, bytes(payload))
        self.table.acknowledge(st, client, report_hex, stored)
        self.commit.defer(st.dir, req.reply_to, {"report_id": report_hex})

    # Chunked uploads of the reports whose dense party this is (mpc_agg.sharing.dense_party; any party),
    # through parties/uploads.py: slots, queue, limits.  REPORT_BEGIN is
    # answered when the upload gets a slot; others wait in a FIFO queue that holds no payload.
    # Chunks are added to the sum and written at their offsets as they arrive, in order; the
    # last one seals the record, acknowledged after the next group fsync.

    def on_begin(self, req: Request) -> Reply | None:
        st, client, report_hex, _ = self.table.check_report(req.identity, req.meta, dense=True)
        self.schedule()  # free what has expired before judging this one
        now = self.now()
        stated = now + (float(req.meta["deadline"]) - self.wall())
        up = self.uploads.offer(req.reply_to, st.spec.round_id, client, report_hex,
                                report_nbytes(st.spec.ring_bits, st.spec.dim),
                                client_deadline=stated, now=now)
        return None if up is None else self._start(st, up)  # None: queued, answered by schedule()

    def _start(self, st: HeldRound, up: Upload) -> Reply:
        up.writer = self.store.begin_report(st.dir, up.report, up.client, up.size, "dense")
        key = new_key()  # this upload's alone, sent over CURVE (mpc_agg.bulk)
        up.seal = UploadSeal(key, st.spec.round_id, bytes.fromhex(up.report))
        return MsgType.OK, {"report_id": up.report, "chunk": self.chunk_values, "key": key.hex()}, []

    def on_chunk(self, req: Request) -> Reply | None:
        """A sealed chunk from the bulk endpoint.  Its sender is unauthenticated until the chunk opens
        under the upload's key, so a refused chunk leaves the upload as it was (it times out if its
        client stops)."""
        report_hex = req.meta["report_id"]
        up = self.uploads.get(report_hex)
        if up is None:
            raise RoundStateError("no upload of this report is in progress")
        st = self.table.rounds[up.round_id]
        count = min(self.chunk_values, st.spec.dim + 1 - up.received)
        bits, sealed = st.spec.ring_bits, req.msg.payloads[0]
        if req.meta["offset"] != up.received or sealed.nbytes != TAG_BYTES + chunk_nbytes(
                bits, st.spec.dim, up.received, count):
            raise WireError(f"expected the chunk at {up.received} of {count} values")
        chunk = up.seal.open_chunk(up.received, count, sealed)  # SealError: altered, moved or replayed
        up.writer.write(chunk)  # logged as it came (4 bytes a coordinate in a 32-bit round)
        add_chunk(st.total, chunk, bits, st.spec.dim, up.received, count)
        self.uploads.progress(up, count, self.now())
        done = up.received == st.spec.dim + 1
        ack = {"report_id": report_hex, "next": up.received, "done": done,
               "tag": up.seal.ack_tag(up.received, done)}
        if not done:
            return MsgType.OK, ack, []
        try:  # e.g. the round filled up, or the client's report arrived otherwise, while this one uploaded
            self.table.check_fresh(st, up.client, report_hex)
        except MpcAggError as exc:
            self._abort(up, f"refused when complete: {exc}")
            raise
        stored = up.writer.commit(sync=False)
        self.uploads.finish(up)
        self.table.acknowledge(st, up.client, report_hex, stored)
        self.schedule()
        self.commit.defer(st.dir, req.reply_to, ack)
        return None

    def schedule(self) -> None:
        """Cut off uploads past a limit, then give free slots to queued requests, in order."""
        for up, why in self.uploads.expired(self.now()):
            self._abort(up, why)
        admitted, gone = self.uploads.admit(self.now())
        for q in gone:
            self.outbox(q.token, RoundStateError("waited too long for an upload slot; try again"))
        for q, up in admitted:
            st = self.table.rounds.get(q.round_id)
            try:
                if st is None or st.revealed:
                    raise RoundStateError(f"round {q.round_id} is closed")
                self.table.check_fresh(st, q.client, q.report)
            except MpcAggError as exc:
                self.uploads.finish(up)
                self.outbox(q.token, exc)
                continue
            self.outbox(q.token, self._start(st, up))

    def _abort(self, up: Upload, why: str) -> None:
        """Take an unfinished upload back out of the sum; its record stays unfinished (skipped on load)."""
        self.uploads.finish(up)
        st = self.table.rounds[up.round_id]
        if not st.revealed:  # (after a reveal the sum has left and nothing is held)
            self.table.sums.apply_stored(st, up.writer.material(), subtract=True)
        up.writer.abort()
        event(log, "upload_aborted", logging.WARNING, party=self.id, round=up.round_id, client=up.client,
              report=up.report, received=up.received, reason=why)

    def tick(self, *, idle: bool) -> None:
        """Periodic work: one fsync for waiting acknowledgements (when ``idle`` or enough wait), timeouts."""
        if self.commit.due(idle=idle):
            self.sync_and_ack()
        self.schedule()

    def sync_and_ack(self) -> None:
        for to, meta in self.commit.flush():
            self.outbox(to, (MsgType.OK, meta, []))

    # --- close -------------------------------------------------------------------------------
    def on_close(self, req: Request) -> Reply:
        """Agree on the cohort with the other parties and hand the coordinator this party's sum share."""
        if req.identity != "coordinator":
            raise AuthError("only the coordinator closes rounds")
        extra = set(req.meta) - {"round", "session", "deadline", "rid"}
        if extra:  # e.g. a cohort or client list: the parties alone decide who counts
            raise RefusedError(f"close takes only a round id, not {sorted(extra)}: the parties choose the cohort")
        r = require(req.meta, "round", int)
        session = require(req.meta, "session", str)
        left = float(require(req.meta, "deadline", (int, float))) - self.wall()
        if not left > 0:  # e.g. delivered late after a network cut: the coordinator has given up on it
            raise RoundStateError(f"close request for round {r} arrived after its deadline; ignored")
        self.sync_and_ack()  # every report the close may count is durable and acknowledged first
        active, queued = self.uploads.drop_round(r)  # and no partial upload is in the share that leaves
        for up in active:
            self._abort(up, f"round {r} is closing")
        for q in queued:
            self.outbox(q.token, RoundStateError(f"round {r} is closing"))
        return self._agree_and_reveal(r, session, left)

    def _agree_and_reveal(self, r: int, session: str, left: float) -> Reply:
        st = self.table.rounds.get(r)
        t0, bytes0 = self.now(), self.peers.bytes_sent()
        event(log, "close_start", party=self.id, round=r, session=session, timeout_s=round(left, 1))
        coll = self.peers.begin(f"close:{r}:{session}", left)  # local: the first exchange is the status
        mine = CloseStatus.of(st, floor=self.cfg.min_clients, dealer=self.peers.has_dealer)
        out = agree(coll, r, st, mine, session, lambda held: CohortSteps(coll, self.store, self.id, self.k, held))
        st = out.round
        for h in set(st.reports) - set(out.cohort):  # reports another party never got, or rejected
            self.table.sums.apply_stored(st, st.stored[h], subtract=True)
        from crypten.mpc.primitives import ArithmeticSharedTensor  # the sum share, held as CrypTen's

        share = ArithmeticSharedTensor.from_shares(torch.from_numpy(self.table.reveal(st, out.cohort)),
                                                   precision=0).share.numpy()
        stats = {"close_s": round(self.now() - t0, 4), "peer_bytes": self.peers.bytes_sent() - bytes0}
        event(log, "reveal", party=self.id, round=r, cohort=len(out.cohort),
              dropped=len(st.reports) - len(out.cohort) - len(out.rejected), rejected=len(out.rejected), **stats)
        meta = {"round": r, "party": self.id, "cohort": out.cohort,
                "clients": sorted(st.reports[h] for h in out.cohort),
                "rejected": sorted(st.reports[h] for h in out.rejected), "stats": stats}
        # several frames (views, no copy): CURVE then seals frame by frame, not one d-sized copy
        step = max(self.chunk_values, -(-share.size // MAX_PAYLOADS))
        return MsgType.SUM_SHARE, meta, sum_share_frames(share, st.spec.ring_bits, step)


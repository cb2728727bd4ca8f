"""The whole protocol in one process, no network: an executable spec of docs/PROTOCOL.md.

k :class:`~parties.core.PartyCore` objects (the same code a party process runs), an
in-memory collective for the close (:class:`~parties.agreement.LocalGroup`), and the
client's and coordinator's steps written out plainly.  Every request goes through the
real envelope (mpc_agg.wire, encoded and decoded), the request schemas
(mpc_agg.messages) and the same dispatch as a party process (mpc_agg.service), so a
test here checks what a party on the network would answer, in milliseconds.
No dealer: the MPC checks of the close (weights, norms) need the process deployment.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mpc_agg.bulk import UploadSeal
from mpc_agg.config import PartyConfig
from mpc_agg.errors import MpcAggError
from mpc_agg.fixedpoint import decode_average, encode
from mpc_agg import messages
from mpc_agg.service import Reply, ReplyTo, Request, dispatch, new_counters
from mpc_agg.ring import add_sum_share, report_nbytes
from mpc_agg.sharing import ShareContext, dense_chunk, dense_party, new_seeds, seed_parties
from mpc_agg.spec import RoundSpec
from mpc_agg.wire import INLINE_MAX, MsgType, decode_message, encode_message
from parties.agreement import Collective, LocalGroup, LocalPeer
from parties.core import PartyCore
from parties.uploads import UploadLimits

__all__ = ["InProcess", "Answer"]

Answer = Reply | MpcAggError


class LocalPeers:
    """parties.core.PeerLink over one rank of a LocalGroup (no CrypTen session, no dealer)."""

    has_dealer = False

    def __init__(self, peer: LocalPeer) -> None:
        self.peer = peer

    def begin(self, tag: str, seconds: float) -> Collective:
        return self.peer

    def bytes_sent(self) -> int:
        return self.peer.comm_bytes


class InProcess:
    """``k`` parties whose state lives under ``root``; ``min_clients`` is every party's floor.  Dense shares of
    at most ``inline_max`` bytes go whole in a REPORT, as the client sends them (0: always in chunks)."""

    def __init__(self, root: Path, k: int = 3, *, min_clients: int = 1, chunk_values: int = 8,
                 upload_limits: UploadLimits | None = None, inline_max: int = INLINE_MAX) -> None:
        self.root, self.k, self.min_clients, self.chunk_values = root, k, min_clients, chunk_values
        self.inline_max = inline_max
        self.upload_limits = upload_limits
        self.group = LocalGroup(k)
        self.later: list[list[tuple[ReplyTo, Answer]]] = [[] for _ in range(k)]
        self.counters = new_counters()
        self._n = 0
        self.parties = [self._core(i) for i in range(k)]

    def _core(self, i: int) -> PartyCore:
        cfg = PartyConfig(i, "inproc://none", "inproc://none", "", None, self.min_clients,
                          self.root / f"party-{i}")
        core = PartyCore(cfg, i, self.k, peers=LocalPeers(self.group[i]),
                         outbox=lambda to, answer: self.later[i].append((to, answer)),
                         upload_limits=self.upload_limits)
        core.chunk_values = self.chunk_values  # small chunks: every upload takes several
        return core

    def restart(self, i: int) -> None:
        """Party ``i`` crashes (its memory is lost, its state directory kept) and starts again."""
        self.parties[i] = self._core(i)

    def request(self, party: int, identity: str, mtype: MsgType, meta: dict[str, Any],
                payloads: Sequence[Any] = ()) -> Answer | None:
        """One request to ``party`` as ``identity`` (``"bulk"``: on its bulk endpoint, where only sealed
        chunks are served): its answer, or None when it is answered later."""
        msg = decode_message(encode_message(mtype, meta, payloads))
        self._n += 1
        bulk = identity == messages.BULK
        req = Request(identity, msg, ReplyTo(b"%d" % self._n, meta.get("rid"), bulk))
        core = self.parties[party]
        answer = dispatch(core.bulk_handlers if bulk else core.handlers, req, validate=messages.validate_request,
                          counters=self.counters, name=f"party-{party}")
        if isinstance(answer, tuple):  # the reply as the requester checks it (its schema in REPLIES)
            messages.check_reply(mtype, decode_message(encode_message(answer[0], {**answer[1], "rid": None},
                                                                      answer[2])))
        return answer

    def settle(self, party: int) -> list[Answer]:
        """Let ``party`` run its periodic work (group commit, queue) and take the replies it sent later."""
        self.parties[party].tick(idle=True)
        out, self.later[party] = self.later[party], []
        return [answer for _, answer in out]

    # --- the coordinator's and a client's steps ------------------------------------------------
    def open(self, spec: RoundSpec) -> list[Answer | None]:
        meta = messages.request(MsgType.OPEN_ROUND, spec=spec.to_json())
        return [self.request(i, "coordinator", MsgType.OPEN_ROUND, meta) for i in range(self.k)]

    def submit(self, client: str, spec: RoundSpec, update: np.ndarray, weight: float = 1.0, *,
               parties: Sequence[int] | None = None, report_id: bytes | None = None) -> list[Answer | None]:
        """An honest client's report: encode, share, send (to ``parties`` only, default all): a seed to
        every party but the report's dense party (mpc_agg.sharing.dense_party), which gets the dense share
        whole in its REPORT or in sealed chunks.  The answers of each party in order (after its group commit)."""
        ring = np.empty(spec.dim + 1, dtype=np.int64)
        encode(update, spec.frac_bits, scale=weight, out=ring[:-1])
        encode([weight], spec.frac_bits, out=ring[-1:])
        report_id = os.urandom(16) if report_id is None else report_id
        dense = dense_party(spec, report_id, self.k)
        seeds = dict(zip(seed_parties(self.k, dense), new_seeds(self.k)))
        meta = messages.request(MsgType.REPORT, round=spec.round_id, client=client, report_id=report_id.hex(),
                                spec_digest=spec.digest())
        who, ctx = f"client:{client}", ShareContext(spec.round_id, client, report_id)
        answers: list[Answer | None] = []
        for i in range(self.k) if parties is None else parties:
            if i != dense or report_nbytes(spec.ring_bits, spec.dim) <= self.inline_max:
                payload = seeds[i] if i != dense else dense_chunk(ring.copy(), list(seeds.values()), ctx, start=0,
                                                                  dim=spec.dim, bits=spec.ring_bits, dense=i)
                answers.append(self.request(i, who, MsgType.REPORT, meta, [payload]) or self.settle(i)[-1])
                continue
            go = self.request(i, who, MsgType.REPORT_BEGIN, messages.request(MsgType.REPORT_BEGIN, **meta,
                                                                             deadline=time.time() + 30))
            if isinstance(go, MpcAggError) or go is None:
                answers.append(go)
                continue
            answers.append(self._chunks(i, spec, ring, list(seeds.values()), ctx, go[1]["key"]))
        return answers

    def _chunks(self, party: int, spec: RoundSpec, ring: np.ndarray, seeds: list[bytes], ctx: ShareContext,
                key: str) -> Answer | None:
        """The dense share, sealed chunk by chunk in the round's wire layout (mpc_agg.ring), to ``party``'s
        bulk endpoint: the last chunk's answer."""
        seal = UploadSeal(bytes.fromhex(key), spec.round_id, ctx.report_id)
        for start in range(0, ring.size, self.chunk_values):
            part = ring[start:start + self.chunk_values].copy()
            share = dense_chunk(part, seeds, ctx, start=start, dim=spec.dim, bits=spec.ring_bits, dense=party)
            chunk = messages.request(MsgType.REPORT_CHUNK, report_id=ctx.report_id.hex(), offset=start)
            last = self.request(party, messages.BULK, MsgType.REPORT_CHUNK, chunk,
                                [seal.seal_chunk(start, part.size, share)])
        return last or self.settle(party)[-1]

    def close(self, round_id: int, *, deadline_s: float = 10.0) -> list[Answer | None]:
        """Every party's answer to the coordinator's CLOSE_ROUND (they agree with each other at once)."""
        meta = messages.request(MsgType.CLOSE_ROUND, round=round_id, session=os.urandom(8).hex(),
                       deadline=time.time() + deadline_s)
        answers: list[Answer | None] = [None] * self.k

        def run(i: int) -> None:
            answers[i] = self.request(i, "coordinator", MsgType.CLOSE_ROUND, meta)
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(self.k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(deadline_s + 5)
        return answers

    @staticmethod
    def average(spec: RoundSpec, answers: Sequence[Answer | None]) -> np.ndarray:
        """The coordinator's step: add the sum shares (mpc_agg.ring), decode, divide by the total weight."""
        ring = np.zeros(spec.dim + 1, dtype=np.int64)
        for i, a in enumerate(answers):
            if not isinstance(a, tuple) or a[0] != MsgType.SUM_SHARE:
                raise MpcAggError(f"a party did not reveal: {a}")
            add_sum_share(ring, a[2], spec.ring_bits, f"party {i}")
        return decode_average(ring, spec.frac_bits, ring_bits=spec.ring_bits)[0]

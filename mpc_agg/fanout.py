"""Ask every party and collect: one request/reply link per party, answers gathered under one deadline.

Used by the client (spec fetch, helper uploads) and the coordinator (open, close, status).  A link
whose request timed out is closed and made again, so a party that comes back never acts on a request
its caller gave up on (e.g. a close) and its late answer never reaches a later wait.  Every answer is
awaited before the first error is raised, so one failing party does not leave the others' replies
queued behind the next request.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import zmq

from .config import PartyConfig
from .errors import AggregationTimeout, MpcAggError
from .transport import Requester, SecureContext
from .wire import Message, MsgType

__all__ = ["PartyLinks", "Pending"]

Pending = tuple[int, str]
"""A request in flight: (party index, request id)."""


class PartyLinks:
    """One :class:`Requester` per party, in party order (index i is party i)."""

    def __init__(self, connect: Callable[[int], Requester], parties: int) -> None:
        self._connect = connect
        self._links = [connect(i) for i in range(parties)]
        self._dropped_bytes = 0

    @classmethod
    def to_parties(cls, sctx: SecureContext, parties: Sequence[PartyConfig], *, public_key: str,
                   secret_key: str) -> "PartyLinks":
        """CURVE DEALER links from one identity (``public_key``/``secret_key``) to every party's client endpoint."""
        def connect(i: int) -> Requester:
            p = parties[i]
            return Requester(sctx.client(zmq.DEALER, p.client_endpoint, public_key=public_key,
                                         secret_key=secret_key, server_key=p.public_key))
        return cls(connect, len(parties))

    def __len__(self) -> int:
        return len(self._links)

    def __getitem__(self, i: int) -> Requester:
        return self._links[i]

    @property
    def bytes_sent(self) -> int:
        """Message bytes sent to all parties so far, over the links dropped after a timeout too."""
        return self._dropped_bytes + sum(r.bytes_sent for r in self._links)

    def send(self, i: int, mtype: MsgType, meta: dict[str, Any], payloads: Sequence[Any] = ()) -> Pending:
        """Send one request to party ``i`` without waiting; :meth:`collect` gathers the answer."""
        return i, self._links[i].send(mtype, meta, payloads)

    def collect(self, pending: Sequence[Pending], deadline: float) -> list[Message]:
        """The answers to ``pending``, in its order, waiting until ``deadline`` (``time.monotonic``).

        A party that does not answer in time has its link made again.  Once every request is answered
        or timed out, the first error (a typed ``MpcAggError``, remote ones included) is raised."""
        answers: list[Message] = []
        errors: list[MpcAggError] = []
        for i, rid in pending:
            try:
                answers.append(self._links[i].wait(rid, deadline, f"party {i}"))
            except AggregationTimeout as exc:
                self._reconnect(i)
                errors.append(exc)
            except MpcAggError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return answers

    def ask_all(self, mtype: MsgType, meta: dict[str, Any], timeout_s: float) -> list[Message]:
        """Send the same request to every party at once and return every answer, in party order."""
        deadline = time.monotonic() + timeout_s
        return self.collect([self.send(i, mtype, meta) for i in range(len(self._links))], deadline)

    def _reconnect(self, i: int) -> None:
        """Drop party ``i``'s link with its unanswered request and make a fresh one."""
        old = self._links[i]
        old.sock.close(linger=0)
        self._dropped_bytes += old.bytes_sent
        self._links[i] = self._connect(i)

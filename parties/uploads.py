"""The upload scheduler of the party that takes dense shares: parallel slots, a FIFO queue, hard limits.

Pure bookkeeping (no sockets, no disk; time is passed in), so every limit is
tested in-process.  The rules (SECURITY.md, "Hostile clients: every limit"):

* a client has at most one upload queued or active at a time, whatever its report ids;
* at most ``slots`` uploads are active at once; further REPORT_BEGINs wait in a FIFO
  queue that holds metadata only (no payload: the schema forbids it) and at most one
  entry per allowlisted client;
* a queued request waits at most ``max_queue_s`` whatever deadline its client states;
* an active upload is cut off when no chunk arrives for ``idle_s``, and in any case
  ``grace_s + size / min_rate`` seconds after it started (a minimum rate), so a
  dripping client releases its slot in bounded time.

Why this cannot be starved: a client that misbehaves occupies at most one slot,
for at most the time above, and then goes to the back of the queue; with m
misbehaving keys and ``slots`` > m, ``slots`` − m slots keep serving the queue in
order, so an honest client waits at most for the honest uploads ahead of it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mpc_agg.errors import DuplicateReportError, RoundStateError

__all__ = ["UploadLimits", "Upload", "Queued", "UploadScheduler"]

T = TypeVar("T")


@dataclass(frozen=True)
class UploadLimits:
    """Every limit of the scheduler; defaults are the party's (documented in SECURITY.md)."""

    slots: int = 4
    idle_s: float = 5.0
    grace_s: float = 10.0
    min_rate: float = float(1 << 20)  # bytes per second
    max_queue_s: float = 60.0
    max_queued: int = 10_000

    def budget_s(self, size_bytes: int) -> float:
        """Longest an upload of ``size_bytes`` may hold a slot."""
        return self.grace_s + size_bytes / self.min_rate


@dataclass
class Upload:
    """An active upload: who, how far, and its deadlines (monotonic seconds)."""

    round_id: int
    client: str
    report: str
    size: int  # bytes of the whole share
    started: float
    last: float
    expires: float
    received: int = 0  # values received so far
    writer: Any = None  # the party's ReportWriter
    seal: Any = None  # its mpc_agg.bulk.UploadSeal


@dataclass
class Queued(Generic[T]):
    """A REPORT_BEGIN waiting for a slot; ``token`` lets the party answer it later."""

    token: T
    round_id: int
    client: str
    report: str
    size: int
    deadline: float  # monotonic: the earlier of the client's own and max_queue_s


@dataclass
class UploadScheduler(Generic[T]):
    limits: UploadLimits = field(default_factory=UploadLimits)
    active: dict[str, Upload] = field(default_factory=dict)  # report id -> upload
    queue: collections.deque[Queued[T]] = field(default_factory=collections.deque)

    def busy(self, client: str) -> bool:
        return any(u.client == client for u in self.active.values()) or any(q.client == client for q in self.queue)

    def offer(self, token: T, round_id: int, client: str, report: str, size: int, *, client_deadline: float,
              now: float) -> Upload | None:
        """A new REPORT_BEGIN: the upload if a slot is free, None if queued.  Refuses a second upload
        of the same client and a full queue."""
        if self.busy(client):
            raise DuplicateReportError(f"client {client!r} already has an upload queued or in progress")
        if self.has(report):
            raise DuplicateReportError("that report id is already being uploaded")
        if len(self.active) < self.limits.slots and not self.queue:
            return self._start(round_id, client, report, size, now)
        if len(self.queue) >= self.limits.max_queued:
            raise RoundStateError("the upload queue is full; try again later")
        self.queue.append(Queued(token, round_id, client, report, size,
                                 min(client_deadline, now + self.limits.max_queue_s)))
        return None

    def _start(self, round_id: int, client: str, report: str, size: int, now: float) -> Upload:
        up = Upload(round_id, client, report, size, now, now, now + self.limits.budget_s(size))
        self.active[report] = up
        return up

    def has(self, report: str) -> bool:
        """Whether an upload of ``report`` is queued or active."""
        return report in self.active or any(q.report == report for q in self.queue)

    def get(self, report: str) -> Upload | None:
        """The active upload of ``report`` (its chunks' sender is proven by the upload key, not here)."""
        return self.active.get(report)

    def progress(self, up: Upload, values: int, now: float) -> None:
        up.received += values
        up.last = now

    def finish(self, up: Upload) -> None:
        """The upload ended (complete or aborted): its slot is free."""
        self.active.pop(up.report, None)

    def expired(self, now: float) -> list[tuple[Upload, str]]:
        """Active uploads past a limit, with the reason; they leave their slots."""
        out = []
        for up in list(self.active.values()):
            if now - up.last > self.limits.idle_s:
                out.append((up, f"no chunk for {self.limits.idle_s:g} s"))
            elif now > up.expires:
                out.append((up, f"slower than {self.limits.min_rate / (1 << 20):g} MiB/s"))
        for up, _ in out:
            self.finish(up)
        return out

    def admit(self, now: float) -> tuple[list[tuple[Queued[T], Upload]], list[Queued[T]]]:
        """Fill free slots from the queue in order: (admitted, given up).  Requests past their
        deadline anywhere in the queue are given up (their clients have stopped waiting)."""
        gone = [q for q in self.queue if now >= q.deadline]
        if gone:
            self.queue = collections.deque(q for q in self.queue if now < q.deadline)
        admitted = []
        while self.queue and len(self.active) < self.limits.slots:
            q = self.queue.popleft()
            admitted.append((q, self._start(q.round_id, q.client, q.report, q.size, now)))
        return admitted, gone

    def drop_round(self, round_id: int) -> tuple[list[Upload], list[Queued[T]]]:
        """A close of ``round_id`` starts: its active uploads and queued requests end."""
        ups = [u for u in self.active.values() if u.round_id == round_id]
        for up in ups:
            self.finish(up)
        queued = [q for q in self.queue if q.round_id == round_id]
        self.queue = collections.deque(q for q in self.queue if q.round_id != round_id)
        return ups, queued

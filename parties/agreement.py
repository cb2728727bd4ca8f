"""The close agreement between the parties, pure: over any :class:`Collective` (docs/PROTOCOL.md, "Close").

Every party runs the same steps, in order, even when it will refuse, so that all
refuse together:

1. all-gather a :class:`CloseStatus` (round open? already revealed? floor, spec digest,
   has a dealer, and the report ids it holds) and refuse unless every party holds the
   same open, unrevealed round;
2. intersect the report ids (only reports every party holds can be summed);
3. screen the intersection by the MPC checks (parties.cohort), which only reveal one
   bit per report;
4. refuse below the highest floor (the spec's and every party's ``min_clients``).

Steps 1 and 2 take one exchange.  The process plugs in its ZeroMQ communicator; tests
and parties/inprocess.py plug in :class:`LocalGroup`, an in-memory fake, and run the
whole protocol in one process.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from mpc_agg.errors import (AggregationTimeout, AlreadyRevealedError, CohortTooSmallError, RoundStateError,
                            SpecMismatchError, WireError)
from parties.running_sum import HeldRound

__all__ = ["Collective", "CloseStatus", "Outcome", "Screen", "agree", "LocalGroup"]


class Collective(Protocol):
    """What the close needs from the other parties: ZmqCommunicator in a process, LocalGroup in tests.
    ``all_gather`` takes tensors of different lengths at different parties."""

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]: ...

    def send(self, tensor: torch.Tensor, dst: int) -> None: ...

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class CloseStatus:
    """One party's view of the round being closed, exchanged first: 8 int64 values, then two per
    report id it holds (16 bytes each; none unless the round is open and unrevealed here)."""

    open: bool
    revealed: bool = False
    floor: int = 0
    digest: str = "00" * 32
    dealer: bool = False
    reports: tuple[str, ...] = ()

    @classmethod
    def of(cls, st: HeldRound | None, *, floor: int, dealer: bool) -> "CloseStatus":
        if st is None:
            return cls(False, dealer=dealer)
        return cls(True, st.revealed, floor, st.digest, dealer, () if st.revealed else tuple(sorted(st.reports)))

    def to_tensor(self) -> torch.Tensor:
        digest = np.frombuffer(bytes.fromhex(self.digest), dtype="<i8")
        head = np.array([int(self.open), int(self.revealed), self.floor, *digest, int(self.dealer)], dtype=np.int64)
        ids = np.frombuffer(b"".join(bytes.fromhex(h) for h in self.reports), dtype="<i8")
        return torch.from_numpy(np.concatenate([head, ids]).astype(np.int64))

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "CloseStatus":
        if t.dtype != torch.int64 or t.dim() != 1 or t.numel() < 8 or t.numel() % 2:
            raise WireError("malformed close status from a party")
        v = t[:8].tolist()
        if any(x not in (0, 1) for x in (v[0], v[1], v[7])) or v[2] < 0:
            raise WireError("malformed close status from a party")
        raw = t[8:].numpy().astype("<i8").tobytes()
        ids = tuple(raw[i:i + 16].hex() for i in range(0, len(raw), 16))
        return cls(bool(v[0]), bool(v[1]), v[2], np.array(v[3:7], dtype="<i8").tobytes().hex(), bool(v[7]), ids)


@dataclass(frozen=True)
class Outcome:
    """What the parties agreed on ``round``: the reports summed, and those the MPC checks rejected."""

    round: HeldRound
    cohort: list[str]
    rejected: list[str]


class Screen(Protocol):
    """The close's MPC checks at one party (parties.cohort.CohortSteps)."""

    def screen(self, cohort: list[str], session: str, *, dealer: bool) -> tuple[list[str], list[str]]: ...


def check_statuses(statuses: list[CloseStatus], round_id: int) -> None:
    """Refuse unless every party holds round ``round_id`` open, unrevealed, under the same spec."""
    missing = [j for j, s in enumerate(statuses) if not s.open]
    if missing:
        raise RoundStateError(f"round {round_id} is not open at parties {missing}")
    if any(s.revealed for s in statuses):
        raise AlreadyRevealedError(f"round {round_id} was already revealed")
    if len({s.digest for s in statuses}) != 1:
        raise SpecMismatchError(f"parties hold different specs for round {round_id}: refusing to reveal")


def agree(coll: Collective, round_id: int, st: HeldRound | None, mine: CloseStatus, session: str,
          steps: Callable[[HeldRound], Screen]) -> Outcome:
    """Steps 1-4 above at one party; every party calls it with the same ``round_id`` and ``session``."""
    statuses = [CloseStatus.from_tensor(t) for t in coll.all_gather(mine.to_tensor())]
    check_statuses(statuses, round_id)
    if st is None:  # unreachable after the status check; keeps the type narrow
        raise RoundStateError(f"round {round_id} is not open")
    held = sorted(set.intersection(*(set(s.reports) for s in statuses)))
    cohort, rejected = steps(st).screen(held, session, dealer=all(s.dealer for s in statuses))
    floor = max([st.spec.min_clients] + [s.floor for s in statuses])
    if len(cohort) < floor:
        raise CohortTooSmallError(
            f"round {round_id}: {len(cohort)} reports are held by every party, the floor is {floor}; nothing revealed")
    return Outcome(st, cohort, rejected)


class LocalGroup:
    """In-memory :class:`Collective` for ``k`` parties in one process (one thread each): ``group[i]``."""

    def __init__(self, k: int, timeout_s: float = 10.0) -> None:
        self.k, self.timeout_s = k, timeout_s
        self.queues: dict[tuple[int, int], queue.SimpleQueue[torch.Tensor]] = {
            (i, j): queue.SimpleQueue() for i in range(k) for j in range(k) if i != j}

    def __getitem__(self, rank: int) -> "LocalPeer":
        return LocalPeer(self, rank)


@dataclass
class LocalPeer:
    group: LocalGroup
    rank: int
    comm_bytes: int = 0

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.comm_bytes += tensor.numel() * tensor.element_size()
        self.group.queues[self.rank, dst].put(tensor.clone())

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        if src is None:
            raise WireError("LocalPeer.recv needs a source")
        tensor.copy_(self._take(src).reshape(tensor.shape))
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        for j in range(self.group.k):
            if j != self.rank:
                self.send(tensor, j)
        return [tensor.clone() if j == self.rank else self._take(j) for j in range(self.group.k)]

    def _take(self, src: int) -> torch.Tensor:
        try:
            return self.group.queues[src, self.rank].get(timeout=self.group.timeout_s)
        except queue.Empty:
            raise AggregationTimeout(f"party {self.rank}: nothing from party {src}") from None

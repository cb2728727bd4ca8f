"""The rounds one party holds, their states, and the checks a report passes (docs/PROTOCOL.md, "Round states").

A round at a party is *absent*, *open* (taking reports) or *revealed* (its sum share
has left; round ids are never reused).  Every transition is written to the round's
directory (mpc_agg.store) before it is acknowledged, so :meth:`RoundTable.recover`
rebuilds the same table after a crash or restart.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import numpy as np

from mpc_agg.errors import (AlreadyRevealedError, DuplicateReportError, RoundStateError, SpecMismatchError,
                            WireError)
from mpc_agg.logs import event
from mpc_agg.service import reporting_client
from mpc_agg.sharing import dense_party
from mpc_agg.spec import RoundSpec
from mpc_agg.store import RoundStore, StoredReport
from mpc_agg.wire import require
from parties.running_sum import HeldRound, RunningSum

__all__ = ["Phase", "RoundTable"]

log = logging.getLogger("mpc_agg.party")


class Phase(enum.Enum):
    """A round's state at one party."""

    ABSENT = "absent"
    OPEN = "open"
    REVEALED = "revealed"


class RoundTable:
    """Party ``party`` of ``k``: its rounds, by id, and every report id it has ever accepted."""

    def __init__(self, store: RoundStore, party: int, k: int, max_reports: int) -> None:
        self.store, self.party, self.k, self.max_reports = store, party, k, max_reports
        self.sums = RunningSum(store, party)
        self.rounds: dict[int, HeldRound] = {}
        self.seen_report_ids: set[str] = set()

    def phase(self, round_id: int) -> Phase:
        st = self.rounds.get(round_id)
        return Phase.ABSENT if st is None else Phase.REVEALED if st.revealed else Phase.OPEN

    def recover(self) -> None:
        """Reload every round and acknowledged report from disk, re-adding the open rounds' shares."""
        for stored in self.store.load():
            spec = stored.spec
            st = HeldRound(spec, spec.digest(), stored.dir,
                           np.zeros(0, np.int64) if stored.revealed else RunningSum.empty(spec),
                           revealed=stored.revealed)
            for rep in stored.reports:
                if not stored.revealed:
                    self.sums.apply_stored(st, rep)
                    st.stored[rep.report] = rep
                st.reports[rep.report] = rep.client
                st.clients.add(rep.client)
                self.seen_report_ids.add(rep.report)
            self.rounds[spec.round_id] = st
            event(log, "recovered", party=self.party, round=spec.round_id, reports=len(stored.reports),
                  revealed=stored.revealed, torn_tail=stored.torn)

    def get(self, meta: dict[str, Any]) -> HeldRound:
        """The round ``meta["round"]`` names, open or revealed."""
        r = require(meta, "round", int)
        if r not in self.rounds:
            raise RoundStateError(f"party {self.party}: round {r} is not open")
        return self.rounds[r]

    def open(self, spec: RoundSpec) -> tuple[HeldRound, bool]:
        """Open ``spec``'s round (idempotent for the same spec): (the round, whether it is new)."""
        digest = spec.digest()
        existing = self.rounds.get(spec.round_id)
        if existing is not None:
            if existing.revealed:
                raise AlreadyRevealedError(f"round {spec.round_id} was already revealed; round ids are never reused")
            if existing.digest != digest:
                raise RoundStateError(f"round {spec.round_id} is already open with a different spec")
            return existing, False
        if self.store.is_revealed(spec.round_id):
            raise AlreadyRevealedError(f"round {spec.round_id} was already revealed; round ids are never reused")
        st = HeldRound(spec, digest, self.store.create_round(spec), RunningSum.empty(spec))
        self.rounds[spec.round_id] = st
        event(log, "open", party=self.party, round=spec.round_id, dim=spec.dim, digest=digest[:16])
        return st, True

    def check_report(self, identity: str, meta: dict[str, Any], *,
                     dense: bool) -> tuple[HeldRound, str, str, bool]:
        """The checks every new report passes before any of it is accepted: (round, client, report id,
        whether this party is its dense party).
        ``dense``: the report comes as a dense share in chunks (REPORT_BEGIN), refused unless this party is
        the report's dense party (mpc_agg.sharing.dense_party); a REPORT's handler checks its payload's
        kind itself (a seed, or here a small dense share)."""
        client = reporting_client(identity, meta)
        st = self.get(meta)
        if st.revealed:
            raise RoundStateError(f"round {st.spec.round_id} is closed")
        if require(meta, "spec_digest", str) != st.digest:
            raise SpecMismatchError(f"report for round {st.spec.round_id} was made for a different spec")
        report_hex = require(meta, "report_id", str)  # 32 lowercase hex characters (mpc_agg.messages)
        owner = dense_party(st.spec, bytes.fromhex(report_hex), self.k)
        if dense and owner != self.party:
            raise WireError(f"report {report_hex}'s dense share goes to party {owner}, not party {self.party}")
        self.check_fresh(st, client, report_hex)
        return st, client, report_hex, owner == self.party

    def check_fresh(self, st: HeldRound, client: str, report_hex: str) -> None:
        """Refuse a report the round cannot take now: its id used, its client in already, the round full.
        Checked when a report arrives, and again when an upload is admitted and when it completes, so no
        party ever holds more than its cap (a cohort is within every party's cap: the sum cannot wrap)."""
        if report_hex in self.seen_report_ids:
            raise DuplicateReportError(f"report id {report_hex} was already used")
        if client in st.clients:
            raise DuplicateReportError(f"client {client!r} already reported in round {st.spec.round_id}")
        cap = min(self.max_reports, st.spec.cohort_limit)
        if len(st.reports) >= cap:
            raise RoundStateError(f"round {st.spec.round_id} is full ({cap} reports)")

    def acknowledge(self, st: HeldRound, client: str, report_hex: str, stored: StoredReport) -> None:
        """A report is in the sum and sealed in the log (acknowledged to its client after the next fsync)."""
        st.stored[report_hex] = stored
        st.reports[report_hex] = client
        st.clients.add(client)
        self.seen_report_ids.add(report_hex)
        event(log, "report", party=self.party, round=st.spec.round_id, client=client, report=report_hex)

    def reveal(self, st: HeldRound, cohort: list[str]) -> np.ndarray:
        """Mark the round revealed on disk and hand out its sum share (the table keeps nothing of it)."""
        st.revealed = True
        self.store.mark_revealed(st.dir, cohort, st.reports)
        total, st.total = st.total, np.zeros(0, dtype=np.int64)
        st.stored.clear()
        return total

    def summary(self) -> dict[str, dict[str, Any]]:
        return {str(r): {"reports": len(st.reports), "revealed": st.revealed} for r, st in self.rounds.items()}

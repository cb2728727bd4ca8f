"""A party's running sum of one round's report shares: O(d) memory, whatever the number of reports.

A party holds reports of two kinds (mpc_agg.sharing, ``dense_party``): for those whose
dense party it is, it adds each dense share chunk as it arrives; for the others, it
expands the 32-byte seed into its share and adds it.  Every report's own material is
also in the round's log (mpc_agg.store), so a report can be subtracted again: an
aborted upload, or a report that another party never got (docs/PROTOCOL.md, "Close").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpc_agg.ring import add_chunk
from mpc_agg.sharing import ShareContext, accumulate_seed
from mpc_agg.spec import RoundSpec
from mpc_agg.store import RoundStore, StoredReport

__all__ = ["HeldRound", "RunningSum", "dense_here"]


def dense_here(rep: StoredReport) -> bool:
    """Whether stored report ``rep`` is a dense share (its record says), not a seed."""
    return rep.kind == "dense"


@dataclass
class HeldRound:
    """What a party holds of one round: its spec, its log, its reports and its share of their sum."""

    spec: RoundSpec
    digest: str
    dir: Path
    total: np.ndarray
    """this party's share of the sum of every held report (int64, d values and the weight; 32-bit shares
    sign-extended as they are added, mpc_agg.ring.add_chunk); empty once revealed"""
    reports: dict[str, str] = field(default_factory=dict)  # report id (hex) -> client id
    stored: dict[str, StoredReport] = field(default_factory=dict)  # where each report's material lies
    clients: set[str] = field(default_factory=set)
    revealed: bool = False


class RunningSum:
    """Adds and subtracts report shares into a round's ``total`` at party ``party`` (0: the leader)."""

    def __init__(self, store: RoundStore, party: int) -> None:
        self.store, self.party = store, party

    @staticmethod
    def empty(spec: RoundSpec) -> np.ndarray:
        return np.zeros(spec.dim + 1, dtype=np.int64)

    def add_seed(self, st: HeldRound, client: str, report_hex: str, seed: bytes, *, subtract: bool = False) -> None:
        """A seed's report: expand the seed into this party's share and add (or subtract) it."""
        ctx = ShareContext(st.spec.round_id, client, bytes.fromhex(report_hex))
        accumulate_seed(st.total, seed, ctx, self.party, subtract=subtract, bits=st.spec.ring_bits)

    def apply_stored(self, st: HeldRound, rep: StoredReport, *, subtract: bool = False) -> None:
        """Add (or subtract) one stored report's share, block by block from the log."""
        if not dense_here(rep):
            self.add_seed(st, rep.client, rep.report, self.store.read_material(st.dir, rep), subtract=subtract)
            return
        bits, dim = st.spec.ring_bits, st.spec.dim
        for start, count, block in self.store.iter_values(st.dir, rep, bits, dim):
            add_chunk(st.total, block, bits, dim, start, count, subtract=subtract)

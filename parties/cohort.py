"""The close's MPC checks on the reports every party holds (parties.agreement found them).

Run by every party at once inside the close's CrypTen session (docs: README "Verified
clipping", SECURITY.md, docs/wraptest.md): draw the wraparound tests' seed by
commit-then-reveal, and run the MPC checks (norms and projections in verified rounds,
weights otherwise) that split the cohort into accepted and rejected reports.  Only one
bit per report is revealed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

import numpy as np
import torch

from mpc_agg import wraptest
from mpc_agg.errors import RefusedError
from mpc_agg.normcheck import check_weights, verify_norms
from mpc_agg.ring import chunk_nbytes, widen_chunk
from mpc_agg.sharing import ShareContext, expand_seed
from mpc_agg.store import RoundStore
from parties.agreement import Collective
from parties.running_sum import HeldRound, dense_here

__all__ = ["CohortSteps"]

REPLICATED_PROJECTS = ((False, False), (True, True), (False, True))
"""k = 3: which held shares each party projects (own, next), mpc_agg.normcheck: party 1 s_1 + s_2,
party 2 the leader's s_0 as it arrives, the leader none (it reads and encrypts those rows)."""
REPLICATED_CHUNK = 1 << 18
"""k = 3: ring elements per chunk of the norm loop (2 MB per array, so a chunk's read, square and
projection stay in cache: about 10% less party CPU per verified close than 2**21 at n = 10, d = 10**6)."""
LEADER_WINDOW = 8
"""k = 3: chunks of its share the leader may send party 2 before party 2 acknowledges one (16 MB)."""


class CohortSteps:
    """The steps of one close at party ``party`` of ``k``, over ``comm`` (all parties call them in order)."""

    def __init__(self, comm: Collective, store: RoundStore, party: int, k: int, st: HeldRound) -> None:
        self.comm, self.store, self.party, self.k, self.st = comm, store, party, k, st

    def _wrap_seed(self, session: str) -> bytes:
        """The wraparound tests' public seed, drawn now that the reports are fixed, by commit-then-reveal:
        every party commits to 32 random bytes, then reveals them; a wrong reveal is refused."""
        mine = os.urandom(32)
        context = f"{self.st.spec.round_id}:{session}".encode()

        def commitment(party: int, value: bytes) -> bytes:
            return hashlib.sha256(b"mpc-agg wraptest commit|" + context + b"|%d|" % party + value).digest()

        def gather(value: bytes) -> list[bytes]:
            t = torch.from_numpy(np.frombuffer(value, dtype=np.int64).copy())
            return [g.numpy().tobytes() for g in self.comm.all_gather(t)]
        commits = gather(commitment(self.party, mine))
        reveals = gather(mine)
        for j, (c, v) in enumerate(zip(commits, reveals)):
            if not hmac.compare_digest(c, commitment(j, v)):
                raise RefusedError(f"party {j} revealed a projection seed that does not match its commitment")
        return wraptest.combine_seed(reveals, context)

    def screen(self, cohort: list[str], session: str, *,
                dealer: bool) -> tuple[list[str], list[str]]:
        """Split the cohort into (accepted, rejected) by the MPC checks (every party at once):
        verified rounds check norms and weight = 1; others check weights in (0, max_weight]
        when every party has the dealer (SECURITY.md)."""
        spec = self.st.spec
        if spec.verify_norm:
            seed = self._wrap_seed(session)
            replicated = self.k == 3
            ok = verify_norms(lambda start, count: self.share_rows(cohort, start, count), len(cohort), spec.dim,
                              bound=spec.norm_bound(), frac_bits=spec.frac_bits, wrap_seed=seed,
                              next_rows=self._replicated(cohort) if replicated else None,
                              project=REPLICATED_PROJECTS[self.party] if replicated else (True, False),
                              chunk=REPLICATED_CHUNK if replicated else None)
        elif dealer:
            ok = check_weights(self.share_rows(cohort, spec.dim, 1)[:, 0], bound=spec.weight_bound())
        else:
            return cohort, []
        return [h for h, good in zip(cohort, ok) if good], [h for h, good in zip(cohort, ok) if not good]

    def _replicated(self, cohort: list[str]) -> Callable[[int, int, np.ndarray], np.ndarray]:
        """k = 3: give each party the next party's shares (mpc_agg.normcheck, replicated squares).

        Only verify_norm rounds get here, whose dense shares are all at the leader (mpc_agg.sharing.dense_party).
        Helpers send their 32-byte seeds to the previous party; the leader sends its dense share rows
        to party 2, chunk by chunk, at most ``LEADER_WINDOW`` chunks ahead of party 2's acknowledgements
        (so no queue holds more than that).  Each party then holds two of the three shares of every
        report."""
        if self.party > 0:  # seeds of the cohort's reports, in cohort order
            seeds = b"".join(self.store.read_material(self.st.dir, self.st.stored[h]) for h in cohort)
            self.comm.send(torch.from_numpy(np.frombuffer(seeds, dtype=np.int64).copy()), self.party - 1)
        nxt = (self.party + 1) % 3
        if nxt == 0:
            def from_leader(start: int, count: int, mine: np.ndarray) -> np.ndarray:
                rows = self.comm.recv(torch.empty(mine.shape, dtype=torch.int64), 0).numpy()
                self.comm.send(torch.zeros(1, dtype=torch.int64), 0)
                return rows
            return from_leader
        raw = self.comm.recv(torch.empty(4 * len(cohort), dtype=torch.int64), nxt).numpy().tobytes()
        peer_seeds = [raw[32 * j:32 * j + 32] for j in range(len(cohort))]
        unacked = 0

        def from_seeds(start: int, count: int, mine: np.ndarray) -> np.ndarray:
            nonlocal unacked
            if self.party == 0:
                self.comm.send(torch.from_numpy(mine), 2)
                unacked += 1
                last = start + count >= self.st.spec.dim
                while unacked > (0 if last else LEADER_WINDOW - 1):  # the last chunk: every ack, none left over
                    self.comm.recv(torch.empty(1, dtype=torch.int64), 2)
                    unacked -= 1
            rows = np.empty_like(mine)
            for j, h in enumerate(cohort):
                ctx = ShareContext(self.st.spec.round_id, self.st.reports[h], bytes.fromhex(h))
                rows[j] = expand_seed(peer_seeds[j], ctx, nxt, count, start=start)
            return rows
        return from_seeds

    def share_rows(self, reports: list[str], start: int, count: int) -> np.ndarray:
        """This party's shares of coordinates ``start .. start+count`` of each report, one row each: read
        from its dense share, or expanded from its seed, as its record says (parties.running_sum)."""
        rows = np.empty((len(reports), count), dtype=np.int64)
        path = self.store.material_path(self.st.dir)
        for j, h in enumerate(reports):
            rep = self.st.stored[h]
            if dense_here(rep):  # logged in wire layout (mpc_agg.ring)
                bits, dim = self.st.spec.ring_bits, self.st.spec.dim
                raw = np.fromfile(path, dtype=np.uint8, count=chunk_nbytes(bits, dim, start, count),
                                  offset=rep.offset + chunk_nbytes(bits, dim, 0, start))
                rows[j] = widen_chunk(raw, bits, dim, start, count)
            else:  # keystream slices start on an AES block (2 values): read from the block's start
                ctx = ShareContext(self.st.spec.round_id, self.st.reports[h], bytes.fromhex(h))
                lead = start % 2
                rows[j] = expand_seed(self.store.read_material(self.st.dir, rep), ctx, self.party, count + lead,
                                      start=start - lead)[lead:]
        return rows

"""One bit per report from many sign tests on additively shared values: do all of them hold?

Used by mpc_agg.normcheck (verified clipping, docs/wraptest.md; the weight check, SECURITY.md).
Input: this party's int64 additive shares (mod 2**64) of a (tests, reports) matrix v.  Output, the
same at every party: for each report j, whether v_tj >= 0 (as a signed int64) for every test t.
Nothing else is revealed: not a value, not which test failed, not how many.

A boolean circuit on XOR shares (GMW), each AND a Beaver triple from the dealer (Beaver 1991).  The
triples of a whole batch come in one dealer request before the circuit starts, so each AND layer
costs a single exchange among the parties:

1. party i's additive share is addend i, XOR-shared trivially (party i holds it, the others 0);
2. carry-save adders reduce the k addends to two, s and c (one AND layer per level; k = 3: one);
3. the sign of s + c is s_63 ^ c_63 ^ (carry into bit 63), the carry from a Kogge-Stone prefix over
   generate g = s & c and propagate p = s ^ c (1 + 6 AND layers);
4. each report's "non-negative" bits are ANDed in a tree (ceil(log2 tests) layers); only the result
   is opened.

k = 3 with 84 tests (verified clipping): 15 AND layers and one opening, one dealer request.  CrypTen's
``_ltz`` needs 15 dealer requests and exchanges per comparison (its A2B adds three shares with two
7-layer adders, then B2A), and "all of them" was a second comparison.

Every value opened during an AND is masked by a fresh triple (uniform to any one party), and the
output bit's shares carry the last AND's fresh mask: the protocol is private against any single
honest-but-curious party, given a dealer that colludes with none (SECURITY.md).
"""

from __future__ import annotations

from typing import Protocol

import torch

from .errors import CommunicatorError

__all__ = ["BinaryEngine", "DealerEngine", "all_nonnegative", "and_elements"]

SHIFTS = (1, 2, 4, 8, 16, 32)
"""Kogge-Stone prefix levels for 64-bit words."""
MAX_BATCH_ELEMENTS = 1 << 22
"""Triple elements fetched at once (3 x 32 MiB at most); more reports are checked in batches."""


class BinaryEngine(Protocol):
    """XOR-shared arithmetic of one party (or, in tests, of all parties at once)."""

    parties: int

    def addends(self, shares: torch.Tensor) -> list[torch.Tensor]:
        """XOR sharings of each party's additive share, one per party."""

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        """x ^ 1 (a public constant: applied by one party)."""

    def prepare(self, elements: int) -> None:
        """Fetch triples for ``elements`` AND-ed int64 words."""

    def and_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x & y on shares, one exchange (same shapes)."""

    def reveal(self, x: torch.Tensor) -> torch.Tensor:
        """Open x at every party."""


def and_elements(parties: int, tests: int, reports: int) -> int:
    """Triple words the circuit uses for a (tests, reports) input at ``parties`` parties."""
    words, count, left = tests * reports, 0, parties
    while left > 2:
        count += 2 * (left // 3) * words
        left -= left // 3
    count += words + 2 * words * (len(SHIFTS) - 1) + words  # g, the prefix levels, the last level's g only
    rows = tests
    while rows > 1:
        count += (rows // 2) * reports
        rows -= rows // 2
    return count


def all_nonnegative(engine: BinaryEngine, shares: torch.Tensor) -> list[bool]:
    """For each column j of the shared int64 (tests, reports) matrix: is every v_tj >= 0?"""
    tests, reports = shares.shape[0], shares.shape[1]
    if reports == 0 or tests == 0:
        return [True] * reports
    step = max(1, MAX_BATCH_ELEMENTS // and_elements(engine.parties, tests, 1))
    out: list[bool] = []
    for j in range(0, reports, step):
        part = shares[:, j:j + step]
        engine.prepare(and_elements(engine.parties, tests, part.shape[1]))
        out.extend(bool(b) for b in _batch(engine, part).tolist())
    return out


def _batch(engine: BinaryEngine, shares: torch.Tensor) -> torch.Tensor:
    addends = engine.addends(shares)
    while len(addends) > 2:
        addends = _carry_save(engine, addends)
    s, c = addends
    p = s ^ c
    g = _carries(engine, engine.and_(s, c), p)  # bit i: carry out of bits 0..i
    ok = engine.flip(((p ^ (g << 1)) >> 63) & 1)  # 1 where the sum's sign bit is 0
    while ok.shape[0] > 1:
        half = ok.shape[0] // 2
        ok = torch.cat([engine.and_(ok[:half], ok[half:2 * half]), ok[2 * half:]])
    return engine.reveal(ok[0])


def _carry_save(engine: BinaryEngine, addends: list[torch.Tensor]) -> list[torch.Tensor]:
    """Three addends -> two with the same sum: a ^ b ^ c and maj(a, b, c) << 1 (one AND layer)."""
    t = len(addends) // 3
    a, b, c = (torch.stack(addends[i:3 * t:3]) for i in range(3))
    ab = a ^ b
    both = engine.and_(torch.stack([a, c]), torch.stack([b, ab]))  # maj = (a & b) ^ (c & (a ^ b))
    return [*(ab ^ c), *((both[0] ^ both[1]) << 1), *addends[3 * t:]]


def _carries(engine: BinaryEngine, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Kogge-Stone: g_i becomes the carry out of bits 0..i (carry in 0); g and p of a range are
    never both 1, so g | (p & g') is g ^ (p & g')."""
    for shift in SHIFTS[:-1]:
        both = engine.and_(torch.stack([p, p]), torch.stack([g << shift, p << shift]))
        g, p = g ^ both[0], both[1]
    return g ^ engine.and_(p, g << SHIFTS[-1])


class DealerEngine:
    """This party's side: Beaver ANDs over CrypTen's communicator, triples from the dealer provider.
    Must run on every party at once inside an active CrypTen session (mpc_agg.crypten_glue)."""

    def __init__(self) -> None:
        import crypten
        import crypten.communicator as cc

        self.comm = cc.get()
        self.rank, self.parties = self.comm.get_rank(), self.comm.get_world_size()
        self._provider = crypten.mpc.get_default_provider()
        self._abc: tuple[torch.Tensor, ...] = ()
        self._used = 0

    def addends(self, shares: torch.Tensor) -> list[torch.Tensor]:
        return [shares.clone() if i == self.rank else torch.zeros_like(shares) for i in range(self.parties)]

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        return x ^ 1 if self.rank == 0 else x

    def prepare(self, elements: int) -> None:
        a, b, c = self._provider.generate_binary_triple((elements,), (elements,))
        self._abc, self._used = (a.share, b.share, c.share), 0

    def and_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.distributed import ReduceOp

        lo, hi = self._used, self._used + x.numel()
        if not self._abc or hi > self._abc[0].numel():
            raise CommunicatorError("the sign circuit used more AND triples than it fetched")
        a, b, c = (t[lo:hi].view(x.shape) for t in self._abc)
        self._used = hi
        e, f = self.comm.all_reduce(torch.stack([x ^ a, y ^ b]), op=ReduceOp.BXOR)  # masked: x ^ a, y ^ b
        z = c ^ (e & b) ^ (f & a)
        return z ^ (e & f) if self.rank == 0 else z

    def reveal(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed import ReduceOp

        return self.comm.all_reduce(x.contiguous(), op=ReduceOp.BXOR)

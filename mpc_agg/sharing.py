"""Additive secret sharing over Z_2^64 with seed-compressed helper shares.

For k parties, helper j = 1..k-1 receives a fresh 32-byte seed from ``os.urandom``;
its share is the AES-128-CTR keystream under a key derived from that seed with
HKDF-SHA256 (RFC 5869), domain-separated by protocol version, round, client,
report id and party index, read as little-endian int64.  The leader (party 0)
receives ``x - sum(helper shares) mod 2**64``.  Any k-1 shares are uniformly
distributed and independent of ``x`` (DESIGN.md §3 step 5; the same
seed-expansion idea as Prio3's helper shares, draft-irtf-cfrg-vdaf §6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import EncodingError
from .wire import PROTOCOL_VERSION

__all__ = ["SEED_BYTES", "ShareContext", "expand_seed", "split", "reconstruct"]

SEED_BYTES = 32


@dataclass(frozen=True)
class ShareContext:
    """What a helper share is bound to; mixed into its key derivation."""

    round_id: int
    client_id: str
    report_id: bytes

    def info(self, party: int) -> bytes:
        return b"|".join(
            (
                b"mpc-agg/share",
                b"v%d" % PROTOCOL_VERSION,
                b"round=%d" % self.round_id,
                b"client=" + self.client_id.encode("utf-8"),
                b"report=" + self.report_id.hex().encode("ascii"),
                b"party=%d" % party,
            )
        )


def expand_seed(seed: bytes, ctx: ShareContext, party: int, length: int) -> npt.NDArray[np.int64]:
    """Expand a helper seed into ``length`` pseudo-random int64 ring elements."""
    if len(seed) != SEED_BYTES:
        raise EncodingError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise EncodingError("length must be >= 0")
    key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=ctx.info(party)).derive(seed)
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    nbytes = 8 * length
    out = bytearray(nbytes + 15)  # update_into needs block_size - 1 spare bytes
    n = enc.update_into(bytes(nbytes), out)
    arr = np.frombuffer(out, dtype="<i8", count=n // 8)
    return arr.astype(np.int64, copy=False)


def split(
    x: npt.NDArray[np.int64], parties: int, ctx: ShareContext
) -> tuple[npt.NDArray[np.int64], list[bytes]]:
    """Share ``x`` among ``parties``: returns (leader share, helper seeds 1..k-1)."""
    if parties < 2:
        raise EncodingError("secret sharing needs at least 2 parties")
    if x.dtype != np.int64 or x.ndim != 1:
        raise EncodingError("x must be a 1-D int64 vector")
    seeds = [os.urandom(SEED_BYTES) for _ in range(parties - 1)]
    leader = x.copy()
    for j, seed in enumerate(seeds, start=1):
        np.subtract(leader, expand_seed(seed, ctx, j, x.size), out=leader)
    return leader, seeds


def reconstruct(shares: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Add shares mod 2**64 (int64 arithmetic wraps)."""
    if not shares:
        raise EncodingError("no shares to reconstruct")
    total = shares[0].astype(np.int64, copy=True)
    for s in shares[1:]:
        np.add(total, s, out=total)
    return total

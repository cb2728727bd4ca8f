"""Additive secret sharing over Z_2^64 (or Z_2^32, mpc_agg.ring) with seed-compressed helper shares.

For k parties, every party i but one receives a fresh 32-byte seed from ``os.urandom``;
its share is the AES-128-CTR keystream under a key derived from that seed with
HKDF-SHA256 (RFC 5869), domain-separated by derivation version, round, client,
report id and party index, read as little-endian int64 (int32 for the update
coordinates of a 32-bit round; its weight coordinate ``d`` is keystream int64 element
``d``, bytes 8d..8d+8, past the 4d bytes of the coordinates, as in a 64-bit round).

One party per report, its *dense party* d (:func:`dense_party`: it rotates with the
report id, so each of k parties takes about n/k dense uploads; party 0, the leader,
in verify_norm rounds), receives ``x - sum_{i != d} expand(seed_i, party i) mod 2**64``;
every other party i receives a seed, expanded with its own index i.  (Names such as
:func:`leader_share` date from when the dense party was always the leader.)  Any k-1 shares are uniformly
distributed and independent of ``x`` (SECURITY.md, "Confidentiality of an update"; the same
seed-expansion idea as Prio3's helper shares, draft-irtf-cfrg-vdaf §6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import EncodingError

if TYPE_CHECKING:
    from .spec import RoundSpec

__all__ = ["SEED_BYTES", "ShareContext", "dense_party", "seed_parties", "expand_seed", "accumulate_seed", "new_seeds",
           "leader_share", "leader_chunk32", "dense_chunk", "split", "reconstruct", "xor_leader_share"]

SEED_BYTES = 32
SHARE_DERIVATION = b"v1"
"""The key derivation's own version: wire protocol versions 2 (sealed chunks) and 3 (the dense share rotates)
left it unchanged (a seed is still expanded with its own party's index)."""


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
                SHARE_DERIVATION,
                b"round=%d" % self.round_id,
                b"client=" + self.client_id.encode("utf-8"),
                b"report=" + self.report_id.hex().encode("ascii"),
                b"party=%d" % party,
            )
        )


def dense_party(spec: "RoundSpec", report_id: bytes, parties: int) -> int:
    """The party that takes report ``report_id``'s dense share, of ``parties``
    (docs/PROTOCOL.md, "Where the dense share goes"): the first 8 bytes of the id (big-endian) mod k, or
    party 0 in ``verify_norm`` rounds, whose close (parties/cohort.py, mpc_agg/normcheck.py) reads the
    dense share at the leader.  A client draws its id at random; choosing it only chooses where its own
    report goes."""
    if len(report_id) != 16:
        raise EncodingError(f"a report id is 16 bytes, got {len(report_id)}")
    if parties < 2:
        raise EncodingError("secret sharing needs at least 2 parties")
    return 0 if spec.verify_norm else int.from_bytes(report_id[:8], "big") % parties


def seed_parties(parties: int, dense: int) -> list[int]:
    """The parties that take a seed when ``dense`` takes the dense share, in the order of the seeds."""
    if not 0 <= dense < parties:
        raise EncodingError(f"dense party {dense} is not one of {parties} parties")
    return [i for i in range(parties) if i != dense]


_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def _keystream(seed: bytes, ctx: ShareContext, party: int, length: int, start: int = 0,
               bits: int = 64) -> Iterator[tuple[int, npt.NDArray[np.int64] | npt.NDArray[np.int32]]]:
    """Yield (element offset, view) chunks of the share keystream read as ``bits``-bit little-endian
    integers, from element ``start``; the views are reused between chunks."""
    if bits not in (32, 64):
        raise EncodingError(f"shares are 32- or 64-bit ring elements, not {bits!r}")
    if start < 0:
        raise EncodingError("a keystream slice cannot start before element 0")
    if len(seed) != SEED_BYTES:
        raise EncodingError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise EncodingError("length must be >= 0")
    item = bits // 8
    key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=ctx.info(party)).derive(seed)
    first = start * item
    enc = Cipher(algorithms.AES(key), modes.CTR((first // 16).to_bytes(16, "big"))).encryptor()
    if first % 16:  # CTR is a stream: consume the start of the block before the slice
        enc.update(_ZEROS[:first % 16])
    nbytes = item * length
    buf = bytearray(min(_CHUNK, nbytes) + 15)  # update_into needs block_size - 1 spare bytes
    zeros = memoryview(_ZEROS)
    for pos in range(0, nbytes, _CHUNK):
        n = min(_CHUNK, nbytes - pos)
        enc.update_into(zeros[:n], buf)
        yield pos // item, np.frombuffer(buf, dtype=f"<i{item}", count=n // item)


def expand_seed(seed: bytes, ctx: ShareContext, party: int, length: int, *, start: int = 0,
                bits: int = 64) -> npt.NDArray[np.int64]:
    """Expand a helper seed into elements ``start .. start+length`` of its ``bits``-bit keystream,
    as int64 (32-bit elements sign-extended)."""
    out = np.empty(length, dtype=np.int64)
    for off, ks in _keystream(seed, ctx, party, length, start, bits):
        out[off:off + ks.size] = ks
    return out


def accumulate_seed(total: npt.NDArray[np.int64], seed: bytes, ctx: ShareContext, party: int, *,
                    start: int = 0, subtract: bool = False, bits: int = 64) -> None:
    """``total += share[start:start+len(total)]`` (or ``-=``) for the share a seed expands to, chunk by chunk.

    ``bits=32`` (a 32-bit round, mpc_agg.ring): ``total`` is a whole report, its update coordinates
    from the 32-bit keystream and its last (weight) coordinate the 64-bit keystream element at
    index ``len(total) - 1``, as in a 64-bit round."""
    op = np.subtract if subtract else np.add
    if bits == 32:
        if start:
            raise EncodingError("a 32-bit round's share is accumulated whole (start=0)")
        weight = total[-1:]
        op(weight, expand_seed(seed, ctx, party, 1, start=total.size - 1), out=weight)
        total = total[:-1]
    for off, ks in _keystream(seed, ctx, party, total.size, start, bits):
        view = total[off:off + ks.size]
        op(view, ks, out=view)


def new_seeds(parties: int) -> list[bytes]:
    """Fresh CSPRNG seeds for the k-1 parties of one report that take seeds (:func:`seed_parties`)."""
    if parties < 2:
        raise EncodingError("secret sharing needs at least 2 parties")
    return [os.urandom(SEED_BYTES) for _ in range(parties - 1)]


def leader_share(x: npt.NDArray[np.int64], seeds: list[bytes], ctx: ShareContext, *,
                 start: int = 0, out: npt.NDArray[Any] | None = None, bits: int = 64,
                 dense: int = 0) -> npt.NDArray[Any]:
    """Elements ``start .. start+len(x)`` of the dense share of party ``dense``, given the same slice of
    ``x``: ``x - sum_j expand(seed_j, party j)`` mod 2**bits over the parties ``seed_parties(k, dense)``
    (``seeds`` in that order), so a vector can be shared chunk by chunk.
    ``out=x`` shares in place (64 bits); with ``bits=32`` the share is int32 (``x`` must already
    be in range: mpc_agg.ring), and a 32-bit round's weight coordinate is shared with ``bits=64``."""
    if x.dtype != np.int64 or x.ndim != 1:
        raise EncodingError("x must be a 1-D int64 vector")
    if not seeds:
        raise EncodingError("secret sharing needs at least 2 parties")
    dtype = np.int64 if bits == 64 else np.int32
    if out is None:
        out = np.empty(x.size, dtype=dtype)
    elif out.dtype != dtype or out.shape != x.shape:
        raise EncodingError(f"out must be a {np.dtype(dtype).name} vector of the same length")
    streams = [_keystream(seed, ctx, j, x.size, start, bits)
               for j, seed in zip(seed_parties(len(seeds) + 1, dense), seeds)]
    for blocks in zip(*streams):  # block by block over all helpers, so each block of out stays in cache
        off, n = blocks[0][0], blocks[0][1].size
        np.subtract(x[off:off + n], blocks[0][1], out=out[off:off + n], casting="unsafe")  # wraps mod 2**bits
        for _, ks in blocks[1:]:
            np.subtract(out[off:off + n], ks, out=out[off:off + n])
    return out


def leader_chunk32(part: npt.NDArray[np.int64], seeds: list[bytes], ctx: ShareContext, *, start: int,
                   dim: int, dense: int = 0) -> npt.NDArray[np.uint8]:
    """Wire bytes of party ``dense``'s dense share of ``part``, values ``start ..`` of a 32-bit round's report of
    ``dim`` update coordinates (mpc_agg.ring): its coordinates mod 2**32 (int32), then, if ``part``
    holds it, the weight coordinate mod 2**64 (int64)."""
    coords = max(0, min(part.size, dim - start))
    weight = part.size - coords
    if weight not in (0, 1) or (weight and start + part.size != dim + 1):
        raise EncodingError(f"values {start}..{start + part.size} are not a slice of a report of {dim + 1}")
    buf = np.empty(4 * coords + 8 * weight, dtype=np.uint8)
    leader_share(part[:coords], seeds, ctx, start=start, out=buf[:4 * coords].view(np.int32), bits=32, dense=dense)
    if weight:  # the 64-bit keystream's element ``dim``, as in a 64-bit round
        buf[4 * coords:].view(np.int64)[:] = leader_share(part[coords:], seeds, ctx, start=dim, dense=dense)
    return buf


def dense_chunk(part: npt.NDArray[np.int64], seeds: list[bytes], ctx: ShareContext, *, start: int, dim: int,
                bits: int, dense: int = 0) -> memoryview:
    """Wire bytes of the dense share of ``part``, values ``start ..`` of a report of ``dim`` update coordinates
    in the round's layout (mpc_agg.ring); at 64 bits computed in place in ``part``."""
    if bits == 64:
        return leader_share(part, seeds, ctx, start=start, out=part, dense=dense).data
    return leader_chunk32(part, seeds, ctx, start=start, dim=dim, dense=dense).data


def split(
    x: npt.NDArray[np.int64], parties: int, ctx: ShareContext, *, dense: int = 0
) -> tuple[npt.NDArray[np.int64], list[bytes]]:
    """Share ``x`` among ``parties``: returns (party ``dense``'s share, the seeds of ``seed_parties``)."""
    seeds = new_seeds(parties)
    return leader_share(x, seeds, ctx, dense=dense), seeds


def reconstruct(shares: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Add shares mod 2**64 (int64 arithmetic wraps)."""
    if not shares:
        raise EncodingError("no shares to reconstruct")
    total = shares[0].astype(np.int64, copy=True)
    for s in shares[1:]:
        np.add(total, s, out=total)
    return total


def xor_leader_share(x: npt.NDArray[np.int64], seeds: list[bytes], ctx: ShareContext, *,
                     bits: int = 64) -> npt.NDArray[np.int64]:
    """The leader's share of ``x`` under XOR sharing of the low ``bits`` bits: ``x ^ s_1 ^ ... ^ s_{k-1}``, where
    helper j's share ``s_j`` is ``expand_seed(seed_j, ctx, j, len(x))`` cut to those bits (CrypTen's binary sharing;
    the dealer's binary triples and B2A bits).  Any k-1 of the shares are uniform on those bits."""
    if x.dtype != np.int64 or x.ndim != 1:
        raise EncodingError("x must be a 1-D int64 vector")
    if not seeds:
        raise EncodingError("secret sharing needs at least 2 parties")
    if not 1 <= bits <= 64:
        raise EncodingError(f"bits must be in 1..64, got {bits}")
    mask = np.int64(-1) if bits == 64 else np.int64((1 << bits) - 1)
    out = x.copy()
    for j, seed in enumerate(seeds, start=1):
        share = expand_seed(seed, ctx, j, x.size)
        share &= mask
        out ^= share
    return out

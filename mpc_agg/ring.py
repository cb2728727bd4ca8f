"""The ring a round's shares live in: Z_2^32 when the round's bounds allow it, else Z_2^64.

A report is ``d`` update coordinates and one weight coordinate (README, "The compact
ring").  In a 32-bit round (``RoundSpec.ring_bits == 32``) the update coordinates are
shared mod 2**32 (4 bytes each on the wire) and the weight coordinate stays in
Z_2^64 (8 bytes), so the parties' weight check (mpc_agg.normcheck.check_weights) runs
on 64-bit shares exactly as in 64-bit rounds; verified clipping always runs at 64 bits.

A round may use 32 bits only if the cohort's sum of honest reports cannot wrap:

    max_cohort * (w * C * 2**f + 1)  +  noise tail  <  2**(32 - 1 - RING_HEADROOM_BITS)

per coordinate, for weights ``w <= max_weight`` (1 in noised rounds), clip norm ``C``,
``f`` fractional bits, at most ``max_cohort`` reports in the cohort (each party refuses
more), rounding (+1) and the cohort's Skellam noise bounded by :func:`noise_tail`
(honest noise passes it except with probability 2**-WRAP_BITS over all coordinates).

Wire layout of a report chunk (values ``start .. start+count`` of the ``d + 1``): the
update coordinates in it as little-endian int32 (32-bit rounds) or int64, then, in the
chunk that holds it, the weight coordinate as little-endian int64.  A party keeps 32-bit
shares sign-extended to int64 (sums mod 2**64 reduce correctly mod 2**32) and reveals
its sum share reduced mod 2**32 in the same layout, so no carry leaves it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from .errors import WireError
from .wire import MAX_PAYLOADS

__all__ = ["RING_BITS", "RING_HEADROOM_BITS", "WRAP_BITS", "noise_tail", "sum_bound", "fits",
           "report_nbytes", "chunk_nbytes", "widen_chunk", "add_chunk", "sum_share_frames", "add_sum_share", "reduce"]

RING_BITS = (32, 64)
RING_HEADROOM_BITS = 1
"""Bits kept free above the bound on a cohort's sum (a 32-bit round's sums stay below 2**30)."""
WRAP_BITS = 40
"""Honest noise exceeds :func:`noise_tail` with probability at most 2**-WRAP_BITS per round."""


def noise_tail(lam: float, dim: int) -> float:
    """A bound on |Skellam(lam, lam)| that ``dim`` draws all meet except with probability 2**-WRAP_BITS.

    Bernstein for Poisson: P(|X - lam| >= x) <= 2 exp(-x**2 / (2(lam + x/3))); |P1 - P2| >= 2x needs
    one of the two Poisson halves off by x, and a union over ``dim`` coordinates gives
    4·dim·exp(-t) <= 2**-WRAP_BITS at t = ln(4·dim) + WRAP_BITS·ln 2."""
    if lam <= 0:
        return 0.0
    t = math.log(4 * max(dim, 1)) + WRAP_BITS * math.log(2)
    return 2 * (t / 3 + math.sqrt(t * t / 9 + 2 * lam * t))


def sum_bound(*, clip_norm: float | None, frac_bits: int, max_weight: float | None, cohort: int, dim: int,
              noise_lambda: int = 0) -> float:
    """Largest |coordinate| of the sum of ``cohort`` honest reports (ring units; inf if unbounded).

    ``noise_lambda``: the Poisson mean of each half of one client's Skellam noise (0: no noise)."""
    if clip_norm is None or max_weight is None:
        return math.inf
    signal = math.floor(max_weight * clip_norm * 2.0**frac_bits) + 1  # one report: clipped, then rounded
    return cohort * signal + noise_tail(cohort * noise_lambda, dim)


def fits(bits: int, bound: float) -> bool:
    """Whether sums bounded by ``bound`` decode correctly in Z_2^bits, with RING_HEADROOM_BITS to spare."""
    return bound < 2.0 ** (bits - 1 - RING_HEADROOM_BITS)


def _counts(dim: int, start: int, count: int) -> tuple[int, int]:
    """(update coordinates, weight coordinates) among values ``start .. start+count`` of a report."""
    end = start + count
    return max(0, min(end, dim) - start), int(start <= dim < end)


def chunk_nbytes(bits: int, dim: int, start: int, count: int) -> int:
    """Bytes of values ``start .. start+count`` of a report with ``dim`` update coordinates."""
    coords, weight = _counts(dim, start, count)
    return bits // 8 * coords + 8 * weight


def report_nbytes(bits: int, dim: int) -> int:
    """Bytes of a whole report's dense share (what its dense party receives)."""
    return chunk_nbytes(bits, dim, 0, dim + 1)


def widen_chunk(buf: Any, bits: int, dim: int, start: int, count: int) -> npt.NDArray[np.int64]:
    """Values ``start .. start+count`` of a report as int64 (32-bit shares sign-extended), from wire bytes."""
    if memoryview(buf).nbytes != chunk_nbytes(bits, dim, start, count):
        raise WireError(f"a chunk of {count} values at {start} must be {chunk_nbytes(bits, dim, start, count)} bytes")
    if bits == 64:
        return np.frombuffer(buf, dtype="<i8")
    coords, weight = _counts(dim, start, count)
    out = np.empty(count, dtype=np.int64)
    out[:coords] = np.frombuffer(buf, dtype="<i4", count=coords)
    if weight:
        out[coords] = np.frombuffer(buf, dtype="<i8", count=1, offset=4 * coords)[0]
    return out


def add_chunk(total: npt.NDArray[np.int64], buf: Any, bits: int, dim: int, start: int, count: int, *,
              subtract: bool = False) -> None:
    """``total[start:start+count] += values`` (or ``-=``) for values ``start ..`` of a report in wire layout
    (32-bit shares sign-extended as they are added; no widened copy is made)."""
    if memoryview(buf).nbytes != chunk_nbytes(bits, dim, start, count):
        raise WireError(f"a chunk of {count} values at {start} must be {chunk_nbytes(bits, dim, start, count)} bytes")
    op = np.subtract if subtract else np.add
    coords, weight = _counts(dim, start, count) if bits == 32 else (count, 0)
    view = total[start:start + coords]
    op(view, np.frombuffer(buf, dtype=f"<i{bits // 8}", count=coords), out=view)
    if weight:
        w = total[start + coords:start + coords + 1]
        op(w, np.frombuffer(buf, dtype="<i8", count=1, offset=4 * coords), out=w)


def sum_share_frames(share: npt.NDArray[np.int64], bits: int, step: int) -> list[memoryview]:
    """A party's sum share (``dim + 1`` int64 values) as SUM_SHARE frames of at most ``step`` values:
    in 32-bit rounds the coordinates reduced mod 2**32 (int32), then the 8-byte weight frame."""
    if bits == 64:
        return [share[i:i + step].data for i in range(0, share.size, step)]
    coords = share[:-1].astype(np.int32)  # wraps: the low 32 bits, all the coordinator may learn
    step = max(step, -(-coords.size // (MAX_PAYLOADS - 1)))  # the weight frame still fits the envelope
    return [coords[i:i + step].data for i in range(0, coords.size, step)] + [share[-1:].data]


def add_sum_share(total: npt.NDArray[np.int64], frames: Sequence[Any], bits: int, who: str) -> None:
    """``total += `` one party's sum share sent as ``frames`` (see :func:`sum_share_frames`), or WireError."""
    dim = total.size - 1
    sizes = [memoryview(f).nbytes for f in frames]
    item = bits // 8
    coords = frames if bits == 64 else frames[:-1]
    if (sum(sizes) != report_nbytes(bits, dim) or any(n % item for n in sizes)
            or (bits == 32 and (not sizes or sizes[-1] != 8))):
        raise WireError(f"{who} sent a malformed sum share")
    off = 0
    for f in coords:
        part = np.frombuffer(f, dtype=f"<i{item}")
        view = total[off:off + part.size]
        np.add(view, part, out=view)
        off += part.size
    if bits == 32:
        np.add(total[-1:], np.frombuffer(frames[-1], dtype="<i8"), out=total[-1:])


def reduce(ring: npt.NDArray[np.int64], bits: int) -> npt.NDArray[np.int32] | npt.NDArray[np.int64]:
    """Ring elements reduced mod 2**bits to their signed representatives (int32 at 32 bits; ``ring``
    itself at 64)."""
    return ring if bits == 64 else ring.astype(np.int32)  # numpy narrows modulo 2**32

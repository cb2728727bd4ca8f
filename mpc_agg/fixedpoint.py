"""Fixed-point encoding of real vectors into the ring Z_2^64 (CrypTen's ring).

A real ``v`` is encoded as ``round(v * 2**frac_bits)`` read as a two's-complement
int64.  Rounding is to nearest (ties to even), never truncation, so the error of
one value is at most ``2**-(frac_bits+1)``.  An encoded value must be below
``2**(63 - HEADROOM_BITS)`` in magnitude *after* rounding (else :class:`RangeError`),
so a sum of up to ``2**HEADROOM_BITS`` reports stays below 2**63 - 2**16 and
never wraps; parties refuse reports past ``MAX_REPORTS_PER_ROUND`` (the leader
may hold one more upload in flight, so a sum has at most 2**HEADROOM_BITS terms).

Decoding is our own (CrypTen 0.4.1's ``FixedPointEncoder.decode`` divides negative
values by 2**16 - 1 and mis-decodes some of them; tests/test_fixedpoint.py shows it): the signed int64 divided by ``2**frac_bits``.
:func:`decode_average` is the one decoder of a revealed round (the coordinator's): in a
32-bit round (mpc_agg.ring) the update coordinates are reduced mod 2**32 first.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import ring as _ring
from .errors import EncodingError, RangeError, RefusedError

__all__ = [
    "DEFAULT_FRAC_BITS",
    "HEADROOM_BITS",
    "MAX_REPORTS_PER_ROUND",
    "max_abs_value",
    "encode",
    "decode",
    "decode_average",
]

DEFAULT_FRAC_BITS = 24
"""Default fractional bits: resolution 6e-8, so a 1e-6 delta keeps ~4 digits."""

HEADROOM_BITS = 16
"""Bits reserved so that sums of up to 65,536 encoded reports never wrap."""

MAX_FRAC_BITS = 62 - HEADROOM_BITS

MAX_REPORTS_PER_ROUND = 2**HEADROOM_BITS - 1
"""Reports a party accepts per round (one more may be in flight at the leader): the sum cannot wrap."""


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, int) or isinstance(frac_bits, bool) or not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise EncodingError(f"frac_bits must be an int in [0, {MAX_FRAC_BITS}], got {frac_bits!r}")


def max_abs_value(frac_bits: int) -> float:
    """Largest |v| a client may encode with ``frac_bits`` fractional bits."""
    _check_frac_bits(frac_bits)
    return float(2 ** (63 - HEADROOM_BITS - frac_bits))


_BLOCK = 1 << 16  # values per pass: the float temporaries stay in cache


def encode(values: npt.ArrayLike, frac_bits: int, *, scale: float = 1.0,
           out: npt.NDArray[np.int64] | None = None, bound: int | None = None) -> npt.NDArray[np.int64]:
    """Encode ``scale * values`` as int64 ring elements (round to nearest, range-checked).

    Works block by block into ``out`` (allocated if None), so a large vector costs one
    int64 output and no full-size float temporaries.  ``bound``: a tighter limit on
    |encoded value| (a 32-bit round's per-report bound, RoundSpec.report_bound)."""
    _check_frac_bits(frac_bits)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if out is None:
        out = np.empty(x.size, dtype=np.int64)
    elif out.shape != x.shape or out.dtype != np.int64:
        raise EncodingError("out must be an int64 vector of the same length")
    factor = float(scale) * 2.0**frac_bits
    hard = float(2 ** (63 - HEADROOM_BITS))
    limit = hard if bound is None else min(hard, float(bound) + 1)  # rounded values are integers
    buf = np.empty(min(_BLOCK, x.size))
    for start in range(0, x.size, _BLOCK):
        b = buf[: min(_BLOCK, x.size - start)]
        np.multiply(x[start:start + b.size], factor, out=b)
        np.rint(b, out=b)  # checked after rounding: 2**47 - 0.3 rounds to 2**47, which is refused
        hi, lo = float(np.max(b)), float(np.min(b))  # NaN or inf fails the finiteness test
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise EncodingError("cannot encode NaN or infinite values")
        if not (hi < limit and lo > -limit):
            what = (f"the ring with frac_bits={frac_bits}" if limit == hard else
                    f"this round's 32-bit ring (|value| <= {(limit - 1) / 2**frac_bits:.6g} per report)")
            raise RangeError(f"|value| {max(abs(hi), abs(lo)) / 2**frac_bits:.6g} would wrap {what}; "
                             "lower frac_bits or clip the update")
        out[start:start + b.size] = b
    return out


def decode(ring: npt.ArrayLike, frac_bits: int) -> npt.NDArray[np.float64]:
    """Decode int64 ring elements (two's complement) back to float64."""
    _check_frac_bits(frac_bits)
    r = np.asarray(ring)
    if r.dtype != np.int64:
        raise EncodingError(f"ring elements must be int64, got {r.dtype}")
    return np.ldexp(r.astype(np.float64), -frac_bits)


def decode_average(ring: npt.NDArray[np.int64], frac_bits: int, *,
                   ring_bits: int = 64) -> tuple[npt.NDArray[np.float64], float]:
    """A revealed round's (average, total weight) from the sum of the parties' shares.

    ``ring`` holds the summed update coordinates (mod 2**ring_bits) then the summed weight
    (mod 2**64); the average is their decoded values divided by the decoded weight (a fresh
    float64 vector).  RefusedError when the total weight is not positive."""
    _check_frac_bits(frac_bits)
    if ring.dtype != np.int64 or ring.ndim != 1 or ring.size < 1:
        raise EncodingError("a revealed sum is a 1-D int64 vector: the coordinates, then the weight")
    weight = float(decode(ring[-1:], frac_bits)[0])
    if not weight > 0:
        raise RefusedError(f"revealed total weight {weight} is not positive")
    avg = _ring.reduce(ring[:-1], ring_bits).astype(np.float64)
    avg *= 2.0 ** -frac_bits  # exact: a power of two
    avg /= weight
    return avg, weight

"""Fixed-point encoding of real vectors into the ring Z_2^64 (CrypTen's ring).

A real ``v`` is encoded as ``round(v * 2**frac_bits)`` read as a two's-complement
int64.  Rounding is to nearest (ties to even), never truncation, so the error of
one value is at most ``2**-(frac_bits+1)``.  Values whose encoding could wrap
when up to ``2**HEADROOM_BITS`` reports are summed raise :class:`RangeError`.

Decoding is our own (DESIGN.md §4: CrypTen 0.4.1's ``FixedPointEncoder.decode``
mis-decodes some negative values): the signed int64 divided by ``2**frac_bits``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .errors import EncodingError, RangeError

__all__ = [
    "DEFAULT_FRAC_BITS",
    "HEADROOM_BITS",
    "max_abs_value",
    "encode",
    "decode",
]

DEFAULT_FRAC_BITS = 24
"""Default fractional bits: resolution 6e-8, so a 1e-6 delta keeps ~4 digits."""

HEADROOM_BITS = 16
"""Bits reserved so that sums of up to 65,536 encoded reports never wrap."""

MAX_FRAC_BITS = 62 - HEADROOM_BITS


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, int) or isinstance(frac_bits, bool) or not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise EncodingError(f"frac_bits must be an int in [0, {MAX_FRAC_BITS}], got {frac_bits!r}")


def max_abs_value(frac_bits: int) -> float:
    """Largest |v| a client may encode with ``frac_bits`` fractional bits."""
    _check_frac_bits(frac_bits)
    return float(2 ** (63 - HEADROOM_BITS - frac_bits))


def encode(values: npt.ArrayLike, frac_bits: int) -> npt.NDArray[np.int64]:
    """Encode reals as int64 ring elements (round to nearest, range-checked)."""
    _check_frac_bits(frac_bits)
    x = np.asarray(values, dtype=np.float64)
    scaled = x * float(2**frac_bits)  # exact: a power of two
    if scaled.size:
        # one max and one min pass, no temporaries; NaN fails both comparisons
        hi, lo, limit = float(np.max(scaled)), float(np.min(scaled)), float(2 ** (63 - HEADROOM_BITS))
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise EncodingError("cannot encode NaN or infinite values")
        if not (hi < limit and lo > -limit):
            raise RangeError(
                f"|value| {max(abs(hi), abs(lo)) / 2**frac_bits:.6g} >= {max_abs_value(frac_bits):.6g}: it would "
                f"wrap the ring with frac_bits={frac_bits}; lower frac_bits or clip the update"
            )
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64)


def decode(ring: npt.ArrayLike, frac_bits: int) -> npt.NDArray[np.float64]:
    """Decode int64 ring elements (two's complement) back to float64."""
    _check_frac_bits(frac_bits)
    r = np.asarray(ring)
    if r.dtype != np.int64:
        raise EncodingError(f"ring elements must be int64, got {r.dtype}")
    return np.ldexp(r.astype(np.float64), -frac_bits)

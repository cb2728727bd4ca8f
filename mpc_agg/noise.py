"""Skellam noise within 2^-170 of exact: Poisson by inverting a 192-bit CDF table built with integers only.

Why: numpy's float64 Poisson sampler is not exact at the scales a 2^24 fixed-point
grid needs (past lambda ~ 2^53 every draw is even; at 4.7e13 it fails goodness-of-fit
tests), and the Skellam accountant (mpc_agg.dp) assumes exact Skellam noise.

How (README "Differential privacy"):

* In noised rounds the fixed-point granularity follows the noise: each client's
  noise standard deviation in ring units, ``sigma_c = z*C*2**frac_bits/sqrt(h)``,
  must lie in ``[MIN_CLIENT_SIGMA, MAX_CLIENT_SIGMA] = [2^8, 2^16]``
  (mpc_agg.spec refuses other rounds with NoiseRangeError).  So
  ``lambda = ceil(sigma_c**2 / 2)`` is an integer in ``[2^15, 2^31]``, rounded up
  (more noise never costs privacy).
* ``Poisson(lambda)`` is sampled by inverting a cumulative table over the window
  ``lambda +- x`` whose two tails hold at most ``2**-TAIL_BITS`` (Bernstein's
  inequality: ``P(|X-lambda| >= x) <= 2 exp(-x^2 / (2(lambda + x/3)))``).  The
  weights ``p(k)/p(lambda)`` come from the exact ratios ``lambda/(k+1)`` and
  ``k/lambda`` in big-integer fixed point (no logarithms, no floats); the CDF is
  stored floored to ``CDF_BITS = 192`` bits.  A draw is a uniform 192-bit integer
  from the AES-CTR generator located in the table by binary search (its low words
  are drawn only when its top word ties with an entry's).
* Distance to the exact distribution: per draw, total variation at most
  ``draw_tv_bound(lambda) = 2^-TAIL_BITS + (entries + 2) * 2^-191 < 2^-170``.
  mpc_agg.dp folds it (times the draws of a round) into delta.

Cost: the table has about 19*sigma_c entries (24 bytes each: 35 MiB at sigma_c = 2^16)
and is built in ~1 s at the top of the range (cached per lambda); a draw costs a
sorted binary search (`python -m benchmarks.noise` measures both).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import NoiseRangeError

__all__ = [
    "MIN_CLIENT_SIGMA",
    "MAX_CLIENT_SIGMA",
    "TAIL_BITS",
    "CDF_BITS",
    "client_variance",
    "check_noise_range",
    "noised_frac_bits",
    "poisson_lambda",
    "PoissonTable",
    "draw_tv_bound",
    "skellam",
]

MIN_CLIENT_SIGMA = 2**8
"""Smallest per-client noise std (ring units): the revealed noise's low 8 bits are then uniform."""
MAX_CLIENT_SIGMA = 2**16
"""Largest per-client noise std: lambda <= 2^31, a 35 MiB table built in about a second."""
TAIL_BITS = 192
CDF_BITS = 192
_CHUNK = 1 << 20
_U64_MAX = np.iinfo(np.uint64).max


def client_variance(noise_multiplier: float, clip_norm: float, frac_bits: int, honest: int) -> float:
    """Variance (ring units) each client adds so that ``honest`` clients' noise sums to (z*C*2^f)^2."""
    return (noise_multiplier * clip_norm * 2.0**frac_bits) ** 2 / honest


def check_noise_range(noise_multiplier: float, clip_norm: float, frac_bits: int, honest: int) -> None:
    """NoiseRangeError unless the per-client noise lies in the exact sampler's range."""
    var = client_variance(noise_multiplier, clip_norm, frac_bits, honest)
    if not MIN_CLIENT_SIGMA**2 <= var <= MAX_CLIENT_SIGMA**2:
        ok = noised_frac_bits(noise_multiplier, clip_norm, honest)
        hint = (f"frac_bits in [{ok[0]}, {ok[-1]}] (or None: chosen for you)" if ok else
                "no frac_bits fits: change noise_multiplier * clip_norm")
        raise NoiseRangeError(
            f"noised round with frac_bits={frac_bits}: per-client noise std {math.sqrt(var):.4g} ring units is "
            f"outside the exact sampler's range [2^8, 2^16]; use {hint}")


def noised_frac_bits(noise_multiplier: float, clip_norm: float, honest: int, max_frac_bits: int = 46) -> list[int]:
    """Every frac_bits in [0, max_frac_bits] whose per-client noise is in range (ascending)."""
    return [f for f in range(max_frac_bits + 1)
            if MIN_CLIENT_SIGMA**2 <= client_variance(noise_multiplier, clip_norm, f, honest) <= MAX_CLIENT_SIGMA**2]


def poisson_lambda(variance: float) -> int:
    """The integer Poisson mean of each half of a Skellam draw of at least ``variance``."""
    if not MIN_CLIENT_SIGMA**2 <= variance <= MAX_CLIENT_SIGMA**2:
        raise NoiseRangeError(f"Skellam variance {variance:.6g} is outside the exact sampler's range [2^16, 2^32]")
    return math.ceil(variance / 2)


def _window(lam: int) -> tuple[int, int]:
    """[lo, hi] with P(X outside) <= 2^-TAIL_BITS for X ~ Poisson(lam) (Bernstein; +2 for float slack)."""
    t = (TAIL_BITS + 1) * math.log(2)
    x = math.ceil(t / 3 + math.sqrt(t * t / 9 + 2 * lam * t)) + 2
    return max(0, lam - x), lam + x


def draw_tv_bound(lam: int) -> float:
    """Total-variation distance of one table draw from Poisson(lam): tails plus CDF flooring."""
    lo, hi = _window(lam)
    return 2.0**-TAIL_BITS + (hi - lo + 2) * 2.0 ** -(CDF_BITS - 1)


@dataclass(frozen=True, eq=False)
class PoissonTable:
    """The floored CDF_BITS-bit CDF of Poisson(lam) over its window: top 64-bit words, and the rest."""

    lam: int
    lo: int
    cdf_hi: npt.NDArray[np.uint64]
    cdf_rest: npt.NDArray[np.uint64]  # (entries, CDF_BITS/64 - 1), most significant first

    @classmethod
    @functools.lru_cache(maxsize=4)
    def build(cls, lam: int) -> "PoissonTable":
        lo, hi = _window(lam)
        guard = CDF_BITS + 2 * (hi - lo).bit_length() + 16  # truncation errors stay far below 2^-CDF_BITS
        w = one = 1 << guard
        up = []
        for k in range(lam, hi):  # p(k+1) = p(k) * lam / (k+1)
            w = w * lam // (k + 1)
            up.append(w)
        w, down = one, []
        for k in range(lam, lo, -1):  # p(k-1) = p(k) * k / lam
            w = w * k // lam
            down.append(w)
        weights = [*reversed(down), one, *up]
        total, acc, cdf = sum(weights), 0, []
        for wk in weights[:-1]:  # the last entry's CDF is 1: never compared
            acc += wk
            cdf.append(((acc << CDF_BITS) // total).to_bytes(CDF_BITS // 8, "big"))
        words = np.frombuffer(b"".join(cdf), dtype=">u8").reshape(-1, CDF_BITS // 64).astype(np.uint64)
        return cls(lam, lo, np.ascontiguousarray(words[:, 0]), np.ascontiguousarray(words[:, 1:]))

    def _rest(self, j: int) -> int:
        return _words(self.cdf_rest[j])

    def sample(self, size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """``size`` draws: k = lo + #{j : cdf[j] <= u} for u uniform on [0, 2^CDF_BITS).

        u's top word decides unless it equals a table entry's top word (probability about
        entries * 2^-64 per draw); only then are u's remaining words drawn and compared."""
        out = np.empty(size, dtype=np.int64)
        for start in range(0, size, _CHUNK):
            n = min(_CHUNK, size - start)
            keys = rng.integers(0, _U64_MAX, n, dtype=np.uint64, endpoint=True)
            order = np.argsort(keys)  # sorted keys make the binary searches cache-friendly
            keys = keys[order]
            idx = np.searchsorted(self.cdf_hi, keys, side="right")  # entries whose top word <= u's
            for j in np.flatnonzero((idx > 0) & (self.cdf_hi[np.maximum(idx - 1, 0)] == keys)):
                first = int(np.searchsorted(self.cdf_hi, keys[j], side="left"))
                u_rest = _words(rng.integers(0, _U64_MAX, CDF_BITS // 64 - 1, dtype=np.uint64, endpoint=True))
                idx[j] = first + sum(1 for e in range(first, int(idx[j])) if self._rest(e) <= u_rest)
            view = out[start:start + n]
            view[order] = idx + self.lo
        return out


def _words(w: npt.NDArray[np.uint64]) -> int:
    """uint64 words, most significant first, as one integer."""
    return int.from_bytes(w.astype(">u8").tobytes(), "big")


def skellam(variance: float, size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Skellam noise Poisson(lam) - Poisson(lam), lam = ceil(variance/2): variance >= ``variance``."""
    table = PoissonTable.build(poisson_lambda(variance))
    out = table.sample(size, rng)
    out -= table.sample(size, rng)
    return out

"""Wraparound tests: random ternary projections that make the ring squared-norm check sound.

The norm check (mpc_agg.normcheck) computes S = sum_i x_i**2 modulo 2**64.  A client
can pick coordinates whose squares wrap (one coordinate of 2**32 ring units squares to
0), so S alone proves nothing.  After the reports are fixed, the parties draw a seed
no single party controls (commit, then reveal) and expand it into r public vectors
z_t in {-1, 0, 1}^d (P(0) = 1/2, P(+1) = P(-1) = 1/4, from two keystream bits:
z = b1 - b2).  Each party projects its own share: y_t = <z_t, x> is linear, so the
shares of y_t are computed locally and exactly in the ring.  A report passes only if
|y_t| <= T for every t (signed, in the same batched comparison as the norm test).
Idea from PINE (Rothblum, Omri, Chen, Talwar 2023, arXiv 2311.10237); the bounds below
are ours, for the ring Z_2^64 with shares held by the parties (docs/wraptest.md).

Completeness.  For an honest x with ||x||_2**2 <= bound (the norm check's own bound),
each z_i x_i lies in [-|x_i|, |x_i|], so by Hoeffding P(|y_t| > T) <= 2 exp(-T**2 /
(2 bound)).  With T = sqrt(2 bound ln(2 r / FALSE_REJECT)), all r tests pass except with
probability FALSE_REJECT = 2**-30.

Soundness.  Read x as signed integers x~ in [-2**63, 2**63).  If ||x~||_2 <= 2**31 then
sum x~_i**2 <= 2**62 does not wrap and the norm test is exact.  Otherwise each test
passes with probability <= 1/2:
* some |x~_i| > 2T: of R + z_i x~_i (z_i in {-1,0,1}, R the rest of the sum, mod
  2**64), either only z_i = 0 or at most z_i = +-1 lands in [-T, T]: probability <= 1/2;
* all |x~_i| <= 2T: then |y| <= 2Td < 2**63 - T (no wrap; true for d <= 2**31 under the
  condition below) and, by Berry-Esseen (constant 0.56, Shevtsova 2010, with
  sum E|z_i x_i|**3 <= 2T sigma**2, sigma**2 = ||x~||**2 / 2 > 2**61),
  P(|y| <= T) <= (sqrt(2/pi) + 2 * 0.56 * 2) T / sigma <= 1/2
  whenever T <= MAX_T = 2**30.5 / 6.08.
So a report whose true squared norm exceeds the bound passes with probability <= 2**-r
(the z_t are independent and drawn after the report was fixed); r = 40.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import ConfigError

__all__ = ["TESTS", "FALSE_REJECT", "MAX_T", "threshold", "check_fits", "ternary", "project", "combine_seed",
           "BLOCK"]

TESTS = 40
"""r: projections per report; a cheat passes all with probability <= 2**-40."""
FALSE_REJECT = 2.0**-30
"""Probability that an honest report within the bound fails any projection test."""
MAX_T = 2.0**30.5 / (2 * (math.sqrt(2 / math.pi) + 4 * 0.56))
"""Largest threshold for which a single test has soundness error <= 1/2 (module docstring)."""
BLOCK = 1 << 14
"""Coordinates per projection block: the float64 ternary block is TESTS x BLOCK (5 MB, cache-sized;
blocks of 65,536 took 45% more CPU, measured in-process at n = 10, d = 10**6)."""

# every byte gives four z values, two bits each: (b1, b2) -> b1 - b2; the four int8 values of a byte are
# packed in one uint32, so expanding a keystream is one gather of 4-byte words
_TABLE = np.ascontiguousarray(
    np.array([[((byte >> (2 * k)) & 1) - ((byte >> (2 * k + 1)) & 1) for k in range(4)] for byte in range(256)],
             dtype=np.int8)).view(np.uint32).reshape(256)


def threshold(bound: int, tests: int = TESTS, false_reject: float = FALSE_REJECT) -> int:
    """T for squared-norm ``bound`` (ring units): Hoeffding, union over ``tests`` tests."""
    return int(math.ceil(math.sqrt(2.0 * bound * math.log(2 * tests / false_reject))))


def check_fits(bound: int) -> int:
    """T for ``bound``, or ConfigError when the wrap test cannot be sound there (T > MAX_T)."""
    t = threshold(bound)
    if t > MAX_T:
        raise ConfigError(
            f"verify_norm: the projection threshold {t:.3g} exceeds {MAX_T:.3g} ring units, so the wraparound test "
            f"would not be sound; lower frac_bits (each step halves it) or clip_norm")
    return t


def combine_seed(reveals: list[bytes], context: bytes) -> bytes:
    """The public projection seed from every party's revealed 32-byte contribution."""
    return hashlib.sha256(b"mpc-agg wraptest v1|" + context + b"|" + b"".join(reveals)).digest()


def ternary(seed: bytes, start: int, count: int, tests: int = TESTS) -> npt.NDArray[np.float64]:
    """Rows z_t[start : start+count] for t < tests, as a (tests, count) float64 matrix.

    The block's values are the AES-128-CTR keystream of ``seed`` with nonce ``start``, four
    values per byte, row after row: the same at every party for the same block."""
    nbytes = -(-count // 4)
    enc = Cipher(algorithms.AES(seed[:16]), modes.CTR(start.to_bytes(8, "big") + bytes(8))).encryptor()
    ks = np.frombuffer(enc.update(bytes(tests * nbytes)), dtype=np.uint8)
    out = np.empty((tests, 4 * nbytes))
    np.copyto(out.reshape(-1), _TABLE[ks].view(np.int8), casting="unsafe")
    return out[:, :count]


def project(z: npt.NDArray[np.float64], shares: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """(tests, reports) projections <z_t, s_j> mod 2**64 of int64 rows ``shares`` (reports, count).

    Exact: each share is split into two 32-bit halves, each product sum is below
    count * 2**32 <= 2**53 (count <= BLOCK) and so exact in float64 (BLAS), and the halves
    are recombined with wrapping int64 arithmetic."""
    if shares.shape[1] > BLOCK:
        raise ValueError(f"project takes at most {BLOCK} coordinates at a time")
    n, count = shares.shape
    words = shares.astype("<i8", copy=False).view("<u4").reshape(n, count, 2)  # (low, high) 32-bit halves
    halves = np.empty((2 * n, count))
    np.copyto(halves[:n], words[:, :, 0], casting="unsafe")
    np.copyto(halves[n:], words[:, :, 1], casting="unsafe")
    both = z @ halves.T  # (tests, 2 * reports)
    return both[:, :n].astype(np.int64) + (both[:, n:].astype(np.int64) << np.int64(32))

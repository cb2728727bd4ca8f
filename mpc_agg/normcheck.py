"""Verified clipping: the parties check each report's L2 norm in MPC and learn one bit per report.

For every report j the parties hold additive shares of its ring vector
x_j (d update coordinates plus the weight coordinate W_j).  They compute shares of
S_j = sum_i x_ji**2, batched over all reports and chunks of coordinates (the
number of communication rounds grows with d/chunk, not with n), either

* k = 3: by 2-out-of-3 replicated sharing.  Each party also gets the next
  party's share (helpers' shares are 32-byte seeds; only the leader's dense share
  travels, to party 2), and computes its share of S_j locally.  Private unless
  two parties collude.  Moves 8·d bytes per report between parties; or
* any k: with CrypTen over the ZeroMQ communicator and Beaver square tuples from
  the dealer (one ``square`` opening per chunk).  Private unless the dealer
  colludes with a party.  Moves k(k-1)·8·d bytes per report,

and, in the same pass over the shares, shares of r = 40 random ternary projections
y_tj = <z_t, x_j> (mpc_agg.wraptest: the seed is drawn by the parties after the
reports are fixed; at k = 3 two of the parties project, see ``verify_norms``).  Then
the sign tests of all reports go into one boolean circuit (mpc_agg.signcircuit: AND
triples from the dealer; a dealer colluding with a party could learn norms and
projections there, not updates):

    S_j >= 0,  S_j <= bound,  W_j >= 2**f,  W_j <= 2**f,  |y_tj| <= T  (t < r)

which reveals only whether all of them hold: accept or reject.  No party sees a
norm, a projection, or which test failed.

``norm_bound`` is the squared bound in ring units (scale 2**(2f)).  It covers the
vector *as shared*: clipped to C, rounded, and, in noised rounds, with the
client's Skellam noise added (the noise is added after clipping and cannot be
separated from the update).  Slack, each term documented:

* rounding: the DDG bound ``rounded_norm_bound(C*2**f, d)`` (randomised rounding;
  it also covers round-to-nearest, whose error is at most sqrt(d)/2);
* noise: E||nu||**2 = d*s2 for per-coordinate variance s2, plus 10 standard
  deviations of ||nu||**2 (sqrt(2d)*s2) and of the cross term 2<x, nu> (2*B*sqrt(s2)).

So without noise the bound is tight (C plus rounding); with noise a client can
hide at most about the noise's own magnitude, which no check on a noised
vector can avoid.  Verified rounds need weight 1 (checked).  A client that crafts
coordinates whose squares wrap modulo 2**64 (S_j small although the true norm is
huge) fails the projection tests except with probability 2**-40 (soundness argument
in mpc_agg.wraptest and docs/wraptest.md); rounds whose bound makes that argument
fail are refused when the spec is made (ConfigError).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from . import signcircuit, wraptest
from .dp import rounded_norm_bound
from .errors import ConfigError

__all__ = ["norm_bound", "verify_norms", "check_weights", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 1 << 21
"""Ring elements per MPC batch (reports x coordinates): bounds memory, sets the round count."""


def norm_bound(*, clip_norm: float, frac_bits: int, dim: int, noise_variance: float = 0.0) -> int:
    """The squared-norm bound (ring units) an honest report always meets; ConfigError if it cannot fit."""
    scale = 2.0**frac_bits
    b = rounded_norm_bound(clip_norm * scale, dim)
    bound = b * b
    if noise_variance > 0:
        bound += dim * noise_variance + 10 * (math.sqrt(2 * dim) * noise_variance + 2 * b * math.sqrt(noise_variance))
    if bound >= 2.0**62:
        raise ConfigError(f"verify_norm: the squared bound {bound:.3g} does not fit the ring; lower frac_bits")
    return int(math.ceil(bound))


def verify_norms(read_chunk: Callable[[int, int], np.ndarray], reports: int, dim: int, *,
                 bound: int, frac_bits: int, wrap_seed: bytes,
                 next_rows: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
                 project: tuple[bool, bool] = (True, False), chunk: int | None = None) -> list[bool]:
    """Accept/reject bits for ``reports`` shared vectors of ``dim`` values (+ weight at index ``dim``).

    ``read_chunk(start, count)`` returns this party's int64 shares, shape (reports, count), of
    coordinates ``start .. start+count``.  Must run on every party at once inside an active
    CrypTen session (:func:`mpc_agg.crypten_glue.activate`) with the dealer provider.

    ``wrap_seed`` (the same at every party, drawn after the reports were fixed) makes the
    wraparound tests' projections (mpc_agg.wraptest), computed in the same pass over the shares.

    ``next_rows`` (k = 3 only) switches the squares to replicated sharing: given the same chunk
    of this party's shares, it returns party (i+1) mod 3's shares of it, and the squared norm's
    share is computed locally as ``sum(s_i * (s_i + 2 * s_next))`` (the three terms add up to
    (s_0 + s_1 + s_2)**2; Araki et al., CCS 2016, 2-out-of-3 sharing) with no Beaver opening.

    ``project`` = (own, next): which of the shares this party holds go into its share of the
    projections.  Projections are linear, so any choice that covers every share exactly once over
    the parties is a sharing of y = <z, x>: each party its own (the default, any k), or at k = 3
    (parties.cohort) party 0 none, party 1 s_1 + s_2 and party 2 s_0: two projections of the
    reports instead of three.

    ``chunk``: ring elements per chunk (default ``CHUNK_ELEMENTS``); smaller suits k = 3, where a
    chunk costs no MPC round.
    """
    from crypten.mpc.primitives import ArithmeticSharedTensor, beaver

    if reports == 0:
        return []
    limit = wraptest.check_fits(bound)
    step = max(64, ((chunk or CHUNK_ELEMENTS) // reports) & ~63)  # keystream slices start on AES blocks
    total = torch.zeros(reports, dtype=torch.int64)
    proj = np.zeros((wraptest.TESTS, reports), dtype=np.int64)
    for start in range(0, dim, step):
        count = min(step, dim - start)
        mine = read_chunk(start, count)
        nxt = None
        if next_rows is not None:  # int64 arithmetic wraps: exactly the ring Z_2^64
            nxt = next_rows(start, count, mine)
            total += torch.from_numpy((mine * (mine + 2 * nxt)).sum(axis=1))
        else:
            x = ArithmeticSharedTensor.from_shares(torch.from_numpy(mine), precision=0)
            total += beaver.square(x).share.sum(dim=1)
        rows = _projected(mine, nxt, project)
        for off in range(0, count if rows is not None else 0, wraptest.BLOCK):
            c = min(wraptest.BLOCK, count - off)
            proj += wraptest.project(wraptest.ternary(wrap_seed, start + off, c), rows[:, off:off + c])
    weight = torch.from_numpy(read_chunk(dim, 1)[:, 0].copy())
    one = 1 << frac_bits
    return _all_nonnegative(total, weight, torch.from_numpy(proj), bound=bound, one=one, limit=limit)


def _projected(mine: np.ndarray, nxt: np.ndarray | None, project: tuple[bool, bool]) -> np.ndarray | None:
    """The rows this party projects: its own share, the next party's, their sum (mod 2**64) or none."""
    own, other = project
    if not other:
        return mine if own else None
    if nxt is None:
        raise ConfigError("verify_norms: project=(_, True) needs next_rows")
    return mine + nxt if own else nxt


def _all_nonnegative(total: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor, *, bound: int, one: int,
                     limit: int) -> list[bool]:
    """Every test of every report (each must be >= 0) in one boolean circuit that reveals only
    whether all of a report's tests hold (mpc_agg.signcircuit):

        S_j >= 0,  bound - S_j >= 0,  W_j - 2**f >= 0,  2**f - W_j >= 0,
        y_tj + T >= 0,  T - y_tj >= 0   (t < r, the wraparound tests)."""
    engine = signcircuit.DealerEngine()
    pub = _public(engine.rank)
    tests = torch.cat([torch.stack([total, pub(bound) - total, weight - pub(one), pub(one) - weight]),
                       proj + pub(limit), pub(limit) - proj])
    return signcircuit.all_nonnegative(engine, tests)


def _public(rank: int) -> Callable[[int], int]:
    """A public constant's additive share: the constant at party 0, 0 elsewhere."""
    return lambda c: c if rank == 0 else 0


def check_weights(weights: np.ndarray, *, bound: int) -> list[bool]:
    """Accept/reject bits: is each report's shared weight coordinate W_j in [1, bound] (ring units)?

    ``weights`` is this party's int64 share of each W_j.  The two sign tests
    W_j - 1 >= 0 and bound - W_j >= 0 go into the sign circuit (dealer triples, as
    above); only whether both hold is revealed.  A single ring element
    compared by its sign cannot wrap: every int64 value outside [1, bound] fails.
    Must run on every party at once inside an active CrypTen session."""
    if weights.size == 0:
        return []
    engine = signcircuit.DealerEngine()
    pub = _public(engine.rank)
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.int64))
    return signcircuit.all_nonnegative(engine, torch.stack([w - pub(1), pub(bound) - w]))

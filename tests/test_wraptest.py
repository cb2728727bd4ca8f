"""The wraparound tests' math in-process (mpc_agg.wraptest): exact ring projections, and their soundness
and completeness measured at reduced parameters (one test, many seeds)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpc_agg import wraptest
from mpc_agg.errors import ConfigError
from mpc_agg.spec import RoundSpec

pytestmark = pytest.mark.timeout(120)
F = 24


def _ring(x: np.ndarray) -> np.ndarray:
    return np.rint(x * 2.0**F).astype(np.int64)


def _passes(x: np.ndarray, limit: int, trials: int) -> float:
    """Fraction of fresh seeds for which one projection test passes (|<z, x>| <= T, signed, mod 2**64)."""
    ok = 0
    for _ in range(trials):
        z = wraptest.ternary(os.urandom(32), 0, x.size, tests=1)
        y = sum(int(wraptest.project(z[:, i:i + wraptest.BLOCK], x[None, i:i + wraptest.BLOCK])[0, 0])
                for i in range(0, x.size, wraptest.BLOCK))
        y = (y + 2**63) % 2**64 - 2**63
        ok += abs(y) <= limit
    return ok / trials


def test_projection_of_shares_is_the_projection_of_the_vector() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-2**63, 2**63 - 1, size=(1, 70_000), dtype=np.int64)
    shares = [rng.integers(-2**63, 2**63 - 1, size=x.shape, dtype=np.int64) for _ in range(2)]
    shares.append(x - shares[0] - shares[1])  # wraps: the ring
    seed = os.urandom(32)
    total = np.zeros((wraptest.TESTS, 1), dtype=np.int64)
    direct = np.zeros_like(total)
    for off in range(0, x.shape[1], wraptest.BLOCK):
        z = wraptest.ternary(seed, off, min(wraptest.BLOCK, x.shape[1] - off))
        for s in shares:
            total += wraptest.project(z, s[:, off:off + z.shape[1]])
        direct += wraptest.project(z, x[:, off:off + z.shape[1]])
        exact = [sum(int(a) * int(b) for a, b in zip(z[t, :50], x[0, off:off + 50])) for t in range(3)]
        partial = wraptest.project(z[:3, :50], x[:, off:off + 50])[:, 0]
        assert [int(v) % 2**64 for v in partial] == [e % 2**64 for e in exact]
    assert np.array_equal(total, direct)


def test_ternary_distribution_and_determinism() -> None:
    seed = os.urandom(32)
    z = wraptest.ternary(seed, 128, 100_000)
    assert np.array_equal(z, wraptest.ternary(seed, 128, 100_000))
    assert not np.array_equal(z, wraptest.ternary(seed, 192, 100_000))
    frac = [(z == v).mean() for v in (-1, 0, 1)]
    assert abs(frac[0] - 0.25) < 0.005 and abs(frac[1] - 0.5) < 0.005 and abs(frac[2] - 0.25) < 0.005


@pytest.mark.parametrize("name,coords", [
    ("one coordinate of 2**32", {7: 2**32}),
    ("one coordinate of 2**63", {7: -2**63}),
    ("16384 of 2**25", {i: (-1) ** i * 2**25 for i in range(16_384)}),
    ("1024 near T", {i: 2**27 for i in range(1024)}),
])
def test_one_test_rejects_a_wrapping_cheat_at_least_half_the_time(name: str, coords: dict[int, int]) -> None:
    x = np.zeros(20_000, dtype=np.int64)
    for i, v in coords.items():
        x[i] = v
    assert int((x.astype(object) ** 2).sum()) % 2**64 < 2**48  # the squared norm alone would accept it
    limit = wraptest.check_fits(2**48)
    rate = _passes(x, limit, 600)
    assert rate <= 0.5 + 3 * (0.25 / 600) ** 0.5, (name, rate)  # the bound per test, 3 sigma of slack


def test_false_rejects_stay_within_the_completeness_bound() -> None:
    """At a reduced target (5% for one test) honest vectors at the bound are rejected at most that often."""
    rng = np.random.default_rng(7)
    bound = 2**48
    limit = wraptest.threshold(bound, tests=1, false_reject=0.05)
    rejected = 0
    trials = 1500
    for k in range(trials):
        v = rng.normal(size=2000) if k % 2 else rng.choice([-1.0, 1.0], size=2000) * (np.arange(2000) < 3)
        x = _ring(v / np.linalg.norm(v) * 0.999)
        rejected += _passes(x, limit, 1) == 0
    assert rejected / trials <= 0.05, rejected / trials


def test_rounds_where_the_test_cannot_be_sound_are_refused() -> None:
    assert RoundSpec.create(1, {"w": (10,)}, clip_norm=1.0, verify_norm=True).norm_bound() >= 2**48
    with pytest.raises(ConfigError, match="wraparound"):
        RoundSpec.create(1, {"w": (10,)}, clip_norm=4.0, frac_bits=24, verify_norm=True)
    with pytest.raises(ConfigError, match="wraparound"):  # the noise's norm counts: d = 1e6 at z = 1
        RoundSpec.create(1, {"w": (1_000_000,)}, clip_norm=1.0, noise_multiplier=1.0, frac_bits=16,
                         verify_norm=True)
    # frac_bits=None picks the finest grid at which the noise fits its sampler and the test is sound
    auto = RoundSpec.create(1, {"w": (1_000_000,)}, clip_norm=1.0, noise_multiplier=1.0, verify_norm=True)
    assert auto.frac_bits < 16 and wraptest.threshold(auto.norm_bound()) <= wraptest.MAX_T
    assert RoundSpec.create(1, {"w": (10,)}, clip_norm=4.0, verify_norm=True).frac_bits == 23
    assert wraptest.threshold(2**48) < wraptest.MAX_T

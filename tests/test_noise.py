"""The exact Skellam sampler (mpc_agg.noise): its table against the exact pmf, distribution tests at every
accepted noise scale, the same tests failing on the old numpy sampler, and what the spec accepts."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from randomgen import AESCounter

from fl_client.client import SecureAggClient
from mpc_agg.dp import SkellamRound, skellam_epsilon
from mpc_agg.errors import ConfigError, NoiseRangeError, RangeError
from mpc_agg.fixedpoint import HEADROOM_BITS, MAX_FRAC_BITS, MAX_REPORTS_PER_ROUND, encode
from mpc_agg.noise import (
    CDF_BITS,
    MAX_CLIENT_SIGMA,
    MIN_CLIENT_SIGMA,
    PoissonTable,
    client_variance,
    draw_tv_bound,
    poisson_lambda,
    skellam,
)
from mpc_agg.spec import RoundSpec
from noise_stats import poisson_fit, skellam_checks

pytestmark = pytest.mark.timeout(120)
KEY = 0x5EED_0017  # a fixed AES key: the statistical tests below are deterministic and cannot flake


def _rng() -> np.random.Generator:
    return np.random.Generator(AESCounter(key=KEY))


@pytest.mark.parametrize("lam", [MIN_CLIENT_SIGMA**2 // 2, MAX_CLIENT_SIGMA**2 // 2])
def test_table_probabilities_equal_the_exact_pmf(lam: int) -> None:
    mpmath.mp.dps = 80
    table = PoissonTable.build(lam)

    def cdf(j: int) -> int:
        return (int(table.cdf_hi[j]) << (CDF_BITS - 64)) | table._rest(j)

    for dev in (0, 1, -1, 3.3, -3.3, 7, -7, 9, -9, 12, -12):
        k = lam + int(dev * math.sqrt(lam))
        q = mpmath.mpf(cdf(k - table.lo) - cdf(k - table.lo - 1)) / mpmath.mpf(2) ** CDF_BITS
        p = mpmath.exp(-lam + k * mpmath.log(lam) - mpmath.loggamma(k + 1))
        assert abs(q - p) <= mpmath.mpf(2) ** -(CDF_BITS - 2), (k, p, q)
    assert draw_tv_bound(lam) < 2.0**-170


def test_ties_on_the_top_word_are_decided_by_the_low_words() -> None:
    """u's low words are drawn only when its top word equals an entry's; then the full value decides."""
    table = PoissonTable(0, 100, np.array([5, 5, 7], dtype=np.uint64),
                         np.array([[0, 10], [0, 20], [0, 0]], dtype=np.uint64))

    class Words:  # returns the top words asked for, then the low words of each tie in turn
        def __init__(self, tops: list[int], lows: list[int]) -> None:
            self.tops, self.lows = tops, lows

        def integers(self, *a: object, **kw: object) -> np.ndarray:
            n = a[2] if len(a) > 2 else 1
            if self.tops:
                out, self.tops = self.tops, []
                return np.array(out, dtype=np.uint64)
            return np.array([0] * (int(n) - 1) + [self.lows.pop(0)], dtype=np.uint64)  # type: ignore[call-overload]

    # u = (5, 0, 9) < cdf[0] -> 100; (5, 0, 15) -> 101; (5, 0, 25) -> 102; (6, ...) -> 102; (4, ...) -> 100
    # (the three ties take the low words in the order of the sort, which may permute them)
    out = table.sample(5, Words([5, 5, 5, 6, 4], [9, 15, 25]))  # type: ignore[arg-type]
    assert sorted(out[:3].tolist()) == [100, 101, 102] and out[3:].tolist() == [102, 100]


@pytest.mark.parametrize("sigma", [MIN_CLIENT_SIGMA, 2**12, MAX_CLIENT_SIGMA])
def test_draws_pass_the_distribution_tests_at_every_accepted_scale(sigma: int) -> None:
    variance = float(sigma) ** 2
    x = skellam(variance, 1_000_000, _rng())
    res = skellam_checks(x, 2 * poisson_lambda(variance))  # the sampler rounds lambda up
    assert min(res["parity"], res["low8"], res["fit"]) > 1e-4, res
    assert res["var_ratio"] == pytest.approx(1.0, abs=0.01)


def test_the_same_tests_fail_on_numpy_poisson_where_the_spec_now_refuses() -> None:
    rng = _rng()
    # frac_bits 28, z = C = 1, three clients (issue 17): numpy's draws are all even, the parity is the data's
    mu = client_variance(1.0, 1.0, 28, 3)
    old = rng.poisson(mu / 2, 200_000).astype(np.int64) - rng.poisson(mu / 2, 200_000).astype(np.int64)
    assert skellam_checks(old, mu)["parity"] < 1e-12
    # the old default (frac_bits 24): a single Poisson draw fails a goodness-of-fit test at 1e6 draws
    lam = client_variance(1.0, 1.0, 24, 3) / 2
    assert poisson_fit(rng.poisson(lam, 1_000_000).astype(np.int64), lam) < 1e-8
    for f in (24, 28):  # both are refused now, with a typed error naming the range that fits
        with pytest.raises(NoiseRangeError, match=r"frac_bits in \[9, 16\]"):
            RoundSpec.create(1, {"w": (10,)}, clip_norm=1.0, noise_multiplier=1.0, frac_bits=f)
    # and their epsilon (not sampled exactly) is not claimed
    assert skellam_epsilon([SkellamRound(1.0, 1.0, 24, 10, 3)], 1e-5) == math.inf


@pytest.mark.parametrize("z, clip, honest", [(1.0, 1.0, 3), (0.3, 20.0, 10)])
def test_every_frac_bits_is_accepted_in_range_or_refused_typed(z: float, clip: float, honest: int) -> None:
    accepted = []
    for f in range(MAX_FRAC_BITS + 1):
        try:
            spec = RoundSpec.create(1, {"w": (64,)}, min_clients=honest, clip_norm=clip, noise_multiplier=z,
                                    frac_bits=f)
        except NoiseRangeError:
            assert not MIN_CLIENT_SIGMA**2 <= client_variance(z, clip, f, honest) <= MAX_CLIENT_SIGMA**2
            continue
        accepted.append(f)
        event = SkellamRound.from_spec(spec)
        assert event is not None and math.isfinite(skellam_epsilon([event], 1e-5))
        x = np.full(64, clip / 8)  # norm = clip: the client noises and encodes it without error
        ints = SecureAggClient._noised(x, event, clipped=True)
        assert ints.dtype == np.int64 and int(np.max(np.abs(ints))) < 2 ** (63 - HEADROOM_BITS)
    # sigma in [2^8, 2^16]: eight consecutive values of frac_bits (nine when both ends are hit exactly)
    assert len(accepted) in (8, 9) and accepted == list(range(accepted[0], accepted[-1] + 1))
    auto = RoundSpec.create(1, {"w": (64,)}, min_clients=honest, clip_norm=clip, noise_multiplier=z)
    assert auto.frac_bits == accepted[-1]  # None: the finest grid in range
    with pytest.raises(ConfigError):
        RoundSpec.create(1, {"w": (64,)}, min_clients=honest, clip_norm=clip, noise_multiplier=z,
                         frac_bits=MAX_FRAC_BITS + 1)


def test_unnoised_encoding_is_typed_at_every_frac_bits_and_sums_cannot_wrap() -> None:
    x = np.array([3.0e5, -1.0, 1e-6])
    for f in range(MAX_FRAC_BITS + 1):
        try:
            encode(x, f)
        except RangeError:
            assert 3.0e5 * 2.0**f >= 2 ** (63 - HEADROOM_BITS) - 0.5
    # 2^47 - 0.3 rounds to 2^47: refused (it used to pass and 65,536 such reports summed to -2^63)
    with pytest.raises(RangeError):
        encode([2.0**47 - 0.3], 0)
    top = int(encode([2.0**47 - 0.6], 0)[0])
    assert top == 2**47 - 1
    total = np.full(MAX_REPORTS_PER_ROUND + 1, top, dtype=np.int64).sum()  # + 1: one upload in flight
    assert 0 < total < 2**63

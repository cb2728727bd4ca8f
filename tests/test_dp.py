"""Differential privacy: accountant golden values, Skellam noise through the real protocol, floors, ledger."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fl_client import SecureAggClient
from mpc_agg.dp import (
    PrivacyLedger,
    SkellamRound,
    csprng,
    gaussian_epsilon,
    randomized_round,
    rounded_norm_bound,
    skellam_epsilon,
    skellam_noise,
)
from mpc_agg.errors import BudgetExceededError, NoiseFloorError
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(240)


def test_golden_rdp_epsilon_and_pld_is_tighter() -> None:
    # Abadi et al. 2016 / Opacus setting: z=1.5, q=0.04, 2,250 steps, delta=1e-5 → RDP eps 7.3291
    rdp = gaussian_epsilon(1.5, 0.04, 2250, 1e-5, accountant="rdp")
    assert rdp == pytest.approx(7.3291, abs=1e-3)
    assert gaussian_epsilon(1.5, 0.04, 2250, 1e-5, accountant="pld") < rdp


def test_skellam_matches_gaussian_at_high_precision() -> None:
    # with fine quantisation the Skellam bound approaches the Gaussian one (Agarwal et al. 2021, Fig. 1)
    r = SkellamRound(noise_multiplier=1.0, clip_norm=1.0, frac_bits=24, dim=10_000, min_clients=3)
    sk = skellam_epsilon([r] * 10, 1e-5)
    ga = gaussian_epsilon(1.0, 1.0, 10, 1e-5)
    assert ga <= sk <= ga * 1.1
    assert skellam_epsilon([r] * 20, 1e-5) > sk  # composition grows


def test_skellam_noise_moments_and_integrality() -> None:
    x = skellam_noise(1e6, 200_000, csprng())
    assert x.dtype == np.int64
    assert abs(x.mean()) < 5 * np.sqrt(1e6 / 200_000)
    assert x.var() == pytest.approx(1e6, rel=0.02)


def test_randomized_rounding_is_unbiased_and_bounded() -> None:
    rng = csprng()
    x = np.full(100_000, 0.25)
    r = randomized_round(x, rounded_norm_bound(float(np.linalg.norm(x)), x.size), rng)
    assert set(np.unique(r)) <= {0, 1}
    assert r.mean() == pytest.approx(0.25, abs=0.01)


def test_revealed_noise_has_the_target_variance(dep3: LocalDeployment, round_id: int) -> None:
    d, z, clip, n = 20_000, 0.5, 2.0, 3
    with Coordinator.from_config(dep3.config) as coord:
        spec = coord.open_round(round_id, shapes={"w": (d,)}, min_clients=3, clip_norm=clip, noise_multiplier=z,
                                frac_bits=16)
        for i in range(n):
            with SecureAggClient.from_config(dep3.config, f"client-{i}") as c:
                c.submit(round_id, {"w": np.zeros(d)})
        res = coord.close_round(round_id, timeout_s=60)
    total = res.average["w"].numpy() * res.total_weight  # the noised sum
    grid = total * 2**spec.frac_bits
    assert np.array_equal(grid, np.round(grid))  # integer-valued on the fixed-point grid
    target = (z * clip) ** 2
    # sample variance of d draws: relative standard error sqrt(2/(d-1)) ≈ 1%; allow 5 sigma
    assert total.var() == pytest.approx(target, rel=5 * np.sqrt(2 / (d - 1)))
    assert abs(total.mean()) < 5 * np.sqrt(target / d)
    assert stats.kurtosis(total) == pytest.approx(0.0, abs=0.2)  # Gaussian-like at this scale
    assert res.epsilon is not None and res.epsilon > 0 and res.delta == 1e-5


def test_client_refuses_rounds_below_its_own_floor(dep3: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes={"w": (10,)}, min_clients=3, clip_norm=1.0, noise_multiplier=0.3)
        with SecureAggClient.from_config(dep3.config, "client-0", min_noise_multiplier=0.5) as c:
            with pytest.raises(NoiseFloorError):
                c.submit(round_id, {"w": np.zeros(10)})
        with SecureAggClient.from_config(dep3.config, "client-0", max_epsilon=1.0) as c:
            with pytest.raises(NoiseFloorError):  # one round at z=0.3 costs far more than eps=1
                c.submit(round_id, {"w": np.zeros(10)})
        coord.open_round(round_id + 700, shapes={"w": (10,)}, min_clients=3)
        with SecureAggClient.from_config(dep3.config, "client-0", max_epsilon=10.0) as c:
            with pytest.raises(NoiseFloorError):  # no noise at all: infinite epsilon
                c.submit(round_id + 700, {"w": np.zeros(10)})


def test_ledger_survives_restart_and_budget_stops_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = SkellamRound(noise_multiplier=1.0, clip_norm=1.0, frac_bits=20, dim=1000, min_clients=3)
    path = tmp_path / "ledger.json"
    eps = [skellam_epsilon([r] * k, 1e-5) for k in range(1, 6)]
    budget = (eps[2] + eps[3]) / 2  # allows exactly 3 rounds
    ledger = PrivacyLedger.open(path, delta=1e-5, budget=budget)
    for i in range(3):
        ledger.check(i, r)
        assert ledger.record(i, r) == pytest.approx(eps[i])
    reopened = PrivacyLedger.open(path, delta=1e-5, budget=budget)
    assert len(reopened.rounds) == 3 and reopened.epsilon() == pytest.approx(eps[2])
    with pytest.raises(BudgetExceededError):
        reopened.check(3, r)
    assert len(PrivacyLedger.open(path, delta=1e-5).rounds) == 3  # the refusal recorded nothing


def test_coordinator_budget_refuses_to_open(dep3: LocalDeployment, round_id: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Coordinator.from_config(dep3.config, ledger_path=tmp_path / "l.json", epsilon_budget=0.5) as coord:
        with pytest.raises(BudgetExceededError):
            coord.open_round(round_id, shapes={"w": (10,)}, min_clients=3, clip_norm=1.0, noise_multiplier=1.0)

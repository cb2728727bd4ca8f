"""Differential privacy: accountant golden values, exact Skellam noise through the real protocol, floors, ledger."""

from __future__ import annotations

import json
import math
import time

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
from mpc_agg.errors import (AggregationTimeout, BudgetExceededError, DuplicateReportError, NoiseFloorError,
                            NoiseRangeError)
from mpc_agg.noise import poisson_lambda
from mpc_agg.wire import MsgType
from noise_stats import skellam_checks
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(240)


def test_golden_rdp_epsilon_and_pld_is_tighter() -> None:
    # Abadi et al. 2016 / Opacus setting: z=1.5, q=0.04, 2,250 steps, delta=1e-5 → RDP eps 7.3291
    rdp = gaussian_epsilon(1.5, 0.04, 2250, 1e-5, accountant="rdp")
    assert rdp == pytest.approx(7.3291, abs=1e-3)
    assert gaussian_epsilon(1.5, 0.04, 2250, 1e-5, accountant="pld") < rdp


def test_skellam_matches_gaussian_at_high_precision() -> None:
    # with fine quantisation the Skellam bound approaches the Gaussian one (Agarwal et al. 2021, Fig. 1);
    # frac_bits 16 is the finest grid the exact sampler takes for z = C = 1, 3 clients
    r = SkellamRound(noise_multiplier=1.0, clip_norm=1.0, frac_bits=16, dim=10_000, min_clients=3)
    sk = skellam_epsilon([r] * 10, 1e-5)
    ga = gaussian_epsilon(1.0, 1.0, 10, 1e-5)
    assert ga <= sk <= ga * 1.1
    assert skellam_epsilon([r] * 10, 1e-5, exact=True) == pytest.approx(sk, rel=1e-9)  # 2^-170 costs nothing
    assert skellam_epsilon([r] * 20, 1e-5) > sk  # composition grows


def test_fewer_honest_clients_cost_epsilon_and_min_honest_buys_it_back() -> None:
    r = SkellamRound(noise_multiplier=1.0, clip_norm=1.0, frac_bits=16, dim=10_000, min_clients=10)
    eps = [skellam_epsilon([r], 1e-5, honest=h) for h in (10, 8, 5)]
    assert eps[0] < eps[1] < eps[2]  # 2 or 5 of 10 clients skipping their noise
    # the z of the noise actually left: sqrt(h / min_clients) * z
    assert eps[1] == pytest.approx(skellam_epsilon([SkellamRound(math.sqrt(0.8), 1.0, 16, 10_000, 10)], 1e-5),
                                   rel=1e-3)
    cautious = SkellamRound(1.0, 1.0, 16, 10_000, 10, min_honest=8)  # each adds 1/8 of the target variance
    assert cautious.client_variance == pytest.approx(r.client_variance * 10 / 8)
    assert skellam_epsilon([cautious], 1e-5, honest=8) == pytest.approx(eps[0], rel=1e-3)


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
    r = SkellamRound(noise_multiplier=1.0, clip_norm=1.0, frac_bits=16, dim=1000, min_clients=3)
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
    assert reopened.record(2, r) == pytest.approx(eps[2])  # a round id is charged once
    assert len(PrivacyLedger.open(path, delta=1e-5).rounds) == 3


def test_coordinator_budget_refuses_to_open(dep3: LocalDeployment, round_id: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Coordinator.from_config(dep3.config, ledger_path=tmp_path / "l.json", epsilon_budget=0.5) as coord:
        with pytest.raises(BudgetExceededError):
            coord.open_round(round_id, shapes={"w": (10,)}, min_clients=3, clip_norm=1.0, noise_multiplier=1.0)


def test_default_noised_round_reveals_exact_skellam_noise(dep3: LocalDeployment, round_id: int) -> None:
    """The API's defaults (frac_bits fitted to the noise), three clients submitting zeros through real processes:
    the revealed noise has uniform low bits, the target variance within 1%, and fits the exact Skellam law.
    (Clients draw from os.urandom-keyed generators, so the thresholds allow for chance: p > 1e-6.)"""
    d = 1 << 20
    with Coordinator.from_config(dep3.config) as coord:
        spec = coord.open_round(round_id, shapes={"w": (d,)}, min_clients=3, clip_norm=1.0, noise_multiplier=1.0)
        assert spec.frac_bits == 16  # the finest grid whose per-client noise std (2^16/sqrt 3) the sampler takes
        for i in range(3):
            with SecureAggClient.from_config(dep3.config, f"client-{i}") as c:
                c.submit(round_id, {"w": np.zeros(d)})
        res = coord.close_round(round_id, timeout_s=120)
    ring = res.average["w"].numpy() * res.total_weight * 2**spec.frac_bits
    noise = np.rint(ring).astype(np.int64)
    assert np.array_equal(noise, ring)  # integers on the fixed-point grid
    lam = poisson_lambda((2.0**spec.frac_bits) ** 2 / 3)  # each client's Poisson mean (rounded up)
    checks = skellam_checks(noise, 3 * 2 * lam)
    assert min(checks["parity"], checks["low8"], checks["fit"]) > 1e-6, checks
    assert checks["var_ratio"] == pytest.approx(1.0, abs=0.01)
    assert 3 * 2 * lam / (2.0**spec.frac_bits) ** 2 == pytest.approx(1.0, abs=1e-6)  # = (z C 2^f)^2


def test_noise_outside_the_sampler_range_is_refused_by_coordinator_and_parties(dep3: LocalDeployment,
                                                                             round_id: int) -> None:
    """Issue 17's round (frac_bits 28, z = C = 1, 3 clients) had all-even noise: now nobody opens it."""
    with Coordinator.from_config(dep3.config) as coord:
        with pytest.raises(NoiseRangeError, match="frac_bits in"):
            coord.open_round(round_id, shapes={"w": (10,)}, min_clients=3, clip_norm=1.0, noise_multiplier=1.0,
                             frac_bits=28)
        raw = coord.open_round(round_id, shapes={"w": (10,)}, min_clients=3, clip_norm=1.0,
                               noise_multiplier=1.0).to_json()
        for p in range(3):  # a coordinator that skips its own validation: each party refuses, typed
            with pytest.raises(NoiseRangeError):
                coord._links[p].request(MsgType.OPEN_ROUND, {"spec": {**raw, "round_id": round_id + 1, "frac_bits": 28}},
                                      timeout_s=20, what=f"party {p}")


def test_client_ledger_persists_by_default_and_charges_a_timed_out_delivery_once(dep3: LocalDeployment,
                                                                                round_id: int) -> None:
    ledger = dep3.deployment.client("client-4").ledger_path
    assert ledger is not None and ledger.name == "privacy-ledger.json"
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes={"w": (10,)}, min_clients=3, clip_norm=1.0, noise_multiplier=1.0)
        with SecureAggClient.from_config(dep3.config, "client-4") as c:
            fetch = c.fetch_spec

            def fetch_then_hurry(rid: int):  # type: ignore[no-untyped-def]
                spec = fetch(rid)
                c.timeout_s = 1e-4  # the report leaves, its acknowledgements cannot arrive in time
                return spec

            c.fetch_spec = fetch_then_hurry  # type: ignore[method-assign]
            with pytest.raises(AggregationTimeout):
                c.submit(round_id, {"w": np.zeros(10)})
        spent = json.loads(ledger.read_text())["rounds"]
        assert [r["round_id"] for r in spent] == [round_id] and spent[0]["epsilon"] > 0
        time.sleep(0.5)
        with SecureAggClient.from_config(dep3.config, "client-4") as c:  # a new process would see the same file
            assert c.ledger.epsilon() == pytest.approx(spent[0]["epsilon"])
            with pytest.raises(DuplicateReportError):  # the parties hold (part of) the first attempt
                c.submit(round_id, {"w": np.zeros(10)})
        assert [r["round_id"] for r in json.loads(ledger.read_text())["rounds"]] == [round_id]  # charged once

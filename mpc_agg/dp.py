"""Distributed differential privacy: Skellam noise in the ring, randomised rounding, accounting.

Mechanism (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS 2021): after clipping to L2 norm ``C`` and
scaling by ``s = 2**frac_bits``, each client rounds its vector *randomly and
conditionally* to integers (Kairouz, Liu, Steinke, "The Distributed Discrete
Gaussian Mechanism", ICML 2021, §4: resample until the rounded norm is within
a bound that holds with probability 1-beta) and adds Skellam noise
``Poisson(mu_c/2) - Poisson(mu_c/2)`` per coordinate, with
``mu_c = (z * C * s)**2 / min_clients``.  Skellam is closed under summation, so
a cohort of n >= min_clients reports carries Skellam noise of variance
``n * mu_c >= (z*C*s)**2``: the target, without trusting anyone to add it.
All randomness comes from AES-128-CTR (randomgen's ``AESCounter``, keyed from
``os.urandom``), never from a Mersenne Twister.

Accounting: the RDP of the Skellam mechanism (Agarwal et al. 2021, Theorem
3.5), in integer units with L1/L2 sensitivities D1, D2 and variance mu:

    eps(alpha) <= alpha*D2**2/(2*mu) + min(((2*alpha-1)*D2**2 + 6*D1)/(4*mu**2), 3*D1/(2*mu))

composed over rounds by addition and converted to (eps, delta) with
``dp_accounting.rdp.compute_epsilon``.  Gaussian figures (for comparison and the
golden test) come from dp_accounting's RDP and PLD accountants.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import numpy.typing as npt

from .errors import BudgetExceededError, ConfigError

__all__ = [
    "csprng",
    "randomized_round",
    "rounded_norm_bound",
    "skellam_noise",
    "SkellamRound",
    "skellam_rdp",
    "skellam_epsilon",
    "gaussian_epsilon",
    "PrivacyLedger",
    "ORDERS",
]

ORDERS: tuple[int, ...] = tuple(range(2, 64)) + tuple(range(64, 1025, 16))
DEFAULT_BETA = math.exp(-0.5)
MAX_ROUNDING_TRIES = 1000


def csprng() -> np.random.Generator:
    """A numpy Generator driven by AES-128-CTR keyed from ``os.urandom`` (AES-NI when available)."""
    from randomgen import AESCounter

    return np.random.Generator(AESCounter(key=int.from_bytes(os.urandom(16), "little")))


def rounded_norm_bound(norm: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """L2 bound that randomised rounding of a vector of norm ``norm`` meets w.p. >= 1-beta (DDG §4)."""
    return math.sqrt(norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2))


def randomized_round(
    x: npt.NDArray[np.float64], bound: float, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Unbiased randomised rounding to integers, resampled until ``||result||_2 <= bound``."""
    floor = np.floor(x)
    frac = x - floor
    for _ in range(MAX_ROUNDING_TRIES):
        out = floor + (rng.random(x.shape) < frac)
        if float(np.linalg.norm(out)) <= bound:
            return out.astype(np.int64)
    raise ConfigError("conditional rounding failed: the input exceeds the clip bound it was given")


def skellam_noise(mu: float, size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Symmetric Skellam noise with variance ``mu`` per coordinate (Poisson(mu/2) - Poisson(mu/2))."""
    if mu < 0 or not math.isfinite(mu):
        raise ConfigError("Skellam variance must be finite and >= 0")
    if mu == 0:
        return np.zeros(size, dtype=np.int64)
    return rng.poisson(mu / 2, size).astype(np.int64) - rng.poisson(mu / 2, size).astype(np.int64)


@dataclass(frozen=True)
class SkellamRound:
    """The parameters of one noised round, in the integer units of the ring."""

    noise_multiplier: float
    clip_norm: float
    frac_bits: int
    dim: int
    min_clients: int
    sampling_rate: float = 1.0

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    @property
    def central_variance(self) -> float:
        """Variance of the noise in the sum of ``min_clients`` reports (integer units)."""
        return (self.noise_multiplier * self.clip_norm * self.scale) ** 2

    @property
    def client_variance(self) -> float:
        return self.central_variance / self.min_clients

    @property
    def l2_sensitivity(self) -> float:
        return rounded_norm_bound(self.clip_norm * self.scale, self.dim)

    @property
    def l1_sensitivity(self) -> float:
        d2 = self.l2_sensitivity
        return min(d2 * d2, math.sqrt(self.dim) * d2)


def skellam_rdp(rnd: SkellamRound, orders: Sequence[int] = ORDERS) -> npt.NDArray[np.float64]:
    """RDP curve of one Skellam round (Agarwal et al. 2021, Thm 3.5); no subsampling amplification."""
    mu, d1, d2 = rnd.central_variance, rnd.l1_sensitivity, rnd.l2_sensitivity
    if mu <= 0:
        return np.full(len(orders), np.inf)
    return np.array([a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
                     for a in orders])


def skellam_epsilon(rounds: Sequence[SkellamRound], delta: float) -> float:
    """(epsilon at delta) of the composition of Skellam rounds."""
    from dp_accounting.rdp import compute_epsilon

    if not rounds:
        return 0.0
    rdp = sum(skellam_rdp(r) for r in rounds)
    eps, _ = compute_epsilon(list(ORDERS), list(rdp), delta)
    return float(eps)


def gaussian_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
                     *, accountant: str = "rdp") -> float:
    """epsilon of ``steps`` Poisson-subsampled Gaussian mechanisms (dp_accounting RDP or PLD)."""
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant()
    elif accountant == "pld":
        acc = dp_accounting.pld.PLDAccountant()
    else:
        raise ConfigError(f"unknown accountant {accountant!r} (rdp or pld)")
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """The coordinator's record of noised rounds, persisted as JSON after every change.

    ``budget`` (epsilon at ``delta``) stops training: :meth:`check` refuses a
    round that would exceed it; :meth:`record` adds a released round.
    """

    path: Path | None
    delta: float
    budget: float | None = None
    rounds: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None, *, delta: float, budget: float | None = None) -> "PrivacyLedger":
        if not 0 < delta < 1:
            raise ConfigError("delta must be in (0, 1)")
        p = None if path is None else Path(path)
        if p is not None and p.exists():
            try:
                raw = json.loads(p.read_text())
                ledger = cls(p, float(raw["delta"]), raw.get("budget"), list(raw["rounds"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"privacy ledger {p} is corrupt: {exc}") from None
            if ledger.delta != delta:
                raise ConfigError(f"ledger {p} was kept at delta={ledger.delta}, not {delta}")
            if budget is not None:
                ledger.budget = budget
            return ledger
        return cls(p, delta, budget)

    def _events(self) -> list[SkellamRound]:
        return [SkellamRound(**{k: v for k, v in r.items() if k in SkellamRound.__dataclass_fields__})
                for r in self.rounds]

    def epsilon(self) -> float:
        return skellam_epsilon(self._events(), self.delta)

    def epsilon_with(self, rnd: SkellamRound) -> float:
        return skellam_epsilon([*self._events(), rnd], self.delta)

    def check(self, round_id: int, rnd: SkellamRound) -> float:
        """epsilon after ``rnd``; BudgetExceededError if that passes the budget (nothing recorded)."""
        eps = self.epsilon_with(rnd)
        if self.budget is not None and eps > self.budget:
            raise BudgetExceededError(
                f"round {round_id} would raise epsilon to {eps:.4g} > budget {self.budget:g} at delta={self.delta:g}")
        return eps

    def record(self, round_id: int, rnd: SkellamRound) -> float:
        """Record a released round (persisted at once); returns epsilon so far."""
        eps = self.epsilon_with(rnd)
        self.rounds.append({"round_id": round_id, **asdict(rnd), "epsilon": eps})
        self._save()
        return eps

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"delta": self.delta, "budget": self.budget, "rounds": self.rounds}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

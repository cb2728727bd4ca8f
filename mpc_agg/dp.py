"""Distributed differential privacy: Skellam noise in the ring, randomised rounding, accounting.

Mechanism (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS 2021): after clipping to L2 norm ``C`` and
scaling by ``s = 2**frac_bits``, each client rounds its vector *randomly and
conditionally* to integers (Kairouz, Liu, Steinke, "The Distributed Discrete
Gaussian Mechanism", ICML 2021, §4: resample until the rounded norm is within
a bound that holds with probability 1-beta) and adds Skellam noise
``Poisson(mu_c/2) - Poisson(mu_c/2)`` per coordinate, with
``mu_c = (z * C * s)**2 / h`` where ``h`` (``min_honest``, default min_clients) is
the number of cohort clients assumed to add their noise.  Skellam is closed under
summation, so a cohort in which at least h clients follow the protocol carries
Skellam noise of variance ``>= (z*C*s)**2``; nothing verifies a client's noise, and
:func:`skellam_epsilon` with ``honest=`` gives the epsilon when fewer do.  The
noise is drawn by mpc_agg.noise's integer sampler (within 2^-170 of exact Skellam in
total variation per draw; folded into delta here), so a noised round's frac_bits
must keep the per-client noise std in [2^8, 2^16] ring units (mpc_agg.spec).
All randomness comes from AES-128-CTR (randomgen's ``AESCounter``, keyed from
``os.urandom``), never from a Mersenne Twister.

Accounting: the RDP of the Skellam mechanism (Agarwal et al. 2021, Theorem
3.5), in integer units with L1/L2 sensitivities D1, D2 and variance mu:

    eps(alpha) <= alpha*D2**2/(2*mu) + min(((2*alpha-1)*D2**2 + 6*D1)/(4*mu**2), 3*D1/(2*mu))

composed over rounds by addition and converted to (eps, delta) with
``dp_accounting.rdp.compute_epsilon``.  The sampler's total-variation distance
eta from exact noise costs ``(1 + e^eps) * eta`` of delta (if M is (eps, d)-DP and
M' is within eta of M on every input, M' is (eps, d + (1 + e^eps) * eta)-DP).
Gaussian figures (for comparison and the golden test) come from dp_accounting's
RDP and PLD accountants.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from . import noise
from .errors import BudgetExceededError, ConfigError
from .fixedpoint import MAX_REPORTS_PER_ROUND

if TYPE_CHECKING:
    from .spec import RoundSpec

__all__ = [
    "csprng",
    "l2_norm",
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


def l2_norm(x: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> float:
    """||x||_2 by numpy's pairwise sum, not BLAS: a BLAS dot over d values wakes OpenBLAS's thread pool,
    whose threads then spin in the caller's process (about 20 ms of CPU per 1e6-value submit here)."""
    v = np.asarray(x, dtype=np.float64)
    return math.sqrt(float(np.add.reduce(v * v, axis=None)))


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
        if l2_norm(out) <= bound:
            return out.astype(np.int64)
    raise ConfigError("conditional rounding failed: the input exceeds the clip bound it was given")


def skellam_noise(mu: float, size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Symmetric Skellam noise of variance >= ``mu`` (in [2^16, 2^32], or 0) per coordinate (mpc_agg.noise)."""
    if mu == 0:
        return np.zeros(size, dtype=np.int64)
    return noise.skellam(mu, size, rng)


@dataclass(frozen=True)
class SkellamRound:
    """The parameters of one noised round, in the integer units of the ring."""

    noise_multiplier: float
    clip_norm: float
    frac_bits: int
    dim: int
    min_clients: int
    sampling_rate: float = 1.0
    min_honest: int | None = None
    """clients assumed to add their noise (None: min_clients); each adds 1/min_honest of the variance"""

    @classmethod
    def from_spec(cls, spec: "RoundSpec") -> "SkellamRound | None":
        """The DP event of a round spec (None when it adds no noise)."""
        if spec.noise_multiplier == 0 or spec.clip_norm is None:
            return None
        return cls(spec.noise_multiplier, spec.clip_norm, spec.frac_bits, spec.dim, spec.min_clients,
                   min_honest=spec.noise_clients)

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    @property
    def honest(self) -> int:
        return self.min_clients if self.min_honest is None else self.min_honest

    @property
    def central_variance(self) -> float:
        """Variance of the noise in the sum when ``honest`` clients add theirs (integer units)."""
        return (self.noise_multiplier * self.clip_norm * self.scale) ** 2

    @property
    def client_variance(self) -> float:
        return noise.client_variance(self.noise_multiplier, self.clip_norm, self.frac_bits, self.honest)

    def noise_variance(self, honest: int | None = None) -> float:
        """Variance of the revealed noise when ``honest`` clients (default: the assumed number) add theirs."""
        return self.central_variance if honest is None else honest * self.client_variance

    @property
    def sampler_tv(self) -> float:
        """TV distance of one round's sampled noise from exact Skellam: 2 draws per coordinate per report
        (at most MAX_REPORTS_PER_ROUND + 1 reports); infinite outside the exact sampler's range."""
        var = self.client_variance
        if not noise.MIN_CLIENT_SIGMA**2 <= var <= noise.MAX_CLIENT_SIGMA**2:
            return math.inf
        return 2 * self.dim * (MAX_REPORTS_PER_ROUND + 1) * noise.draw_tv_bound(noise.poisson_lambda(var))

    @property
    def l2_sensitivity(self) -> float:
        return rounded_norm_bound(self.clip_norm * self.scale, self.dim)

    @property
    def l1_sensitivity(self) -> float:
        d2 = self.l2_sensitivity
        return min(d2 * d2, math.sqrt(self.dim) * d2)


def skellam_rdp(rnd: SkellamRound, orders: Sequence[int] = ORDERS, *,
                honest: int | None = None) -> npt.NDArray[np.float64]:
    """RDP curve of one Skellam round (Agarwal et al. 2021, Thm 3.5); no subsampling amplification.
    ``honest``: the number of clients whose noise is counted (default: the round's assumption)."""
    mu, d1, d2 = rnd.noise_variance(honest), rnd.l1_sensitivity, rnd.l2_sensitivity
    if mu <= 0:
        return np.full(len(orders), np.inf)
    return np.array([a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
                     for a in orders])


def skellam_epsilon(rounds: Sequence[SkellamRound], delta: float, *, honest: int | None = None,
                    exact: bool = False) -> float:
    """(epsilon at delta) of the composition of Skellam rounds, as sampled by mpc_agg.noise.

    ``honest``: count only that many clients' noise per round (what skipped noise costs).
    ``exact=True``: for exactly Skellam noise (pure math: no sampler distance folded into delta)."""
    from dp_accounting.rdp import compute_epsilon

    if not rounds:
        return 0.0
    rdp = list(sum(skellam_rdp(r, honest=honest) for r in rounds))
    eps0 = float(compute_epsilon(list(ORDERS), rdp, delta)[0])
    if exact or not math.isfinite(eps0):
        return eps0
    tv = sum(r.sampler_tv for r in rounds)
    inner = delta - (1 + math.exp(min(eps0 + 1, 700.0))) * tv  # valid for any eps <= eps0 + 1
    if not inner > 0:
        return math.inf
    eps = float(compute_epsilon(list(ORDERS), rdp, inner)[0])
    return eps if eps <= eps0 + 1 else math.inf


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
    """A record of noised rounds, persisted as JSON (atomically, under a file lock) after every change.

    One entry per round id: recording a round twice changes nothing, so a client that
    charges a round whose acknowledgement timed out is not charged again when it retries.
    ``budget`` (epsilon at ``delta``) stops training: :meth:`check` refuses a round that
    would exceed it; :meth:`record` adds a released (or possibly delivered) round.
    """

    path: Path | None
    delta: float
    budget: float | None = None
    rounds: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None, *, delta: float, budget: float | None = None) -> "PrivacyLedger":
        if not 0 < delta < 1:
            raise ConfigError("delta must be in (0, 1)")
        ledger = cls(None if path is None else Path(path), delta, budget)
        ledger._reload()
        return ledger

    def _reload(self) -> None:
        p = self.path
        if p is None or not p.exists():
            return
        try:
            raw = json.loads(p.read_text())
            delta, rounds = float(raw["delta"]), [dict(r) for r in raw["rounds"]]
            budget = raw.get("budget")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ConfigError(f"privacy ledger {p} is corrupt: {exc}") from None
        if delta != self.delta:
            raise ConfigError(f"ledger {p} was kept at delta={delta}, not {self.delta}")
        self.rounds = rounds
        if self.budget is None:
            self.budget = budget

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access to the file (another process may hold the same ledger); reloads it."""
        if self.path is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._reload()
            yield

    def _events(self) -> list[SkellamRound]:
        return [SkellamRound(**{k: v for k, v in r.items() if k in SkellamRound.__dataclass_fields__})
                for r in self.rounds]

    def spent(self, round_id: int) -> bool:
        return any(r["round_id"] == round_id for r in self.rounds)

    def epsilon(self) -> float:
        return skellam_epsilon(self._events(), self.delta)

    def epsilon_with(self, rnd: SkellamRound, round_id: int | None = None) -> float:
        """epsilon if ``rnd`` is released too (as round ``round_id``: not counted twice if already spent)."""
        if round_id is not None and self.spent(round_id):
            return self.epsilon()
        return skellam_epsilon([*self._events(), rnd], self.delta)

    def check(self, round_id: int, rnd: SkellamRound) -> float:
        """epsilon after ``rnd``; BudgetExceededError if that passes the budget (nothing recorded)."""
        eps = self.epsilon_with(rnd, round_id)
        if self.budget is not None and eps > self.budget:
            raise BudgetExceededError(
                f"round {round_id} would raise epsilon to {eps:.4g} > budget {self.budget:g} at delta={self.delta:g}")
        return eps

    def record(self, round_id: int, rnd: SkellamRound) -> float:
        """Record a released round once (persisted at once); returns epsilon so far."""
        with self._locked():
            if self.spent(round_id):
                return self.epsilon()
            eps = self.epsilon_with(rnd)
            self.rounds.append({"round_id": round_id, **asdict(rnd), "epsilon": eps})
            self._save()
        return eps

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"delta": self.delta, "budget": self.budget, "rounds": self.rounds}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

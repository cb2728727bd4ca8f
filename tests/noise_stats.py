"""Statistics shared by the noise tests: revealed Skellam noise against the exact distribution.

Each function returns p-values (small = the samples do not look like the reference); the
tests choose thresholds (fixed-seed tests can use loose ones: they cannot flake).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats


def chi2_gof(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray], ppf: Callable[[np.ndarray], np.ndarray],
             bins: int = 100) -> float:
    """Chi-square p-value of integer samples against a discrete CDF, over ~equiprobable integer bins."""
    edges = np.unique(np.round(ppf(np.linspace(0, 1, bins + 1)[1:-1])).astype(np.int64))  # bin j: (e_{j-1}, e_j]
    probs = np.diff(np.concatenate([[0.0], cdf(edges), [1.0]]))
    counts = np.bincount(np.searchsorted(edges, samples, side="left"), minlength=edges.size + 1)
    return float(stats.chisquare(counts, probs * samples.size / probs.sum()).pvalue)


def skellam_checks(noise: np.ndarray, variance: float) -> dict[str, float]:
    """Revealed noise vs exact Skellam (two Poisson(variance/2)): parity, low 8 bits, fit, variance ratio."""
    lam, n = variance / 2, noise.size
    p_odd = (1 - math.exp(-2 * variance)) / 2  # E[(-1)^X] = exp(-4 lam) for X = P1 - P2
    odd = int(np.count_nonzero(noise & 1))
    low = np.bincount((noise & 255).astype(np.int64), minlength=256)  # uniform when sd >> 256 (TV < 1e-8)
    sd = math.sqrt(variance)
    if lam <= 2.0**36:
        cdf = lambda k: stats.skellam.cdf(k, lam, lam)  # noqa: E731
    else:  # scipy's Skellam CDF stalls here; the normal (continuity-corrected) is within ~1/lam of it
        cdf = lambda k: stats.norm.cdf((k + 0.5) / sd)  # noqa: E731
    return {
        "parity": float(stats.binomtest(odd, n, p_odd).pvalue),
        "low8": float(stats.chisquare(low).pvalue),
        "fit": chi2_gof(noise, cdf, lambda q: stats.norm.ppf(q) * sd),
        "var_ratio": float(noise.var() / variance),
    }


def poisson_fit(draws: np.ndarray, lam: float) -> float:
    """p-value of Poisson(lam) draws for lam >= 1e10 (normal with continuity correction: error ~ lam^-1/2)."""
    sd = math.sqrt(lam)
    return chi2_gof(draws, lambda k: stats.norm.cdf((k + 0.5 - lam) / sd), lambda q: lam + stats.norm.ppf(q) * sd)

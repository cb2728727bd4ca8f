"""What an attacker learns: membership inference scores and metrics, and the token-set attack.

Pure functions on numpy arrays (no model, no I/O), so each is tested on known inputs.

* Membership inference against a released model: the loss-threshold attack (Yeom et al., "Privacy Risk in
  Machine Learning", CSF 2018: lower loss ⇒ member) and a reference-model-calibrated score (the target's loss
  minus the loss under a reference model that did not train on the example: the offline, per-example
  calibration of Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022, who also ask
  for the metrics used here: ROC-AUC and the true-positive rate at a low false-positive rate).
* Token-set attack on input-embedding rows: in a causal LM the gradient of the input embedding is non-zero only in
  the rows of tokens the client fed in, so the rows of an update that changed reveal which tokens the client used
  (with untied embeddings and no weight decay on them; with a tied output head every row moves).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from mpc_agg.errors import ConfigError

__all__ = ["roc_auc", "tpr_at_fpr", "loss_scores", "calibrated_scores", "touched_rows", "noise_row_threshold",
           "set_precision_recall", "mean_precision_recall"]

FloatArray = npt.NDArray[np.float64]


def _scores(members: npt.ArrayLike, non_members: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    m, n = np.asarray(members, dtype=np.float64), np.asarray(non_members, dtype=np.float64)
    if m.ndim != 1 or n.ndim != 1 or m.size == 0 or n.size == 0:
        raise ConfigError("membership scores must be two non-empty 1-D arrays")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
        raise ConfigError("membership scores must be finite")
    return m, n


def roc_auc(members: npt.ArrayLike, non_members: npt.ArrayLike) -> float:
    """P(score of a random member > score of a random non-member), ties counting 1/2 (Mann–Whitney U)."""
    m, n = _scores(members, non_members)
    both = np.concatenate([m, n])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size)
    ranks[order] = np.arange(1, both.size + 1)
    for value in np.unique(both):  # average ranks over ties
        tie = both == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2
    return float(u / (m.size * n.size))


def tpr_at_fpr(members: npt.ArrayLike, non_members: npt.ArrayLike, fpr: float = 0.01) -> float:
    """Largest true-positive rate of a threshold "score > t" whose false-positive rate is at most ``fpr``.

    With N non-members at most floor(fpr·N) of them may score above t; with N < 1/fpr that is none, so the
    threshold is the highest non-member score."""
    m, n = _scores(members, non_members)
    if not 0 <= fpr < 1:
        raise ConfigError("fpr must be in [0, 1)")
    allowed = int(math.floor(fpr * n.size))
    threshold = np.sort(n)[::-1][allowed]  # the (allowed+1)-th highest non-member score
    return float(np.mean(m > threshold))


def loss_scores(target_loss: npt.ArrayLike) -> FloatArray:
    """Yeom et al.'s attack as a score: the lower the example's loss, the likelier it was trained on."""
    return -np.asarray(target_loss, dtype=np.float64)


def calibrated_scores(target_loss: npt.ArrayLike, reference_loss: npt.ArrayLike) -> FloatArray:
    """Per-example calibration: how much lower the loss is under the target than under a reference model
    that did not see the example (removes how easy the example is for any model)."""
    t, r = np.asarray(target_loss, dtype=np.float64), np.asarray(reference_loss, dtype=np.float64)
    if t.shape != r.shape:
        raise ConfigError("target and reference losses must have the same shape")
    return r - t


def touched_rows(rows: npt.ArrayLike, threshold: float = 0.0) -> set[int]:
    """Indices of the rows of an embedding update (vocab × hidden) whose L2 norm exceeds ``threshold``."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError("an embedding update must be a 2-D array (vocabulary × hidden)")
    return set(np.flatnonzero(np.linalg.norm(x, axis=1) > threshold).tolist())


def noise_row_threshold(sigma: float, width: int, rows: int) -> float:
    """A row-norm threshold that pure Gaussian noise of std ``sigma`` per coordinate exceeds in fewer than
    one of ``rows`` rows on average: sigma·sqrt(w + 2·sqrt(w·L) + 2·L) with L = ln(rows) (Laurent & Massart
    2000, Lemma 1, a chi-square tail bound)."""
    if sigma < 0 or width < 1 or rows < 1:
        raise ConfigError("sigma must be >= 0, width and rows >= 1")
    log_r = math.log(max(rows, 2))
    return sigma * math.sqrt(width + 2 * math.sqrt(width * log_r) + 2 * log_r)


def set_precision_recall(predicted: set[int], truth: set[int]) -> tuple[float, float]:
    """Precision and recall of a predicted token set (an empty guess scores precision 0: nothing learned;
    an empty truth scores recall 1)."""
    hit = len(predicted & truth)
    return (hit / len(predicted) if predicted else 0.0), (hit / len(truth) if truth else 1.0)


def mean_precision_recall(predicted: list[set[int]], truths: list[set[int]]) -> tuple[float, float]:
    """Mean over clients of precision and recall; ``predicted[i]`` is the attacker's guess for client i."""
    if len(predicted) != len(truths) or not truths:
        raise ConfigError("one predicted set per client is needed")
    pr = [set_precision_recall(p, t) for p, t in zip(predicted, truths)]
    return float(np.mean([p for p, _ in pr])), float(np.mean([r for _, r in pr]))

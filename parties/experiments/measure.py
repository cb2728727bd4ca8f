"""Turning a trained setting into a report row: perplexities, time to target and both attacks."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from fl_client.training import evaluate

from . import attacks
from .sim import Trace, pool, run_centralised
from .workload import Data, Workload, example_losses

__all__ = ["to_target", "membership", "reference_losses", "make_row", "mean_membership"]


def to_target(trace: Trace, target: float) -> tuple[int | None, float | None]:
    """First round (1-based) whose perplexity is at most ``target``, and the compute seconds by then."""
    for i, p in enumerate(trace.ppl):
        if p <= target:
            return i + 1, trace.seconds[i]
    return None, None


def membership(model: Any, members: Data, non_members: Data,
               ref: tuple[np.ndarray, np.ndarray] | None) -> dict[str, float | None]:
    """Loss-threshold and reference-calibrated attacks; ``mia_auc`` and ``mia_tpr_at_1pct_fpr`` are those of
    the stronger of the two (by AUC): what the better attacker learns."""
    lm, ln = example_losses(model, members), example_losses(model, non_members)
    scores = {"loss": (attacks.loss_scores(lm), attacks.loss_scores(ln))}
    if ref is not None:
        scores["ref"] = (attacks.calibrated_scores(lm, ref[0]), attacks.calibrated_scores(ln, ref[1]))
    out: dict[str, float | None] = {"mia_ref_auc": None, "mia_ref_tpr_at_1pct_fpr": None}
    for name, (sm, sn) in scores.items():
        out[f"mia_{name}_auc"] = attacks.roc_auc(sm, sn)
        out[f"mia_{name}_tpr_at_1pct_fpr"] = attacks.tpr_at_fpr(sm, sn, 0.01)
    best = max(scores, key=lambda a: out[f"mia_{a}_auc"] or 0.0)
    out["mia_auc"], out["mia_tpr_at_1pct_fpr"] = out[f"mia_{best}_auc"], out[f"mia_{best}_tpr_at_1pct_fpr"]
    return out


def mean_membership(results: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each figure over several models (local-only clients)."""
    return {k: None if results[0][k] is None else float(np.mean([r[k] for r in results])) for k in results[0]}


def reference_losses(wl: Workload, *, rounds: int, local_steps: int, batch_size: int, lr: float,
                     say: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate chunk's loss under a reference model that never trained on it: (members, non-members).

    Two references, trained like the centralised setting on complementary random halves of all candidate
    chunks (training chunks and held-out chunks alike), so every chunk has exactly one reference that left it
    out: the offline calibration of Carlini et al. 2022 with one OUT model per example."""
    cand = pool([pool(wl.clients), wl.seen_eval])
    n_members = sum(c["input_ids"].shape[0] for c in wl.clients)
    n = cand["input_ids"].shape[0]
    in_a = torch.zeros(n, dtype=torch.bool)
    in_a[torch.randperm(n, generator=torch.Generator().manual_seed(12345))[: n // 2]] = True
    losses = np.empty(n)
    for part, mask in (("A", in_a), ("B", ~in_a)):
        say(f"reference model {part}: trains on {int(mask.sum())} of the {n} candidate chunks")
        ref = run_centralised(wl.init, [{k: v[mask] for k, v in cand.items()}], None, rounds=rounds,
                              local_steps=local_steps, batch_size=batch_size, lr=lr, seed=777,
                              say=lambda s: None)
        losses[(~mask).numpy()] = example_losses(ref.model, {k: v[~mask] for k, v in cand.items()})
    return losses[:n_members], losses[n_members:]


def make_row(setting: str, seed: int, trace: Trace, wl: Workload, target: float, mia: dict[str, Any],
             ppl_unseen: float | None = None, **extra: Any) -> dict[str, Any]:
    """One report row; fields not applicable to the setting are None."""
    rounds, secs = to_target(trace, target)
    if ppl_unseen is None:
        ppl_unseen = evaluate(trace.model, wl.unseen)[1]
    row: dict[str, Any] = {
        "setting": setting, "seed": seed, "ppl_seen": trace.ppl[-1], "ppl_unseen": ppl_unseen,
        "rounds_to_target": rounds, "seconds_to_target": secs, "mia_auc": None, "mia_tpr_at_1pct_fpr": None,
        "token_precision": None, "token_recall": None, "epsilon": None, "delta": None, "noise_multiplier": None}
    row.update(mia)
    row.update(extra)
    row.update({"curve_ppl_seen": trace.ppl, "curve_seconds": trace.seconds})
    return row

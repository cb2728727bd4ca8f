"""``mpc-agg experiments``: the article's claims measured (federated vs centralised vs local training, unseen
data, membership inference and the token-set attack); see README.md "What the experiments show"."""

from .runner import PRESETS, ExperimentConfig, run_experiments

__all__ = ["ExperimentConfig", "PRESETS", "run_experiments"]

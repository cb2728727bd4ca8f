"""Compatibility re-export: the module moved to ``parties.demo.federated``.

Kept only until ``parties/experiments`` imports the new path; then delete this file."""

from .demo.federated import FedConfig, ServerOptimizer, dp_noise_ratio, run_federated

__all__ = ["FedConfig", "run_federated", "ServerOptimizer", "dp_noise_ratio"]

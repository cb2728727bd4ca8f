"""Role processes of mpc-agg: aggregator party, dealer, coordinator API and the CLI."""

from .coordinator import Coordinator, RoundResult

__all__ = ["Coordinator", "RoundResult"]

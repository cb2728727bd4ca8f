"""Client-side API of mpc-agg: ``SecureAggClient`` shares a model delta among the parties."""

from .client import SecureAggClient, flatten_update

__all__ = ["SecureAggClient", "flatten_update"]

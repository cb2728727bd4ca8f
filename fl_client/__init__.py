"""Client-side API of mpc-agg: ``SecureAggClient`` shares a model delta among the parties.

The security-critical part a client runs (``client``: clip, encode, share, upload) and the Flower adapter
that calls it (``flower``); federated training itself (models, data, local optimiser steps, the demo's client
process) is in ``fl_client.training``, which sees no share."""

from .client import SecureAggClient, flatten_update

__all__ = ["SecureAggClient", "flatten_update"]

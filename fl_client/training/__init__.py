"""Federated fine-tuning on the client side: models, data, local training and the demo's client process.

Not security-critical: none of it sees another client's data or any share.  What leaves a client goes
through the client API in ``fl_client.client`` (``SecureAggClient``), which this package only calls.

* ``local``: tokenise, run the local optimiser steps, return the delta (FedAvg's ClientUpdate);
* ``model``: offline models and tokenisers, LoRA, the trainable state;
* ``corpus``: the shipped corpus (``data/corpus``) and non-IID client shards;
* ``worker``: one client as its own process, as ``mpc-agg demo`` starts it.
"""

from .local import LocalResult, encode_texts, evaluate, train_locally

__all__ = ["LocalResult", "encode_texts", "evaluate", "train_locally"]

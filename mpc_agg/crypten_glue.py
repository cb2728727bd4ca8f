"""CrypTen 0.4.1 on torch 2.13, made safe: the import shim and the switch that plugs our pieces in.

* ``import_crypten()`` installs the stub module CrypTen's ONNX converter needs
  (``torch.onnx._internal.registration`` is gone from torch), imports it and
  replaces the unsafe TFP provider by one that refuses.
* ``activate()`` makes a :class:`~mpc_agg.communicator.ZmqCommunicator` CrypTen's
  communicator and the dealer (:mod:`mpc_agg.dealer_tuples`) its provider for one
  session, with or without CrypTen's pseudo-random generators; ``deactivate()`` undoes it.
The communicator, providers and codecs live in their own modules; their names are
re-exported here for existing imports.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .communicator import MAX_EARLY_SESSIONS, ZmqCommunicator
from .dealer_tuples import (DEALER_FUNCTIONS, DEALER_OPS, DealerProvider, RefusingProvider, expand_dealer_seed,
                            random_ring)
from .errors import CommunicatorError
from .tensor_codec import payload_to_tensor, tensor_to_payload

__all__ = [
    "import_crypten",
    "ZmqCommunicator",
    "DealerProvider",
    "RefusingProvider",
    "activate",
    "deactivate",
    "tensor_to_payload",
    "payload_to_tensor",
    "DEALER_FUNCTIONS",
    "DEALER_OPS",
    "MAX_EARLY_SESSIONS",
    "expand_dealer_seed",
    "random_ring",
]


def import_crypten() -> types.ModuleType:
    """Import CrypTen with the torch 2.13 shim and refuse the unsafe TFP provider."""
    name = "torch.onnx._internal.registration"
    if name not in sys.modules:
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.registry = None  # type: ignore[attr-defined]
            sys.modules[name] = stub
    import crypten

    if crypten.cfg.mpc.provider == "TFP":
        crypten.cfg.mpc.provider = RefusingProvider.NAME
        _providers()[RefusingProvider.NAME] = RefusingProvider()
    return crypten


def _providers() -> dict[str, Any]:
    import crypten.mpc

    return vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]


class _NoGenerators(dict):  # type: ignore[type-arg]
    """One of CrypTen's generator tables in a session without seeds: any use is an error, never a stale seed."""

    def __missing__(self, device: Any) -> Any:
        raise CommunicatorError("CrypTen's pseudo-random generators are not set up in this session: start it "
                                "with mpc_agg.crypten_glue.activate(..., prng=True)")


def activate(comm: ZmqCommunicator, provider: DealerProvider | None, session: str, *, prng: bool = True) -> None:
    """Make ``comm`` CrypTen's communicator and start a session under ``session``.

    With ``prng``, CrypTen's pairwise/global PRNG seeds are (re)exchanged for the session over
    the encrypted channel (two exchanges among the parties), as CrypTen's sharing of public
    values (``cryptensor``, PRZS) and ``crypten.rand`` need.  Without it nothing is exchanged
    and CrypTen's generators are emptied, so any use of them raises CommunicatorError: for
    sessions whose MPC takes all its randomness from the dealer (the close's checks,
    mpc_agg.normcheck).  The provider is the dealer, or one that refuses.
    """
    crypten = import_crypten()
    import crypten.communicator as ccomm

    ccomm.DistributedCommunicator = ZmqCommunicator  # CrypTen resolves this name at each call
    ZmqCommunicator.instance = comm
    comm.set_session(session)
    if provider is not None:
        provider.set_session(session)
        _providers()[DealerProvider.NAME] = provider
        crypten.cfg.mpc.provider = DealerProvider.NAME
    else:
        _providers()[RefusingProvider.NAME] = RefusingProvider()
        crypten.cfg.mpc.provider = RefusingProvider.NAME
    if prng:
        crypten._setup_prng()
    else:
        for key in crypten.generators:
            crypten.generators[key] = _NoGenerators()


def deactivate() -> None:
    ZmqCommunicator.instance = None

"""The dealer: hands each party its shares of correlated randomness for CrypTen MPC.

Runs as ``mpc-agg dealer --config deployment.toml``.  It is neither the
coordinator nor a party, and it never sees inputs: it only answers
``DEALER_REQUEST`` messages.  A tuple is produced once every party asked for it
with the identical request (same session, sequence number and parameters); the
values come from ``os.urandom`` and each party receives only its own shares
over its CURVE channel.  Trust assumption: the dealer does not collude with any
party (trusted-dealer model; CrypTen's "TTP" role, minus its Mersenne-Twister
generators and plaintext seed exchange; SECURITY.md, "MPC multiplication").
"""

from __future__ import annotations

import collections
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import zmq

from mpc_agg.config import Deployment, read_secret_key
from mpc_agg.dealer_tuples import DEALER_FUNCTIONS, DEALER_OPS, expand_dealer_seed, random_ring, split_dealer_value
from mpc_agg.tensor_codec import obj_decode, tensor_to_payload
from mpc_agg.errors import AuthError, MpcAggError, WireError
from mpc_agg.messages import validate_request
from mpc_agg.service import ReplyTo, Request, Service
from mpc_agg.sharing import SEED_BYTES
from mpc_agg.transport import SecureContext
from mpc_agg.wire import MsgType, require

__all__ = ["Dealer", "deal"]

MAX_PENDING = 4096
MAX_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Seeded:
    """A uniformly random share sent as a 32-byte seed (the party expands it: expand_dealer_seed)."""

    seed: bytes
    shape: list[int]
    bits: int = 64

    @classmethod
    def fresh(cls, shape: list[int], bits: int = 64) -> "Seeded":
        return cls(os.urandom(SEED_BYTES), shape, bits)

    def expand(self, party: int) -> torch.Tensor:
        return expand_dealer_seed(self.seed, self.shape, party, self.bits)


Share = torch.Tensor | Seeded


def _shares(x: torch.Tensor, k: int, *, xor_bits: int | None = None) -> list[Share]:
    """Party 0 gets its share in full, parties 1..k-1 only seeds: additive mod 2**64, or XOR of the low
    ``xor_bits`` bits (mpc_agg.dealer_tuples.split_dealer_value)."""
    first, seeds = split_dealer_value(x, k, xor_bits=xor_bits)
    return [first, *(Seeded(s, list(x.shape), xor_bits or 64) for s in seeds)]


def _encode_share(share: Share) -> tuple[dict[str, Any], bytes]:
    if isinstance(share, Seeded):
        return {"seeded": True, "shape": share.shape, "bits": share.bits}, share.seed
    return tensor_to_payload(share)


def _size(v: Any) -> list[int]:
    if not isinstance(v, (list, tuple, torch.Size)) or not all(isinstance(s, int) and s >= 0 for s in v):
        raise WireError("bad size in dealer request")
    n = 1
    for s in v:
        n *= s
    if n > MAX_ELEMENTS:
        raise WireError(f"dealer request for {n} elements exceeds {MAX_ELEMENTS}")
    return list(v)


def deal(fn: str, params: dict[str, Any], k: int) -> list[list[Share]]:
    """Produce the tuple ``fn`` for ``k`` parties; result[i] is party i's list of shares."""
    if fn == "additive":
        op = params.get("op")
        if op not in DEALER_OPS:
            raise WireError(f"op {op!r} is not allowed")
        args, kwargs = params.get("args", []), params.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise WireError("bad args")
        a, b = random_ring(_size(params.get("size0"))), random_ring(_size(params.get("size1")))
        try:
            c = getattr(torch, op)(a, b, *args, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise WireError(f"cannot compute {op} for these sizes: {exc}") from None
        parts = [_shares(a, k), _shares(b, k), _shares(c, k)]
    elif fn == "square":
        r = random_ring(_size(params.get("size")))
        parts = [_shares(r, k), _shares(r * r, k)]
    elif fn == "binary":
        a, b = random_ring(_size(params.get("size0"))), random_ring(_size(params.get("size1")))
        parts = [_shares(a, k, xor_bits=64), _shares(b, k, xor_bits=64), _shares(a & b, k, xor_bits=64)]
    elif fn == "wraps":
        from crypten.common.util import count_wraps

        size = _size(params.get("size"))
        seeded = [Seeded.fresh(size) for _ in range(k)]
        theta = count_wraps([s.expand(i) for i, s in enumerate(seeded)])
        parts = [seeded, _shares(theta, k)]
    elif fn == "B2A":
        bit = random_ring(_size(params.get("size"))) & 1
        parts = [_shares(bit, k), _shares(bit, k, xor_bits=1)]
    else:
        raise WireError(f"unknown dealer function {fn!r}; known: {DEALER_FUNCTIONS}")
    return [[p[i] for p in parts] for i in range(k)]


class Dealer(Service):
    """Serves tuple requests from the parties of a deployment until stopped."""

    def __init__(self, deployment: Deployment) -> None:
        if not deployment.dealer_endpoint or not deployment.dealer_public_key:
            raise MpcAggError(f"{deployment.path} has no [dealer] section")
        from mpc_agg.crypten_glue import import_crypten

        import_crypten()
        self.k = len(deployment.parties)
        secret = read_secret_key(deployment.dealer_private_key_file, "the dealer")
        self.sctx = SecureContext()
        self.sock = self.sctx.server(
            zmq.ROUTER, deployment.dealer_endpoint, public_key=deployment.dealer_public_key, secret_key=secret,
            domain="dealer", allowed={p.public_key: f"party:{p.id}" for p in deployment.parties},
        )
        self.pending: collections.OrderedDict[tuple[str, int], dict[int, tuple[ReplyTo, str]]] = (
            collections.OrderedDict())
        super().__init__(self.sctx, self.sock, {MsgType.DEALER_REQUEST: self._on_request}, "dealer",
                         validate=validate_request)

    def _on_request(self, req: Request) -> None:
        """Answered later: a tuple is dealt once every party asked for it (docs/PROTOCOL.md, "Dealer")."""
        if not req.identity.startswith("party:"):
            raise AuthError("the dealer only serves tuple requests from parties")
        party = int(req.identity.split(":", 1)[1])
        key = (require(req.meta, "session", str), require(req.meta, "seq", int))
        request = (require(req.meta, "fn", str), req.meta.get("params"))
        slot = self.pending.setdefault(key, {})
        slot[party] = (req.reply_to, repr(request))
        while len(self.pending) > MAX_PENDING:  # oldest first: a party that never asks again
            self.pending.popitem(last=False)
        if len(slot) < self.k:
            return None
        del self.pending[key]
        try:
            if len({canon for _, canon in slot.values()}) != 1:
                raise WireError("parties asked for different tuples under the same sequence number")
            fn, params = request
            shares = deal(fn, obj_decode(params) if params is not None else {}, self.k)
        except MpcAggError as exc:
            for to, _ in slot.values():
                self.send_reply(to, exc)
            return None
        for p, (to, _) in slot.items():
            metas, payloads = zip(*(_encode_share(t) for t in shares[p]))
            self.send_reply(to, (MsgType.DEALER_REPLY, {"tensors": list(metas)}, payloads))
        return None


def run_dealer(config: str) -> int:
    dealer = Dealer(Deployment.load(config))
    signal.signal(signal.SIGTERM, dealer.stop)
    signal.signal(signal.SIGINT, dealer.stop)
    dealer.serve()
    return 0

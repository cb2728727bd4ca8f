"""CrypTen tuple providers: the dealer's (Beaver triples and friends from ``parties.dealer``) and one that refuses.

CrypTen's TFP default lets party 0 unmask every product and its TTP uses
Mersenne-Twister generators; neither is ever used here (SECURITY.md, "MPC
multiplication").  Dealer shares may come as 32-byte seeds expanded with AES-CTR.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from .errors import AggregationTimeout, CommunicatorError, WireError
from .messages import request
from .sharing import SEED_BYTES, ShareContext, expand_seed, leader_share, new_seeds, xor_leader_share
from .tensor_codec import obj_encode, payload_to_tensor
from .transport import Requester
from .wire import MsgType

__all__ = ["DealerProvider", "RefusingProvider", "DEALER_FUNCTIONS", "DEALER_OPS", "expand_dealer_seed",
           "random_ring", "split_dealer_value"]

DEALER_FUNCTIONS = ("additive", "square", "binary", "wraps", "B2A")
DEALER_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")


class RefusingProvider:
    """Installed in place of CrypTen's TFP default: any tuple request is an error."""

    NAME = "REFUSE"

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise CommunicatorError(
                "MPC multiplication needs a dealer; CrypTen's TFP provider (party 0 sees every "
                "product) is disabled. Add a [dealer] to the deployment."
            )

        return refuse


class DealerProvider:
    """CrypTen tuple provider backed by the dealer process (see ``parties.dealer``).

    Every party asks the dealer for the same tuple in the same order; the dealer
    answers each party with only its own shares.  Assumes the dealer does not
    collude with any party (the standard trusted-dealer model, e.g. Beaver 1991).
    """

    NAME = "DEALER"
    REPLY_MARGIN_S = 1.0

    def __init__(self, requester: Requester, *, rank: int, timeout_s: float = 60.0) -> None:
        self.requester = requester
        self.rank = rank
        self.timeout_s = timeout_s
        self.deadline: float | None = None
        """monotonic time by which a failure must be known (e.g. a close's deadline): requests give up
        ``REPLY_MARGIN_S`` before it, so the reason reaches the caller while it still waits"""
        self.session = "init"
        self.seq = 0

    def set_session(self, tag: str) -> None:
        self.session = tag
        self.seq = 0

    def _request(self, fn: str, **params: Any) -> list[torch.Tensor]:
        self.seq += 1
        meta = request(MsgType.DEALER_REQUEST, session=self.session, seq=self.seq, fn=fn, params=obj_encode(params))
        timeout = self.timeout_s
        if self.deadline is not None:
            timeout = max(0.1, min(timeout, self.deadline - time.monotonic() - self.REPLY_MARGIN_S))
        try:
            msg = self.requester.request(MsgType.DEALER_REQUEST, meta, timeout_s=timeout, what="dealer")
        except AggregationTimeout:
            raise AggregationTimeout(f"the dealer sent no tuples within {timeout:.1f} s: is `mpc-agg dealer` "
                                     "running and reachable? (it answers once every party has asked)") from None
        metas = msg.meta.get("tensors")
        if not isinstance(metas, list) or len(metas) != len(msg.payloads) or not all(isinstance(m, dict)
                                                                                    for m in metas):
            raise WireError("dealer reply does not match its metadata")
        out = []
        for m, p in zip(metas, msg.payloads):
            if m.get("seeded"):
                shape, bits = m.get("shape"), m.get("bits")
                if (memoryview(p).nbytes != SEED_BYTES or bits not in (1, 64) or not isinstance(shape, list)
                        or not all(isinstance(x, int) and x >= 0 for x in shape)):
                    raise WireError("bad seeded share from the dealer")
                out.append(expand_dealer_seed(bytes(p), shape, self.rank, bits))
            else:
                out.append(payload_to_tensor(m, p))
        return out

    @staticmethod
    def _size(s: Any) -> list[int]:
        return [int(x) for x in torch.Size(s)]

    def generate_additive_triple(self, size0: Any, size1: Any, op: str, device: Any = None, *args: Any,
                                 **kwargs: Any) -> Any:
        from crypten.mpc.primitives import ArithmeticSharedTensor as A

        a, b, c = self._request("additive", size0=self._size(size0), size1=self._size(size1), op=op,
                                args=list(args), kwargs=kwargs)
        return A.from_shares(a, precision=0), A.from_shares(b, precision=0), A.from_shares(c, precision=0)

    def square(self, size: Any, device: Any = None) -> Any:
        from crypten.mpc.primitives import ArithmeticSharedTensor as A

        r, r2 = self._request("square", size=self._size(size))
        return A.from_shares(r, precision=0), A.from_shares(r2, precision=0)

    def generate_binary_triple(self, size0: Any, size1: Any, device: Any = None) -> Any:
        from crypten.mpc.primitives import BinarySharedTensor as B

        a, b, c = self._request("binary", size0=self._size(size0), size1=self._size(size1))
        return B.from_shares(a), B.from_shares(b), B.from_shares(c)

    def wrap_rng(self, size: Any, device: Any = None) -> Any:
        from crypten.mpc.primitives import ArithmeticSharedTensor as A

        r, theta = self._request("wraps", size=self._size(size))
        return A.from_shares(r, precision=0), A.from_shares(theta, precision=0)

    def B2A_rng(self, size: Any, device: Any = None) -> Any:
        from crypten.mpc.primitives import ArithmeticSharedTensor as A
        from crypten.mpc.primitives import BinarySharedTensor as B

        ra, rb = self._request("B2A", size=self._size(size))
        return A.from_shares(ra, precision=0), B.from_shares(rb)


_DEALER_CTX = ShareContext(round_id=0, client_id="dealer", report_id=bytes(16))


def expand_dealer_seed(seed: bytes, shape: list[int], party: int, bits: int = 64) -> torch.Tensor:
    """A dealer share sent as a 32-byte seed, expanded with AES-CTR (as client helper shares are)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    out = torch.from_numpy(expand_seed(seed, _DEALER_CTX, party, n).reshape(shape))
    return out & ((1 << bits) - 1) if bits < 64 else out


def random_ring(shape: list[int]) -> torch.Tensor:
    """Uniform int64 ring elements: AES-CTR keystream under a fresh ``os.urandom`` seed."""
    return expand_dealer_seed(os.urandom(SEED_BYTES), shape, 0)


def split_dealer_value(x: torch.Tensor, parties: int, *,
                       xor_bits: int | None = None) -> tuple[torch.Tensor, list[bytes]]:
    """Share a dealer value among ``parties``: (party 0's share, a fresh seed for each of parties 1..k-1), where
    party j's share is ``expand_dealer_seed(seed_j, shape, j, bits)``.  Additive mod 2**64
    (``mpc_agg.sharing.leader_share``), or XOR of the low ``xor_bits`` bits (``xor_leader_share``)."""
    seeds = new_seeds(parties)
    flat = x.reshape(-1).contiguous().numpy()
    first = (leader_share(flat, seeds, _DEALER_CTX) if xor_bits is None
             else xor_leader_share(flat, seeds, _DEALER_CTX, bits=xor_bits))
    return torch.from_numpy(first.reshape(tuple(x.shape))), seeds

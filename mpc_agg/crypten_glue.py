"""CrypTen 0.4.1 on torch 2.13, made safe: import shim, ZeroMQ communicator, dealer provider.

* ``import_crypten()`` installs the stub module CrypTen's ONNX converter needs
  (``torch.onnx._internal.registration`` is gone from torch) and imports it.
* :class:`ZmqCommunicator` implements CrypTen's ``Communicator`` interface
  (send/recv, isend/irecv, broadcast, reduce, all_reduce, gather, all_gather,
  scatter, barrier, *_obj) over CURVE-encrypted ZeroMQ sockets between the
  parties; objects travel as tagged JSON, never pickle.  Messages carry a
  session tag so an aborted session's leftovers are never mixed into the next.
* :class:`DealerProvider` replaces CrypTen's providers: correlated randomness
  (Beaver triples etc.) comes from a separate dealer process that draws it from
  ``os.urandom``.  CrypTen's TFP default lets party 0 unmask every product and
  its TTP uses Mersenne-Twister generators; neither is ever used here
  (DESIGN.md §4).
"""

from __future__ import annotations

import collections
import os
import sys
import time
import types
from typing import Any, Callable

import numpy as np
import torch
import zmq

from .errors import AggregationTimeout, CommunicatorError, WireError
from .sharing import SEED_BYTES, ShareContext, expand_seed
from .transport import Requester, SecureContext, recv_authenticated
from .wire import MsgType, encode_message, loads_bounded

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
    "expand_dealer_seed",
    "random_ring",
]

_DTYPES = {
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool, "float32": torch.float32, "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
DEALER_FUNCTIONS = ("additive", "square", "binary", "wraps", "B2A")
MAX_EARLY_SESSIONS = 4
DEALER_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")


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


def tensor_to_payload(t: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    """(meta, bytes) of a tensor; the bytes are a copy, safe against later in-place edits."""
    t = t.detach()
    if t.dtype not in _DTYPE_NAMES:
        raise CommunicatorError(f"dtype {t.dtype} cannot be sent")
    return {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)}, t.contiguous().numpy().tobytes()


def payload_to_tensor(meta: dict[str, Any], payload: Any) -> torch.Tensor:
    """Rebuild a tensor from (meta, bytes), checking dtype and length."""
    dtype = _DTYPES.get(meta.get("dtype"))  # type: ignore[arg-type]
    shape = meta.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError("bad tensor metadata")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    view = memoryview(payload)
    if view.nbytes != n * itemsize:
        raise WireError(f"tensor payload is {view.nbytes} bytes, expected {n * itemsize}")
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    arr = np.frombuffer(view, dtype=np_dtype).copy().reshape(shape)  # received frames are read-only
    return torch.from_numpy(arr)


# --- safe object codec for send_obj/recv_obj/broadcast_obj -------------------------

def _obj_encode(o: Any) -> Any:
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    if isinstance(o, torch.Size):
        return {"__size__": list(o)}
    if isinstance(o, tuple):
        return {"__tuple__": [_obj_encode(x) for x in o]}
    if isinstance(o, list):
        return [_obj_encode(x) for x in o]
    if isinstance(o, dict) and all(isinstance(k, str) for k in o):
        return {"__dict__": {k: _obj_encode(v) for k, v in o.items()}}
    raise CommunicatorError(f"objects of type {type(o).__name__} cannot be sent (no pickle)")


def _obj_decode(o: Any) -> Any:
    if isinstance(o, list):
        return [_obj_decode(x) for x in o]
    if isinstance(o, dict):
        if "__size__" in o:
            return torch.Size(int(x) for x in o["__size__"])
        if "__tuple__" in o:
            return tuple(_obj_decode(x) for x in o["__tuple__"])
        if "__dict__" in o:
            return {k: _obj_decode(v) for k, v in o["__dict__"].items()}
        raise WireError("unknown object encoding")
    return o


class _Work:
    """Handle returned by isend/irecv (CrypTen calls ``wait()`` on it)."""

    def __init__(self, fn: Callable[[], None] | None = None) -> None:
        self._fn = fn

    def wait(self) -> bool:
        if self._fn is not None:
            fn, self._fn = self._fn, None
            fn()
        return True

    def is_completed(self) -> bool:
        return self._fn is None


class ZmqCommunicator:
    """CrypTen communicator over CURVE ZeroMQ sockets (one ROUTER in, one DEALER per peer out).

    CrypTen looks its communicator up as a class-level instance
    (``crypten.communicator.DistributedCommunicator.get()``); :func:`activate`
    installs an instance there.  Byte and round counters follow CrypTen's names.
    """

    instance: "ZmqCommunicator | None" = None
    BYTES_PER_ELEMENT = 8

    def __init__(
        self,
        sctx: SecureContext,
        *,
        rank: int,
        endpoints: list[str],
        public_keys: list[str],
        secret_key: str,
        timeout_s: float = 60.0,
        transcript: str | os.PathLike[str] | None = None,
    ) -> None:
        """``transcript``: append every received peer payload to this file (for audits and tests)."""
        self.transcript = transcript
        self.rank = rank
        self.world_size = len(endpoints)
        self.timeout_s = timeout_s
        self._name = f"party{rank}"
        self.tag = "init"
        allowed = {pk: f"party:{j}" for j, pk in enumerate(public_keys) if j != rank}
        self.router = sctx.server(
            zmq.ROUTER, endpoints[rank], public_key=public_keys[rank], secret_key=secret_key,
            domain="peers", allowed=allowed,
        )
        self.out = {
            j: sctx.client(zmq.DEALER, endpoints[j], public_key=public_keys[rank], secret_key=secret_key,
                           server_key=public_keys[j])
            for j in range(self.world_size) if j != rank
        }
        self._pending: dict[int, collections.deque[tuple[dict[str, Any], Any]]] = collections.defaultdict(
            collections.deque)
        # messages of another session: a peer may already be in the next one (bounded, oldest dropped)
        self._early: collections.OrderedDict[str, list[tuple[int, dict[str, Any], Any]]] = collections.OrderedDict()
        self.reset_communication_stats()

    # --- CrypTen class-level protocol ----------------------------------------------
    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def get(cls) -> "ZmqCommunicator | None":
        return cls.instance

    @classmethod
    def initialize(cls, rank: int, world_size: int, init_ttp: bool = False) -> None:
        raise CommunicatorError("ZmqCommunicator is installed with mpc_agg.crypten_glue.activate()")

    @classmethod
    def shutdown(cls) -> None:
        cls.instance = None

    # --- sessions and statistics ----------------------------------------------------
    def set_session(self, tag: str) -> None:
        """Start a protocol session; messages that arrived early for it are kept, all others dropped."""
        self.tag = tag
        early = self._early.pop(tag, [])
        self._early.clear()
        self._pending.clear()
        for sender, meta, payload in early:
            self._pending[sender].append((meta, payload))

    def reset_communication_stats(self) -> None:
        self.comm_rounds = 0
        self.comm_bytes = 0
        self.comm_time = 0.0

    def get_communication_stats(self) -> dict[str, float]:
        return {"rounds": self.comm_rounds, "bytes": self.comm_bytes, "time": self.comm_time}

    def print_communication_stats(self) -> None:
        print(self.get_communication_stats())

    # --- point to point --------------------------------------------------------------
    def _send_raw(self, dst: int, meta: dict[str, Any], payload: bytes) -> None:
        if dst == self.rank or dst not in self.out:
            raise CommunicatorError(f"party {self.rank} cannot send to rank {dst}")
        meta = {**meta, "tag": self.tag, "src": self.rank}
        self.out[dst].send_multipart(encode_message(MsgType.PEER, meta, [payload]))
        self.comm_bytes += len(payload)

    def _recv_raw(self, src: int) -> tuple[dict[str, Any], Any]:
        if src == self.rank or not 0 <= src < self.world_size:
            raise CommunicatorError(f"party {self.rank} cannot receive from rank {src}")
        t0 = time.monotonic()
        deadline = t0 + self.timeout_s
        q = self._pending[src]
        while not q:
            left = deadline - time.monotonic()
            if left <= 0 or not self.router.poll(int(max(left, 0) * 1000) + 1, zmq.POLLIN):
                if time.monotonic() >= deadline:
                    raise AggregationTimeout(f"party {self.rank}: no message from party {src} "
                                             f"within {self.timeout_s:.0f} s (session {self.tag})")
                continue
            try:
                _, identity, msg = recv_authenticated(self.router)
            except WireError:
                continue  # malformed peer frame: dropped
            sender, tag = msg.meta.get("src"), msg.meta.get("tag")
            if (msg.type != MsgType.PEER or identity != f"party:{sender}" or len(msg.payloads) != 1
                    or not isinstance(tag, str)):
                continue  # forged sender or malformed: dropped
            if tag != self.tag:
                self._early.setdefault(tag, []).append((int(sender), msg.meta, msg.payloads[0]))
                self._early.move_to_end(tag)
                while len(self._early) > MAX_EARLY_SESSIONS or sum(len(v) for v in self._early.values()) > 4096:
                    self._early.popitem(last=False)
                continue
            self._pending[int(sender)].append((msg.meta, msg.payloads[0]))
            if self.transcript is not None:
                with open(self.transcript, "ab") as f:
                    f.write(msg.payloads[0])
        self.comm_time += time.monotonic() - t0
        return q.popleft()

    def _send_tensor(self, tensor: torch.Tensor, dst: int) -> None:
        meta, data = tensor_to_payload(tensor)
        self._send_raw(dst, {"kind": "tensor", **meta}, data)

    def _recv_tensor(self, src: int) -> torch.Tensor:
        meta, payload = self._recv_raw(src)
        if meta.get("kind") != "tensor":
            raise CommunicatorError(f"expected a tensor from party {src}, got {meta.get('kind')!r}")
        return payload_to_tensor(meta, payload)

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.comm_rounds += 1
        self._send_tensor(tensor, dst)

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        if src is None:
            raise CommunicatorError("recv needs an explicit source rank")
        self.comm_rounds += 1
        got = self._recv_tensor(src)
        if got.numel() != tensor.numel():
            raise CommunicatorError(f"party {src} sent {got.numel()} values where {tensor.numel()} were expected "
                                    f"(session {self.tag}): the parties are out of step")
        return got.reshape(tensor.shape).to(tensor.dtype)

    def isend(self, tensor: torch.Tensor, dst: int) -> _Work:
        self.send(tensor, dst)
        return _Work()

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _Work:
        def fill() -> None:
            got = self.recv(tensor, src)
            tensor.data.copy_(got)

        return _Work(fill)

    # --- collectives -------------------------------------------------------------------
    def _others(self) -> list[int]:
        return [j for j in range(self.world_size) if j != self.rank]

    def _exchange(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """All-to-all of a list of tensors; result[j] is party j's list."""
        for j in self._others():
            for t in tensors:
                self._send_tensor(t, j)
        out: list[list[torch.Tensor]] = []
        for j in range(self.world_size):
            out.append([t.clone() for t in tensors] if j == self.rank else
                       [self._recv_tensor(j) for _ in tensors])
        return out

    @staticmethod
    def _combine(values: list[torch.Tensor], op: Any) -> torch.Tensor:
        from torch.distributed import ReduceOp

        result = values[0].clone()
        for v in values[1:]:
            if op == ReduceOp.SUM:
                result = result + v
            elif op == ReduceOp.BXOR:
                result = result ^ v
            else:
                raise CommunicatorError(f"reduce op {op} not supported")
        return result

    def all_reduce(self, input: Any, op: Any = None, batched: bool = False) -> Any:
        from torch.distributed import ReduceOp

        op = ReduceOp.SUM if op is None else op
        self.comm_rounds += 1
        tensors = list(input) if batched else [input]
        gathered = self._exchange(tensors)
        result = [self._combine([gathered[j][i] for j in range(self.world_size)], op)
                  for i in range(len(tensors))]
        return result if batched else result[0]

    def reduce(self, input: Any, dst: int, op: Any = None, batched: bool = False) -> Any:
        from torch.distributed import ReduceOp

        op = ReduceOp.SUM if op is None else op
        self.comm_rounds += 1
        tensors = list(input) if batched else [input]
        if self.rank != dst:
            for t in tensors:
                self._send_tensor(t, dst)
            return None
        received = {j: [self._recv_tensor(j) for _ in tensors] for j in self._others()}
        result = []
        for i, t in enumerate(tensors):
            vals = [t if j == self.rank else received[j][i] for j in range(self.world_size)]
            result.append(self._combine(vals, op))
        return result if batched else result[0]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        self.comm_rounds += 1
        tensors = list(input) if batched else [input]
        if self.rank == src:
            for j in self._others():
                for t in tensors:
                    self._send_tensor(t, j)
        else:
            for t in tensors:
                got = self._recv_tensor(src)
                t.data.copy_(got.reshape(t.shape))
        return input

    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        self.comm_rounds += 1
        if self.rank != dst:
            self._send_tensor(tensor, dst)
            return [None]
        return [tensor.clone() if j == self.rank else self._recv_tensor(j) for j in range(self.world_size)]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.comm_rounds += 1
        return [x[0] for x in self._exchange([tensor])]

    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None, device: Any = None) -> Any:
        self.comm_rounds += 1
        if self.rank == src:
            for j in self._others():
                self._send_tensor(scatter_list[j], j)
            return scatter_list[self.rank]
        return self._recv_tensor(src)

    def barrier(self) -> None:
        self.all_gather(torch.zeros(1, dtype=torch.int64))

    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        import json

        self.comm_rounds += 1
        self._send_raw(dst, {"kind": "obj"}, json.dumps(_obj_encode(obj)).encode())

    def recv_obj(self, src: int, group: Any = None) -> Any:
        self.comm_rounds += 1
        meta, payload = self._recv_raw(src)
        if meta.get("kind") != "obj":
            raise CommunicatorError(f"expected an object from party {src}")
        return _obj_decode(loads_bounded(bytes(payload), max_depth=32))  # tagged objects nest twice as deep

    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        if self.rank == src:
            for j in self._others():
                self.send_obj(obj, j)
            return obj
        return self.recv_obj(src)

    # --- identity -----------------------------------------------------------------------
    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "zmq-curve"


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
        meta = {"session": self.session, "seq": self.seq, "fn": fn, "params": _obj_encode(params)}
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


def activate(comm: ZmqCommunicator, provider: DealerProvider | None, session: str) -> None:
    """Make ``comm`` CrypTen's communicator and start a session under ``session``.

    CrypTen's pairwise/global PRNG seeds are (re)exchanged for the session over
    the encrypted channel; the provider is the dealer, or one that refuses.
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
    crypten._setup_prng()


def deactivate() -> None:
    ZmqCommunicator.instance = None


_DEALER_CTX = ShareContext(round_id=0, client_id="dealer", report_id=bytes(16))


def expand_dealer_seed(seed: bytes, shape: list[int], party: int, bits: int = 64) -> torch.Tensor:
    """A dealer share sent as a 32-byte seed, expanded with AES-CTR (as client helper shares are)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    out = torch.from_numpy(expand_seed(seed, _DEALER_CTX, party, n).reshape(shape))
    return out & ((1 << bits) - 1) if bits < 64 else out


def random_ring(shape: list[int]) -> torch.Tensor:
    """Uniform int64 ring elements: AES-CTR keystream under a fresh ``os.urandom`` seed."""
    return expand_dealer_seed(os.urandom(SEED_BYTES), shape, 0)

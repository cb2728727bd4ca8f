"""CrypTen's ``Communicator`` interface over CURVE-encrypted ZeroMQ sockets between the parties.

send/recv, isend/irecv, broadcast, reduce, all_reduce, gather, all_gather,
scatter, barrier and the *_obj calls; objects travel as tagged JSON, never
pickle (mpc_agg.tensor_codec).  Messages carry a session tag so an aborted
session's leftovers are never mixed into the next.  Installed as CrypTen's
communicator by :func:`mpc_agg.crypten_glue.activate`.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable

import torch
import zmq

from .errors import AggregationTimeout, CommunicatorError, WireError
from .tensor_codec import obj_decode, obj_encode, payload_to_tensor, tensor_to_payload
from .transport import SecureContext, recv_authenticated
from .wire import MsgType, encode_message, loads_bounded

__all__ = ["ZmqCommunicator", "MAX_EARLY_SESSIONS"]

MAX_EARLY_SESSIONS = 4


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
        self._send_raw(dst, {"kind": "obj"}, json.dumps(obj_encode(obj)).encode())

    def recv_obj(self, src: int, group: Any = None) -> Any:
        self.comm_rounds += 1
        meta, payload = self._recv_raw(src)
        if meta.get("kind") != "obj":
            raise CommunicatorError(f"expected an object from party {src}")
        return obj_decode(loads_bounded(bytes(payload), max_depth=32))  # tagged objects nest twice as deep

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

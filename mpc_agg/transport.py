"""ZeroMQ transport: every control socket is CURVE-encrypted and mutually authenticated.

Servers (party client endpoints, party peer endpoints, the dealer) accept only
the CURVE public keys listed in the deployment for their ZAP domain; the
authenticated key is mapped to an identity (``"client:ID"``, ``"coordinator"``,
``"party:I"``) that handlers read from the message's ``User-Id`` property, so
no role can claim to be another one (RFC 27 ZAP, RFC 26 CurveZMQ).

The one exception is a party's bulk endpoint (:meth:`SecureContext.bulk_server`): it
carries only share chunks sealed with AES-GCM under per-upload keys handed out over
CURVE (mpc_agg.bulk), and its sender identity is ``"bulk"``: whoever the key proves.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import zmq
from zmq.auth.thread import ThreadAuthenticator

from .errors import AggregationTimeout, ConfigError, WireError, error_from_code
from .messages import REPLIES, check_reply
from .wire import Message, MsgType, decode_message, encode_message

__all__ = ["SecureContext", "Requester", "recv_authenticated", "DEFAULT_MAX_MESSAGE"]

DEFAULT_MAX_MESSAGE = (1 << 31) + (1 << 20)


class _KeyAuthenticator(ThreadAuthenticator):
    """ZAP handler that maps allowed CURVE keys to role identities."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context)
        self.identities: dict[bytes, str] = {}

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.identities.get(zmq.utils.z85.encode(client_public_key), "unknown")


class SecureContext:
    """A ZeroMQ context whose sockets are all CURVE sockets; close() stops everything."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self._auth: _KeyAuthenticator | None = None  # started with the first server socket
        self._sockets: list[zmq.Socket] = []

    def server(
        self,
        sock_type: int,
        endpoint: str,
        *,
        public_key: str,
        secret_key: str,
        domain: str,
        allowed: Mapping[str, str],
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> zmq.Socket:
        """Bind a CURVE server socket that admits only ``allowed`` (key → identity)."""
        if self._auth is None:
            self._auth = _KeyAuthenticator(self.ctx)
            self._auth.start()
            self._auth.allow_any = False
        self._auth.certs[domain] = {k.encode("ascii"): True for k in allowed}
        self._auth.identities.update({k.encode("ascii"): v for k, v in allowed.items()})
        s = self.ctx.socket(sock_type)
        s.curve_server = True
        s.curve_publickey = public_key.encode("ascii")
        s.curve_secretkey = secret_key.encode("ascii")
        s.zap_domain = domain.encode("ascii")
        s.setsockopt(zmq.MAXMSGSIZE, max_message)
        s.linger = 1000
        return self._bind(s, endpoint)

    def _bind(self, s: zmq.Socket, endpoint: str) -> zmq.Socket:
        self._sockets.append(s)
        try:
            s.bind(endpoint)
        except zmq.ZMQError as exc:
            hint = " (is another process already listening there?)" if exc.errno == zmq.EADDRINUSE else ""
            raise ConfigError(f"cannot listen on {endpoint}: {zmq.strerror(exc.errno)}{hint}") from None
        return s

    def bulk_server(self, endpoint: str, *, max_message: int) -> zmq.Socket:
        """Bind a ROUTER without CURVE for sealed chunks (mpc_agg.bulk); nothing else is served there."""
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.MAXMSGSIZE, max_message)
        s.linger = 1000
        return self._bind(s, endpoint)

    def bulk_client(self, endpoint: str) -> zmq.Socket:
        """Connect a DEALER without CURVE to a party's bulk endpoint: only sealed chunks go there."""
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 1000
        s.connect(endpoint)
        self._sockets.append(s)
        return s

    def client(
        self, sock_type: int, endpoint: str, *, public_key: str, secret_key: str, server_key: str
    ) -> zmq.Socket:
        """Connect a CURVE client socket that only talks to ``server_key``."""
        s = self.ctx.socket(sock_type)
        s.curve_publickey = public_key.encode("ascii")
        s.curve_secretkey = secret_key.encode("ascii")
        s.curve_serverkey = server_key.encode("ascii")
        s.linger = 1000
        s.connect(endpoint)
        self._sockets.append(s)
        return s

    def close(self) -> None:
        for s in self._sockets:
            s.close(linger=0)
        self._sockets.clear()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()

    def __enter__(self) -> "SecureContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recv_authenticated(sock: zmq.Socket, *, max_payload: int | None = None,
                       identity: str | None = None) -> tuple[bytes, str, Message]:
    """Receive one message on a ROUTER: (routing id, authenticated identity, message).

    ``identity`` names the sender of a socket without CURVE (``"bulk"``); otherwise it is
    the CURVE identity.  Raises WireError for a malformed message (the routing id is
    attached as ``exc.routing_id`` so the caller can answer it).
    """
    frames = sock.recv_multipart(copy=False)
    rid = frames[0].bytes
    if identity is None:
        identity = frames[-1].get("User-Id") if len(frames) > 1 else "unknown"
    try:
        kwargs = {} if max_payload is None else {"max_payload": max_payload}
        msg = decode_message(frames[1:], **kwargs)
    except WireError as exc:
        exc.routing_id = rid  # type: ignore[attr-defined]
        exc.identity = identity  # type: ignore[attr-defined]
        raise
    return rid, identity, msg


class Requester:
    """Request/reply over a DEALER socket with request ids (stale replies dropped).

    Each reply is checked against the schema of its request's reply (mpc_agg.messages.REPLIES)
    before the caller sees it, unless ``typed=False`` (the plaintext benchmark's own dialect)."""

    max_outstanding = 1024  # requests remembered for their reply's check; older ones are forgotten

    def __init__(self, sock: zmq.Socket, *, typed: bool = True) -> None:
        self.sock, self.typed = sock, typed
        self.bytes_sent = 0  # message bytes handed to the socket (before CURVE framing)
        self._sent: dict[str, MsgType] = {}

    def send(self, mtype: MsgType, meta: dict[str, Any], payloads: Sequence[Any] = ()) -> str:
        rid = os.urandom(8).hex()
        frames = encode_message(mtype, {**meta, "rid": rid}, payloads)
        self.sock.send_multipart(frames, copy=False)
        self.bytes_sent += sum(memoryview(f).nbytes for f in frames)
        if len(self._sent) >= self.max_outstanding:
            del self._sent[next(iter(self._sent))]
        self._sent[rid] = mtype
        return rid

    def wait(self, rid: str, deadline: float, what: str) -> Message:
        """Wait for the reply to ``rid``; remote ERRORs are raised as their typed error."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AggregationTimeout(f"no answer from {what} in time")
            if not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                continue
            msg = decode_message(self.sock.recv_multipart(copy=False))
            if msg.meta.get("rid") != rid:
                continue  # a late answer to an earlier request
            if msg.type == MsgType.ERROR:
                text = str(msg.meta.get("message"))  # prefixed with who answered, once
                raise error_from_code(str(msg.meta.get("code")), text if text.startswith(f"{what}:") else
                                      f"{what}: {text}")
            mtype = self._sent.pop(rid, None)
            if self.typed and mtype in REPLIES:
                try:
                    check_reply(mtype, msg)
                except WireError as exc:
                    raise WireError(f"{what}: {exc}") from None
            return msg

    def request(
        self, mtype: MsgType, meta: dict[str, Any], payloads: Sequence[Any] = (), *, timeout_s: float, what: str
    ) -> Message:
        rid = self.send(mtype, meta, payloads)
        return self.wait(rid, time.monotonic() + timeout_s, what)

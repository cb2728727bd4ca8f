"""A request/reply server on one CURVE ROUTER socket: the shape every role process shares.

Subclasses map message types to handlers ``(identity, message) -> (type, meta,
payloads)``; a handler's typed error becomes an ERROR reply with its code, a
malformed frame a ``wire`` ERROR, and the process keeps serving either way.
``stop()`` (e.g. from SIGTERM) ends ``serve()`` after the request in hand.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import zmq

from .errors import AuthError, MpcAggError, UnknownClientError, WireError
from .transport import SecureContext, recv_authenticated
from .wire import Message, MsgType, encode_message, require

__all__ = ["Service", "Reply", "reporting_client"]

Reply = tuple[MsgType, dict[str, Any], Sequence[Any]]
Handler = Callable[[str, Message], Reply]


def reporting_client(identity: str, meta: dict[str, Any]) -> str:
    """The client id a report comes from: its authenticated CURVE identity, which the metadata must repeat."""
    if not identity.startswith("client:"):
        raise AuthError("only clients submit reports")
    client = identity.split(":", 1)[1]
    if require(meta, "client", str) != client:
        raise UnknownClientError(f"report claims client {meta['client']!r} but comes from {client!r}")
    return client


class Service:
    """Serve ``handlers`` on ``sock`` until stopped; closes ``sctx`` at the end."""

    log = logging.getLogger("mpc_agg.service")

    def __init__(self, sctx: SecureContext, sock: zmq.Socket, handlers: dict[MsgType, Handler], name: str) -> None:
        self.sctx, self.sock, self.handlers, self.name = sctx, sock, handlers, name
        self._stop = False

    def stop(self, *_: Any) -> None:
        self._stop = True

    def serve(self) -> None:
        self.log.info("event=start service=%s", self.name)
        try:
            while not self._stop:
                if self.sock.poll(200, zmq.POLLIN):
                    self.handle_one()
        finally:
            self.log.info("event=stop service=%s", self.name)
            self.close()

    def close(self) -> None:
        self.sctx.close()

    def handle_one(self) -> None:
        try:
            routing_id, identity, msg = recv_authenticated(self.sock)
        except WireError as exc:
            self.log.warning("event=bad_frame service=%s error=%s", self.name, exc)
            self.reply_error(getattr(exc, "routing_id", None), None, exc)
            return
        try:
            handler = self.handlers.get(msg.type)
            if handler is None:
                raise WireError(f"message type {msg.type.name} is not served here")
            mtype, meta, payloads = handler(identity, msg)
        except MpcAggError as exc:
            self.log.info("event=refused service=%s from=%s type=%s code=%s reason=%s",
                          self.name, identity, msg.type.name, exc.code, exc)
            self.reply_error(routing_id, msg.meta.get("rid"), exc)
            return
        except Exception as exc:  # a bug or a library failure must not take the service down
            self.log.exception("event=internal_error service=%s from=%s type=%s", self.name, identity, msg.type.name)
            self.reply_error(routing_id, msg.meta.get("rid"),
                             MpcAggError(f"{self.name}: internal error ({type(exc).__name__}); see its log"))
            return
        self.reply(routing_id, mtype, {**meta, "rid": msg.meta.get("rid")}, payloads)

    def reply(self, routing_id: bytes, mtype: MsgType, meta: dict[str, Any], payloads: Sequence[Any] = ()) -> None:
        self.sock.send_multipart([routing_id, *encode_message(mtype, meta, payloads)], copy=False)

    def reply_error(self, routing_id: bytes | None, req_id: Any, exc: MpcAggError) -> None:
        if routing_id is not None:
            self.reply(routing_id, MsgType.ERROR, {"code": exc.code, "message": str(exc), "rid": req_id})

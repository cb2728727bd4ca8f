"""A request/reply server on one CURVE ROUTER socket (and a party's bulk endpoint): the shape every role
process shares.

Subclasses map message types to handlers ``(request) -> (type, meta, payloads)``,
or None for a request they answer later: the :class:`Request` carries an explicit
:class:`ReplyTo` token that :meth:`Service.send_reply` takes (docs/PROTOCOL.md,
"Deferred replies").  A handler's typed error becomes an ERROR reply with its
code, a malformed frame a ``wire`` ERROR, and the process keeps serving either way.
``stop()`` (e.g. from SIGTERM) drains queued requests, then ends ``serve()``.
An optional ``validate`` hook (a party's request schemas, mpc_agg.messages) runs
before the handler.  No exception raised while one message is handled ends the
loop: it is answered (where the sender is known), logged once and counted.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import zmq

from .errors import AuthError, MpcAggError, UnknownClientError, WireError
from .logs import event
from .messages import BULK
from .transport import SecureContext, recv_authenticated
from .wire import Message, MsgType, encode_message, require

__all__ = ["Service", "Reply", "ReplyTo", "Request", "dispatch", "new_counters", "reporting_client"]

Reply = tuple[MsgType, dict[str, Any], Sequence[Any]]


@dataclass(frozen=True)
class ReplyTo:
    """Where the answer to one request goes: the sender's routing id and its request id (echoed)."""

    routing_id: bytes
    rid: str | None
    bulk: bool = False
    """the request came on the bulk endpoint (sealed chunks, mpc_agg.bulk): its answer goes back there"""


@dataclass(frozen=True)
class Request:
    """One authenticated request: who sent it (``client:ID``, ``coordinator``, ``party:N``), what, and
    the token its answer is sent to, now (the handler returns a Reply) or later (send_reply)."""

    identity: str
    msg: Message
    reply_to: ReplyTo

    @property
    def meta(self) -> dict[str, Any]:
        return self.msg.meta


Handler = Callable[[Request], "Reply | None"]
log = logging.getLogger("mpc_agg.service")


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reporting_client(identity: str, meta: dict[str, Any]) -> str:
    """The client id a report comes from: its authenticated CURVE identity, which the metadata must repeat."""
    if not identity.startswith("client:"):
        raise AuthError("only clients submit reports")
    client = identity.split(":", 1)[1]
    if require(meta, "client", str) != client:
        raise UnknownClientError(f"report claims client {meta['client']!r} but comes from {client!r}")
    return client


def dispatch(handlers: dict[MsgType, Handler], req: Request, *, validate: Callable[[str, Message], None] | None,
             counters: dict[str, int], name: str) -> Reply | MpcAggError | None:
    """One request through ``validate`` and its handler: the reply, the typed error to send instead,
    or None (answered later).  Any other exception is logged, counted and becomes an internal error."""
    handler = handlers.get(req.msg.type)
    try:
        if handler is None:
            raise WireError(f"message type {req.msg.type.name} is not served here")
        if validate is not None:
            validate(req.identity, req.msg)
        return handler(req)
    except MpcAggError as exc:
        counters["refused"] += 1
        event(log, "refused", service=name, identity=req.identity, type=req.msg.type.name,
              code=exc.code, reason=exc)
        return exc.with_traceback(None)  # no frame (holding the request's payloads) outlives the reply
    except Exception as exc:  # a bug or a library failure must not take the service down
        counters["internal_errors"] += 1
        event(log, "internal_error", logging.ERROR, exc_info=True, service=name, identity=req.identity,
              type=req.msg.type.name)
        return MpcAggError(f"{name}: internal error ({type(exc).__name__}); see its log")


def new_counters() -> dict[str, int]:
    return {"handled": 0, "refused": 0, "bad_frames": 0, "internal_errors": 0}


class Service:
    """Serve ``handlers`` on ``sock`` until stopped; closes ``sctx`` at the end.

    ``stop()`` (SIGTERM) drains: the request in hand finishes, then requests that
    are already queued are still answered until none arrives for ``drain_idle_s``
    (at most ``drain_s`` in all); only then do the sockets close.  Every
    ``health_interval_s`` the service logs one ``event=health`` line.
    """

    log = log
    drain_s = 10.0
    drain_idle_s = 0.2
    health_interval_s = 60.0

    def __init__(self, sctx: SecureContext, sock: zmq.Socket, handlers: dict[MsgType, Handler], name: str, *,
                 validate: Callable[[str, Message], None] | None = None, bulk: zmq.Socket | None = None,
                 bulk_handlers: dict[MsgType, Handler] | None = None) -> None:
        self.sctx, self.sock, self.handlers, self.name = sctx, sock, handlers, name
        self.validate = validate
        self.bulk, self.bulk_handlers = bulk, bulk_handlers or {}  # sender "bulk": sealed chunks only
        self._poller = zmq.Poller()
        for s in (sock, bulk):
            if s is not None:
                self._poller.register(s, zmq.POLLIN)
        self._stop = False
        self.started = time.monotonic()
        self.counters = new_counters()

    def stop(self, *_: Any) -> None:
        self._stop = True

    def health(self) -> dict[str, Any]:
        """Liveness figures for ``mpc-agg status`` and the periodic ``event=health`` line."""
        return {"service": self.name, "uptime_s": round(time.monotonic() - self.started, 3),
                "peak_rss_bytes": _peak_rss_bytes(), "draining": self._stop, **self.counters}

    def serve(self) -> None:
        event(self.log, "start", service=self.name)
        next_health = time.monotonic() + self.health_interval_s
        try:
            while not self._stop:
                self._step(200)
                if time.monotonic() >= next_health:
                    event(self.log, "health", **self.health())
                    next_health = time.monotonic() + self.health_interval_s
            drained, deadline = 0, time.monotonic() + self.drain_s
            while time.monotonic() < deadline and self._step(int(self.drain_idle_s * 1000)):
                drained += 1
            event(self.log, "drained", service=self.name, requests=drained)
        finally:
            event(self.log, "stop", service=self.name, **self.counters)
            self.close()

    def _step(self, poll_ms: int) -> bool:
        """Serve at most one message, then tick; True if a message was there.  Never raises (but ZMQ's
        context termination): a failure is logged and counted and the next message is served."""
        got = False
        try:
            ready = dict(self._poller.poll(poll_ms))
            got = bool(ready)
            if self.sock in ready:
                self.handle_one()
            if self.bulk is not None and self.bulk in ready:
                self.handle_one(bulk=True)
            self.tick()
        except zmq.ContextTerminated:
            raise
        except Exception:
            self.counters["internal_errors"] += 1
            event(self.log, "internal_error", logging.ERROR, exc_info=True, service=self.name, stage="loop")
        return got

    def pending(self) -> bool:
        """A request is waiting on one of the sockets."""
        return bool(self._poller.poll(0))

    def close(self) -> None:
        self.sctx.close()

    def tick(self) -> None:
        """Called after every request and at least every 200 ms (group commit, timeouts of work in progress)."""

    def handle_one(self, *, bulk: bool = False) -> None:
        try:
            routing_id, identity, msg = recv_authenticated(self.bulk if bulk else self.sock,
                                                           identity=BULK if bulk else None)
        except WireError as exc:
            self.counters["bad_frames"] += 1
            event(self.log, "bad_frame", logging.WARNING, service=self.name,
                  identity=getattr(exc, "identity", "unknown"), error=exc)
            routing_id = getattr(exc, "routing_id", None)
            self.send_reply(None if routing_id is None else ReplyTo(routing_id, None, bulk), exc)
            return
        rid = msg.meta.get("rid")  # echoed only when it is a short string
        self.serve_request(Request(identity, msg, ReplyTo(routing_id, rid if isinstance(rid, str) and len(rid) <= 64
                                                          else None, bulk)))

    def serve_request(self, req: Request) -> None:
        """Validate and handle one request, then send its reply or typed error (None: answered later)."""
        handlers = self.bulk_handlers if req.reply_to.bulk else self.handlers
        answer = dispatch(handlers, req, validate=self.validate, counters=self.counters, name=self.name)
        if answer is not None:
            self.send_reply(req.reply_to, answer)

    def send_reply(self, to: ReplyTo | None, answer: Reply | MpcAggError) -> None:
        """Send ``answer`` (a reply, or a typed error as an ERROR message) to a request's token."""
        if to is None:
            return
        if isinstance(answer, MpcAggError):
            mtype, meta, payloads = MsgType.ERROR, {"code": answer.code, "message": str(answer)}, ()
        else:
            self.counters["handled"] += 1
            mtype, meta, payloads = answer
        sock = self.bulk if to.bulk else self.sock
        sock.send_multipart([to.routing_id, *encode_message(mtype, {**meta, "rid": to.rid}, payloads)], copy=False)

"""Every message's fields in one place: request schemas (checked by the server before any handler runs,
and by the sender when it builds one: :func:`request`) and reply schemas (checked by the requester:
:func:`check_reply`); docs/PROTOCOL.md has the table.

The envelope (:mod:`mpc_agg.wire`) guarantees a JSON object of bounded size and
depth; this module guarantees that the object is one of the request shapes
(SECURITY.md, "Hostile clients: every limit"): the sender's role first, then known
fields only, each of its type, strings of bounded length, report ids of exactly 32
lowercase hex characters, and the payload frame count the type carries.  A violation is
a :class:`WireError` whose message names the field but never repeats its value (so a
1 MB id is neither echoed nor logged).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import AuthError, WireError
from .wire import Message, MsgType

__all__ = ["Field", "Schema", "REQUESTS", "REPLIES", "CLIENT", "COORDINATOR", "PARTY", "BULK", "request", "check_reply",
           "validate_request", "MAX_ID_CHARS", "MAX_ROUND_ID"]

MAX_ID_CHARS = 128
"""Longest client id, session id or request id accepted."""
MAX_ROUND_ID = 2**63 - 1
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Field:
    """One metadata field: ``kind`` is "int", "number", "bool", "str", "hex32", "hex64", "object" or "list"."""

    kind: str
    required: bool = True
    max_len: int = MAX_ID_CHARS
    minimum: float = 0


CLIENT, COORDINATOR, PARTY, DEALER, BULK = "client", "coordinator", "party", "dealer", "bulk"
"""Roles; ``bulk`` is the unauthenticated sender on a party's bulk endpoint, whose chunks the upload key
authenticates (mpc_agg.bulk)."""


@dataclass(frozen=True)
class Schema:
    senders: frozenset[str]
    """roles that may send it (the authenticated identity's prefix: ``client:ID`` → client)"""
    fields: Mapping[str, Field]
    payloads: int = 0
    extra_allowed: bool = False
    """True only where the handler itself refuses unknown fields with a more specific error."""


def _check(name: str, f: Field, value: Any) -> None:
    if f.kind in ("int", "number"):
        ok_type = (int,) if f.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            raise WireError(f"field {name!r} must be a{'n integer' if f.kind == 'int' else ' number'}")
        if not (math.isfinite(value) and f.minimum <= value <= MAX_ROUND_ID):
            raise WireError(f"field {name!r} is out of range")
    elif f.kind in ("object", "list", "bool"):
        if not isinstance(value, {"object": dict, "list": list, "bool": bool}[f.kind]):
            raise WireError(f"field {name!r} must be a{'n' if f.kind == 'object' else ''} {f.kind}")
    else:
        if not isinstance(value, str):
            raise WireError(f"field {name!r} must be a string")
        if f.kind == "hex32" and not _HEX32.fullmatch(value):
            raise WireError(f"field {name!r} must be 32 lowercase hex characters")
        if f.kind == "hex64" and not _HEX64.fullmatch(value):
            raise WireError(f"field {name!r} must be 64 lowercase hex characters")
        if not 0 < len(value) <= f.max_len:
            raise WireError(f"field {name!r} must be 1 to {f.max_len} characters")


_RID = Field("str", required=False, max_len=64)
_ROUND = Field("int")
_REPORT = {"rid": _RID, "round": _ROUND, "client": Field("str"), "report_id": Field("hex32"),
           "spec_digest": Field("hex64")}
_ANY, _CLIENT, _COORD = frozenset({CLIENT, COORDINATOR}), frozenset({CLIENT}), frozenset({COORDINATOR})
REQUESTS: dict[MsgType, Schema] = {
    MsgType.STATUS: Schema(_ANY, {"rid": _RID}),
    MsgType.GET_SPEC: Schema(_ANY, {"rid": _RID, "round": _ROUND}),
    MsgType.OPEN_ROUND: Schema(_COORD, {"rid": _RID, "spec": Field("object")}),
    MsgType.REPORT: Schema(_CLIENT, {**_REPORT}, payloads=1),
    MsgType.REPORT_BEGIN: Schema(_CLIENT, {**_REPORT, "deadline": Field("number")}),
    MsgType.REPORT_CHUNK: Schema(frozenset({BULK}), {"rid": _RID, "report_id": Field("hex32"),
                                                     "offset": Field("int")}, payloads=1),
    MsgType.CLOSE_ROUND: Schema(_COORD, {"rid": _RID, "round": _ROUND, "session": Field("str"),
                                         "deadline": Field("number")}, extra_allowed=True),
    MsgType.DEALER_REQUEST: Schema(frozenset({PARTY}), {"rid": _RID, "session": Field("str"), "seq": Field("int"),
                                                        "fn": Field("str"), "params": Field("object", False)}),
}
"""Every request a service serves: sender → party, or party → dealer (DEALER_REQUEST)."""

_PARTY, _OUT = frozenset({PARTY}), {"rid": _RID}
REPLIES: dict[MsgType, tuple[MsgType, Schema]] = {
    MsgType.STATUS: (MsgType.STATUS, Schema(_PARTY, {**_OUT, "party": Field("int"), "leader": Field("bool"),
                                                     "rounds": Field("object"), "min_clients": Field("int")},
                                            extra_allowed=True)),  # and the service's health figures
    MsgType.GET_SPEC: (MsgType.SPEC, Schema(_PARTY, {**_OUT, "spec": Field("object"), "digest": Field("hex64"),
                                                     "party": Field("int")})),
    MsgType.OPEN_ROUND: (MsgType.OK, Schema(_PARTY, {**_OUT, "digest": Field("hex64")})),
    MsgType.REPORT: (MsgType.OK, Schema(_PARTY, {**_OUT, "report_id": Field("hex32")})),
    MsgType.REPORT_BEGIN: (MsgType.OK, Schema(_PARTY, {**_OUT, "report_id": Field("hex32"),
                                                       "chunk": Field("int", minimum=2), "key": Field("hex64")})),
    MsgType.REPORT_CHUNK: (MsgType.OK, Schema(_PARTY, {**_OUT, "report_id": Field("hex32"), "next": Field("int"),
                                                       "done": Field("bool"), "tag": Field("hex32")})),
    MsgType.CLOSE_ROUND: (MsgType.SUM_SHARE, Schema(_PARTY, {
        **_OUT, "round": _ROUND, "party": Field("int"), "cohort": Field("list"), "clients": Field("list"),
        "rejected": Field("list"), "stats": Field("object", False)}, payloads=-1)),
    MsgType.DEALER_REQUEST: (MsgType.DEALER_REPLY, Schema(frozenset({DEALER}), {**_OUT, "tensors": Field("list")},
                                                          payloads=-1)),
}
"""The reply to each request type (an ERROR reply aside, which the requester raises as its typed error).
``payloads=-1``: any number of frames (the sum share in slices; one frame per dealt tensor)."""


def _check_fields(what: str, schema: Schema, meta: Mapping[str, Any]) -> None:
    if not schema.extra_allowed:
        unknown = set(meta) - set(schema.fields)
        if unknown:
            raise WireError(f"{what} has {len(unknown)} unknown field(s)")
    for name, f in schema.fields.items():
        if name in meta and (f.required or meta[name] is not None):  # null: an optional field left out
            _check(name, f, meta[name])
        elif f.required:
            raise WireError(f"{what} lacks field {name!r}")


def request(mtype: MsgType, **fields: Any) -> dict[str, Any]:
    """A request's metadata, checked against its schema by the sender (a bug here is a WireError, not a
    refusal from the other side)."""
    _check_fields(mtype.name, REQUESTS[mtype], fields)
    return fields


def check_reply(request_type: MsgType, msg: Message) -> Message:
    """Raise WireError unless ``msg`` is the reply its request's type gets (REPLIES); returns it."""
    expected, schema = REPLIES[request_type]
    if msg.type != expected:
        raise WireError(f"a {request_type.name} request got a {msg.type.name} reply, not {expected.name}")
    if schema.payloads >= 0 and len(msg.payloads) != schema.payloads:
        raise WireError(f"{msg.type.name} carries {schema.payloads} payload frame(s), got {len(msg.payloads)}")
    _check_fields(f"{expected.name} reply", schema, msg.meta)
    return msg


def validate_request(identity: str, msg: Message) -> None:
    """Raise AuthError unless ``identity``'s role may send ``msg``, WireError unless ``msg`` matches its
    type's schema in :data:`REQUESTS`."""
    schema = REQUESTS.get(msg.type)
    if schema is None:
        raise WireError(f"message type {msg.type.name} is not a request a party serves")
    if identity.split(":", 1)[0] not in schema.senders:
        raise AuthError(f"{msg.type.name} may only be sent by: {', '.join(sorted(schema.senders))}")
    if len(msg.payloads) != schema.payloads:
        raise WireError(f"{msg.type.name} carries {schema.payloads} payload frame(s), got {len(msg.payloads)}")
    _check_fields(msg.type.name, schema, msg.meta)

"""Schemas of the requests a party serves: each field's type and bounds, checked before any handler runs.

The envelope (:mod:`mpc_agg.wire`) guarantees a JSON object of bounded size and
depth; this module guarantees that the object is one of the request shapes
(SECURITY.md, "Hostile clients: every limit"): the sender's role first, then known
fields only, each of its type, strings of bounded length, report ids of exactly 32
lowercase hex characters, and the payload frame count the type carries.  A violation is a :class:`WireError` whose message
names the field but never repeats its value (so a 1 MB id is neither echoed nor
logged).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import AuthError, WireError
from .wire import Message, MsgType

__all__ = ["Field", "Schema", "REQUESTS", "CLIENT", "COORDINATOR", "validate_request", "MAX_ID_CHARS", "MAX_ROUND_ID"]

MAX_ID_CHARS = 128
"""Longest client id, session id or request id accepted."""
MAX_ROUND_ID = 2**63 - 1
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Field:
    """One metadata field: ``kind`` is "int", "number", "str", "hex32", "hex64" or "object"."""

    kind: str
    required: bool = True
    max_len: int = MAX_ID_CHARS
    minimum: float = 0


CLIENT, COORDINATOR = "client", "coordinator"


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
    elif f.kind == "object":
        if not isinstance(value, dict):
            raise WireError(f"field {name!r} must be an object")
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
    MsgType.REPORT_CHUNK: Schema(_CLIENT, {"rid": _RID, "report_id": Field("hex32"), "offset": Field("int")},
                                 payloads=1),
    MsgType.CLOSE_ROUND: Schema(_COORD, {"rid": _RID, "round": _ROUND, "session": Field("str"),
                                         "deadline": Field("number")}, extra_allowed=True),
}
"""Every request a party serves (sender → party; replies are built by the party itself)."""


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
    if not schema.extra_allowed:
        unknown = set(msg.meta) - set(schema.fields)
        if unknown:
            raise WireError(f"{msg.type.name} has {len(unknown)} unknown field(s)")
    for name, f in schema.fields.items():
        if name in msg.meta:
            _check(name, f, msg.meta[name])
        elif f.required:
            raise WireError(f"{msg.type.name} lacks field {name!r}")

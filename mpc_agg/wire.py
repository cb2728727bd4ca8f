"""The one versioned binary wire format of mpc-agg (every socket uses it).

A message is a ZeroMQ multipart message::

    frame 0  header, 16 bytes, big-endian:
             magic  b"MPAG"     4 bytes
             version            u8   (PROTOCOL_VERSION)
             type               u8   (MsgType)
             flags              u16  (must be 0)
             meta_len           u32  (length of frame 1)
             n_payloads         u32  (number of frames after frame 1)
    frame 1  metadata: UTF-8 JSON object, at most meta_limit(type) bytes
    frame 2+ raw payloads (little-endian arrays or seeds), each <= max_payload

No pickle ever: metadata is JSON, bulk data raw bytes interpreted by the
receiving handler against the round spec.  Any violation raises WireError.

Metadata is parsed by :func:`loads_bounded`, which cannot be crashed: nesting
deeper than MAX_DEPTH is refused before the parser runs, integers longer than
MAX_INT_DIGITS, NaN/Infinity and duplicate keys are refused.  Message types that a
client may send to be queued or held have a small metadata cap, SMALL_META_BYTES
(SECURITY.md, "Hostile clients: every limit").  Per-type field schemas are in
:mod:`mpc_agg.messages`.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import WireError

__all__ = [
    "PROTOCOL_VERSION",
    "INLINE_MAX",
    "MAGIC",
    "HEADER",
    "MAX_META_BYTES",
    "SMALL_META_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "UPLOAD_WINDOW",
    "DEFAULT_MAX_PAYLOAD",
    "MsgType",
    "Message",
    "encode_message",
    "decode_message",
    "loads_bounded",
    "meta_limit",
]

PROTOCOL_VERSION = 3  # 2: REPORT_CHUNK sealed on the bulk endpoint (mpc_agg.bulk); 3: the dense share rotates
MAGIC = b"MPAG"
HEADER = struct.Struct(">4sBBHII")
MAX_META_BYTES = 1 << 20
SMALL_META_BYTES = 4096
"""Metadata cap of the requests a party may queue or hold (REPORT*, GET_SPEC, CLOSE_ROUND)."""
MAX_DEPTH = 8
"""Deepest nesting of JSON objects/arrays accepted in metadata (ours never exceeds 5)."""
MAX_INT_DIGITS = 40
DEFAULT_MAX_PAYLOAD = 1 << 31
MAX_PAYLOADS = 64
UPLOAD_WINDOW = 2
"""REPORT_CHUNKs a client may have unacknowledged at the report's dense party (which queues at most that many)."""
INLINE_MAX = 256 << 10
"""Largest dense share (bytes) that travels whole in its REPORT over CURVE, in one round trip; larger ones go
in sealed chunks (REPORT_BEGIN, REPORT_CHUNK)."""


class MsgType(enum.IntEnum):
    """Message types; a new type needs a new number, never a reused one."""

    ERROR = 1
    OK = 2
    GET_SPEC = 3
    SPEC = 4
    OPEN_ROUND = 5
    REPORT = 6
    CLOSE_ROUND = 7
    SUM_SHARE = 8
    STATUS = 9
    PEER = 10
    DEALER_REQUEST = 11
    DEALER_REPLY = 12
    REPORT_BEGIN = 13
    REPORT_CHUNK = 14


_SMALL_META = {MsgType.GET_SPEC, MsgType.REPORT, MsgType.REPORT_BEGIN, MsgType.REPORT_CHUNK, MsgType.CLOSE_ROUND}


def meta_limit(mtype: MsgType) -> int:
    """Largest metadata frame accepted for ``mtype`` (small for what a party may hold per client)."""
    return SMALL_META_BYTES if mtype in _SMALL_META else MAX_META_BYTES


def _max_depth(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, outside strings; linear time, vectorised, no recursion."""
    t = np.frombuffer(raw, dtype=np.uint8)
    if t.size == 0:
        return 0
    pos = np.arange(t.size)
    # a quote is escaped when an odd run of backslashes precedes it
    last_other = np.maximum.accumulate(np.where(t != 0x5C, pos, -1))
    run = np.empty(t.size, dtype=np.int64)
    run[0] = 0
    run[1:] = pos[:-1] - last_other[:-1]
    quote = (t == 0x22) & (run % 2 == 0)
    outside = np.cumsum(quote) % 2 == 0  # brackets are never quotes, so "after an even number" is outside
    step = (((t == 0x5B) | (t == 0x7B)).astype(np.int64) - ((t == 0x5D) | (t == 0x7D))) * outside
    return int(max(0, np.cumsum(step).max()))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise WireError("metadata has a duplicate key")
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise WireError(f"metadata has an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise WireError("metadata has a number out of float range")
    return v


def _no_constant(name: str) -> Any:
    raise WireError(f"metadata has the non-JSON constant {name}")


def loads_bounded(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; every failure is a WireError (depth checked before parsing)."""
    # no deeper than its number of opening brackets: most metadata needs no scan
    if raw.count(b"[") + raw.count(b"{") > max_depth and _max_depth(raw) > max_depth:
        raise WireError(f"JSON nested deeper than {max_depth}")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_int=_bounded_int,
                          parse_float=_finite_float, parse_constant=_no_constant)
    except WireError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise WireError(f"metadata is not UTF-8 JSON: {type(exc).__name__}") from None


@dataclass(frozen=True)
class Message:
    """A decoded message: its type, JSON metadata and raw payload frames."""

    type: MsgType
    meta: dict[str, Any] = field(default_factory=dict)
    payloads: tuple[bytes | memoryview, ...] = ()


def encode_message(
    mtype: MsgType, meta: dict[str, Any] | None = None, payloads: Sequence[Any] = ()
) -> list[Any]:
    """Build the frames of one message (payloads are passed through uncopied)."""
    meta_bytes = json.dumps(meta or {}, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(meta_bytes) > MAX_META_BYTES:
        raise WireError(f"metadata of {len(meta_bytes)} bytes exceeds {MAX_META_BYTES}")
    if len(payloads) > MAX_PAYLOADS:
        raise WireError(f"{len(payloads)} payload frames exceed {MAX_PAYLOADS}")
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, int(mtype), 0, len(meta_bytes), len(payloads))
    return [header, meta_bytes, *payloads]


def decode_message(frames: Sequence[Any], *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """Parse and validate frames; raises WireError on any deviation."""
    if len(frames) < 2:
        raise WireError(f"a message has at least 2 frames, got {len(frames)}")
    header = memoryview(frames[0]).tobytes()
    if len(header) != HEADER.size:
        raise WireError(f"header must be {HEADER.size} bytes, got {len(header)}")
    magic, version, mtype, flags, meta_len, n_payloads = HEADER.unpack(header)
    if magic != MAGIC:
        raise WireError("bad magic")
    if version != PROTOCOL_VERSION:
        raise WireError(f"unsupported protocol version {version} (this build speaks {PROTOCOL_VERSION})")
    try:
        mt = MsgType(mtype)
    except ValueError:
        raise WireError(f"unknown message type {mtype}") from None
    if flags != 0:
        raise WireError(f"unknown flags {flags:#x}")
    if meta_len > meta_limit(mt):
        raise WireError(f"metadata of {mt.name} over {meta_limit(mt)} bytes")
    if n_payloads != len(frames) - 2:
        raise WireError(f"header announces {n_payloads} payloads, message has {len(frames) - 2}")
    meta_view = memoryview(frames[1])
    if meta_view.nbytes != meta_len:
        raise WireError(f"metadata is {meta_view.nbytes} bytes, header says {meta_len}")
    raw = meta_view.tobytes()
    if raw != raw.strip():
        raise WireError("metadata has leading or trailing bytes")
    meta = loads_bounded(raw)
    if not isinstance(meta, dict):
        raise WireError("metadata must be a JSON object")
    payloads = []
    for f in frames[2:]:
        view = memoryview(f)
        if view.nbytes > max_payload:
            raise WireError(f"payload of {view.nbytes} bytes exceeds {max_payload}")
        payloads.append(view)
    return Message(mt, meta, tuple(payloads))


def require(meta: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    """Fetch a typed metadata field or raise WireError."""
    if key not in meta:
        raise WireError(f"metadata field {key!r} missing")
    value = meta[key]
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise WireError(f"metadata field {key!r} has type bool")
    if not isinstance(value, typ):
        raise WireError(f"metadata field {key!r} has type {type(value).__name__}")
    return value

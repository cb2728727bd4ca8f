"""Property-based tests (Hypothesis) of the metadata decoder and every request schema: any input is either
a valid message or a WireError, never another exception; limits hold exactly at their edges."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc_agg.errors import WireError
from mpc_agg.errors import AuthError
from mpc_agg.messages import BULK, CLIENT, COORDINATOR, MAX_ID_CHARS, REQUESTS, validate_request
from mpc_agg.wire import (HEADER, MAGIC, MAX_DEPTH, MAX_INT_DIGITS, PROTOCOL_VERSION, SMALL_META_BYTES, Message,
                          MsgType, decode_message, encode_message, loads_bounded, meta_limit)

pytestmark = pytest.mark.timeout(120)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**50), 10**50) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


def _int_too_long(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return len(str(abs(v))) > MAX_INT_DIGITS
    if isinstance(v, dict):
        return any(_int_too_long(x) for x in v.values())
    if isinstance(v, list):
        return any(_int_too_long(x) for x in v)
    return False


@FAST
@given(json_values)
def test_bounded_loads_agrees_with_json_within_the_limits(value: Any) -> None:
    raw = json.dumps(value).encode()
    if _depth(value) > MAX_DEPTH or _int_too_long(value):
        with pytest.raises(WireError):
            loads_bounded(raw)
    else:
        assert loads_bounded(raw) == json.loads(raw)


@FAST
@given(st.binary(max_size=300))
def test_bounded_loads_never_raises_anything_but_wire_error(raw: bytes) -> None:
    try:
        loads_bounded(raw)
    except WireError:
        pass


@FAST
@given(st.integers(1, 200_000), st.sampled_from(["[", "{\"a\":"]), st.booleans())
def test_deep_nesting_is_refused_before_parsing(depth: int, opener: str, in_string: bool) -> None:
    closer = "]" if opener == "[" else "}"
    body = opener * depth + "1" + closer * depth
    raw = (json.dumps({"s": body}) if in_string else body).encode()
    if in_string or depth <= MAX_DEPTH:  # brackets inside a string do not nest
        loads_bounded(raw)
    else:
        with pytest.raises(WireError, match="nested deeper"):
            loads_bounded(raw)


@pytest.mark.parametrize("raw,why", [
    (b'{"a":1,"a":2}', "duplicate key"),
    (b'{"a":NaN}', "constant"),
    (b'{"a":-Infinity}', "constant"),
    (b'{"a":1e400}', "float range"),
    (b'{"a":' + b"9" * (MAX_INT_DIGITS + 1) + b"}", "digits"),
    (b"9" * 5000, "digits"),  # Python's own int parser would raise ValueError here
    (b'"\\ud800"', None),  # a lone surrogate is still valid JSON text
])
def test_adversarial_json(raw: bytes, why: str | None) -> None:
    if why is None:
        loads_bounded(raw)
    else:
        with pytest.raises(WireError, match=why):
            loads_bounded(raw)


def test_queued_requests_have_a_small_metadata_cap() -> None:
    pad = "x" * (SMALL_META_BYTES - 20)
    frames = encode_message(MsgType.REPORT_BEGIN, {"p": pad})
    assert len(frames[1]) <= SMALL_META_BYTES
    decode_message(frames)
    frames = encode_message(MsgType.REPORT_BEGIN, {"p": pad + "y" * 40})
    with pytest.raises(WireError, match="over 4096"):
        decode_message(frames)
    assert meta_limit(MsgType.OPEN_ROUND) > SMALL_META_BYTES


# --- schemas --------------------------------------------------------------------------------------------

def _who(mtype: MsgType) -> str:
    senders = REQUESTS[mtype].senders
    for role, identity in ((CLIENT, "client:client-0"), (COORDINATOR, "coordinator"), (BULK, BULK)):
        if role in senders:
            return identity
    return "party:1"


def _valid(mtype: MsgType) -> Message:
    base: dict[str, Any] = {"rid": "ab" * 8, "round": 7, "client": "client-0", "report_id": "0f" * 16,
                            "spec_digest": "a" * 64, "deadline": 1.7e9, "offset": 0, "session": "s1",
                            "spec": {"version": 1}, "seq": 3, "fn": "square", "params": {"__dict__": {}}}
    schema = REQUESTS[mtype]
    meta = {k: base[k] for k in schema.fields}
    return Message(mtype, meta, tuple(b"x" for _ in range(schema.payloads)))


@pytest.mark.parametrize("mtype", sorted(REQUESTS))
def test_every_schema_accepts_its_valid_message(mtype: MsgType) -> None:
    validate_request(_who(mtype), _valid(mtype))


@FAST
@given(st.sampled_from(sorted(REQUESTS)), st.data())
def test_any_field_replaced_by_any_value_is_valid_or_a_wire_error(mtype: MsgType, data: st.DataObject) -> None:
    msg = _valid(mtype)
    key = data.draw(st.sampled_from(sorted(msg.meta)))
    value = data.draw(json_values)
    bad = Message(mtype, {**msg.meta, key: value}, msg.payloads)
    try:
        validate_request(_who(mtype), bad)
    except WireError as exc:
        assert repr(value)[:40] not in str(exc) or len(repr(value)) < 4  # values are never echoed


@FAST
@given(st.sampled_from(sorted(REQUESTS)), st.integers(0, 5))
def test_payload_counts_are_exact(mtype: MsgType, n: int) -> None:
    msg = _valid(mtype)
    bad = Message(mtype, msg.meta, tuple(b"x" for _ in range(n)))
    if n == REQUESTS[mtype].payloads:
        validate_request(_who(mtype), bad)
    else:
        with pytest.raises(WireError, match="payload"):
            validate_request(_who(mtype), bad)


@pytest.mark.parametrize("mtype", sorted(REQUESTS))
def test_missing_and_unknown_fields(mtype: MsgType) -> None:
    msg = _valid(mtype)
    for key, f in REQUESTS[mtype].fields.items():
        if f.required:
            with pytest.raises(WireError, match="lacks"):
                validate_request(_who(mtype), Message(mtype, {k: v for k, v in msg.meta.items() if k != key},
                                                      msg.payloads))
    extra = Message(mtype, {**msg.meta, "cohort": ["00" * 16]}, msg.payloads)
    if REQUESTS[mtype].extra_allowed:  # CLOSE_ROUND: the party refuses with a RefusedError of its own
        validate_request(_who(mtype), extra)
    else:
        with pytest.raises(WireError, match="unknown"):
            validate_request(_who(mtype), extra)


@pytest.mark.parametrize("mtype", sorted(REQUESTS))
def test_roles_are_checked_before_fields(mtype: MsgType) -> None:
    for who in ("client:client-0", "coordinator", "party:1", BULK, "unknown"):
        if who.split(":")[0] in REQUESTS[mtype].senders:
            validate_request(who, _valid(mtype))
        else:
            with pytest.raises(AuthError):
                validate_request(who, Message(mtype, {"junk": [1]}))


def test_ids_are_bounded_and_report_ids_exact() -> None:
    msg = _valid(MsgType.REPORT)
    for rid in ("0F" * 16, "0f" * 15, "0f" * 17, "g" * 32, "0f" * 500_000):
        with pytest.raises(WireError, match="32 lowercase hex") as info:
            validate_request("client:c", Message(msg.type, {**msg.meta, "report_id": rid}, msg.payloads))
        assert len(str(info.value)) < 100
    validate_request("client:c", Message(msg.type, {**msg.meta, "client": "c" * MAX_ID_CHARS}, msg.payloads))
    with pytest.raises(WireError, match="characters"):
        validate_request("client:c", Message(msg.type, {**msg.meta, "client": "c" * (MAX_ID_CHARS + 1)},
                                             msg.payloads))


@FAST
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_random_frames_decode_or_raise_wire_error(frames: list[bytes], mtype: int, n: int) -> None:
    body = frames[0] if frames else b""
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, 0, len(body), min(n, len(frames)))
    try:
        msg = decode_message([header, body, *frames[1:]])
    except WireError:
        return
    try:
        validate_request(_who(msg.type) if msg.type in REQUESTS else "client:c", msg)
    except WireError:
        pass


def test_a_million_byte_id_is_refused_before_parsing() -> None:
    body = json.dumps({"round": 1, "client": "client-0", "report_id": os.urandom(500_000).hex()}).encode()
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, int(MsgType.REPORT_BEGIN), 0, len(body), 0)
    with pytest.raises(WireError, match="over 4096") as info:
        decode_message([header, body])
    assert len(str(info.value)) < 100

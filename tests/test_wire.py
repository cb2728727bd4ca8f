import struct

import pytest

from mpc_agg.errors import WireError
from mpc_agg.spec import RoundSpec
from mpc_agg.wire import HEADER, MAGIC, PROTOCOL_VERSION, MsgType, decode_message, encode_message


def test_known_answer_frames() -> None:
    frames = encode_message(MsgType.REPORT, {"b": 1, "a": "x"}, [b"\x01\x02"])
    # magic "MPAG" | version 3 | type 6 (REPORT) | flags 0 | meta_len 15 | 1 payload
    assert frames[0] == bytes.fromhex("4d504147" "03" "06" "0000" "0000000f" "00000001")
    assert frames[1] == b'{"a":"x","b":1}'  # canonical JSON: sorted keys, no spaces
    assert frames[2] == b"\x01\x02"


def test_round_trip() -> None:
    msg = decode_message(encode_message(MsgType.SUM_SHARE, {"round": 3}, [b"abc", b""]))
    assert msg.type is MsgType.SUM_SHARE
    assert msg.meta == {"round": 3}
    assert [bytes(p) for p in msg.payloads] == [b"abc", b""]


def _frames(**over: object) -> list[bytes]:
    fields = {"magic": MAGIC, "version": PROTOCOL_VERSION, "type": 2, "flags": 0, "meta_len": 2, "n": 0}
    fields.update(over)
    header = HEADER.pack(fields["magic"], fields["version"], fields["type"], fields["flags"],
                         fields["meta_len"], fields["n"])
    return [header, b"{}"]


@pytest.mark.parametrize(
    "frames,why",
    [
        ([b"x"], "too few frames"),
        (_frames(magic=b"HTTP"), "magic"),
        (_frames(version=1), "version"),  # version 1: chunks over CURVE, before mpc_agg.bulk
        (_frames(version=2), "version"),  # version 2: the dense share always at the leader
        (_frames(version=4), "version"),
        (_frames(version=0), "version"),
        (_frames(type=200), "unknown type"),
        (_frames(flags=1), "flags"),
        (_frames(meta_len=3), "meta length"),
        (_frames(n=1), "payload count"),
        ([_frames()[0] + b"\x00", b"{}"], "trailing header bytes"),
        ([_frames()[0][:-1], b"{}"], "truncated header"),
        ([_frames(meta_len=4)[0], b"{}  "[:4]], "trailing metadata bytes"),
        ([_frames(meta_len=2)[0], b"[]"], "metadata not an object"),
        ([_frames(meta_len=2)[0], b"\xff\xfe"], "metadata not UTF-8"),
        ([_frames(meta_len=2)[0], b"{"[:1] + b"x"], "metadata not JSON"),
    ],
)
def test_malformed_frames_raise_wire_error(frames: list[bytes], why: str) -> None:
    with pytest.raises(WireError):
        decode_message(frames)


def test_trailing_metadata_after_json_object() -> None:
    meta = b'{} {}'
    with pytest.raises(WireError):
        decode_message([HEADER.pack(MAGIC, PROTOCOL_VERSION, 2, 0, len(meta), 0), meta])


def test_oversize_payload() -> None:
    frames = encode_message(MsgType.OK, {}, [b"x" * 100])
    decode_message(frames, max_payload=100)
    with pytest.raises(WireError):
        decode_message(frames, max_payload=99)


def test_header_layout_is_16_bytes_big_endian() -> None:
    assert HEADER.size == 16
    assert struct.unpack(">I", encode_message(MsgType.OK, {"k": 1})[0][8:12])[0] == len(b'{"k":1}')


def test_spec_digest_is_canonical_and_round_trips() -> None:
    a = RoundSpec.create(1, {"w": (3,), "b": [2, 2]}, min_clients=3)
    b = RoundSpec.create(1, {"b": (2, 2), "w": (3,)}, min_clients=3)
    assert a == b and a.digest() == b.digest() and a.dim == 7
    assert RoundSpec.from_json(a.to_json()) == a
    assert RoundSpec.create(1, {"w": (3,)}, min_clients=4).digest() != RoundSpec.create(1, {"w": (3,)}).digest()


@pytest.mark.parametrize("bad", [{"version": 9}, {"version": 1, "round_id": "x"}, "not a dict"])
def test_bad_spec_json(bad: object) -> None:
    with pytest.raises(WireError):
        RoundSpec.from_json(bad)


def test_peer_tensor_payloads_round_trip_and_bad_ones_are_wire_errors() -> None:
    import torch

    from mpc_agg.tensor_codec import payload_to_tensor, tensor_to_payload

    for t in (torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4), torch.tensor([True, False]), torch.tensor(2.5),
              torch.zeros((0, 3), dtype=torch.float32)):
        back = payload_to_tensor(*tensor_to_payload(t))
        assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)
    for meta, payload in (({"dtype": "int64", "shape": [3]}, bytes(16)),          # short
                          ({"dtype": "complex64", "shape": [1]}, bytes(8)),       # unknown dtype
                          ({"dtype": "int64", "shape": [-1]}, b""),               # negative dimension
                          ({"dtype": "int64", "shape": [2**32, 2**32]}, b"")):    # 2**64 elements: no wrap to 0
        with pytest.raises(WireError):
            payload_to_tensor(meta, payload)

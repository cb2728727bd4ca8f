"""Asking every party and collecting (mpc_agg.fanout), in-process over inproc sockets: answers in party order, the
first error raised only after every answer, and the link of a party that timed out made again."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
import zmq

from mpc_agg.errors import AggregationTimeout, RefusedError
from mpc_agg.fanout import PartyLinks
from mpc_agg.transport import Requester
from mpc_agg.wire import MsgType, decode_message, encode_message

pytestmark = pytest.mark.timeout(30)


class FakeParties:
    """k ROUTER sockets standing in for the parties; ``answer`` replies to whatever each has received."""

    def __init__(self, ctx: zmq.Context, k: int) -> None:
        self.ctx = ctx
        self.routers = []
        for i in range(k):
            s = ctx.socket(zmq.ROUTER)
            s.bind(f"inproc://party-{i}")
            self.routers.append(s)
        self.connects: list[int] = []

    def connect(self, i: int) -> Requester:
        self.connects.append(i)
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(f"inproc://party-{i}")
        return Requester(s, typed=False)  # the replies here are bare OKs: schemas are test_messages.py's

    def answer(self, i: int, reply: str) -> dict:
        """Receive party ``i``'s one request and answer it: ``ok`` (echoing the party index) or ``refuse``."""
        assert self.routers[i].poll(5000), f"party {i} got no request"
        routing, *frames = self.routers[i].recv_multipart()
        msg = decode_message(frames)
        rid = msg.meta["rid"]
        if reply == "ok":
            out = encode_message(MsgType.OK, {"rid": rid, "party": i})
        else:
            out = encode_message(MsgType.ERROR, {"rid": rid, "code": RefusedError.code, "message": f"no from {i}"})
        self.routers[i].send_multipart([routing, *out])
        return msg.meta


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_ask_all_sends_one_request_to_each_party_and_returns_answers_in_party_order(ctx: zmq.Context) -> None:
    fake = FakeParties(ctx, 3)
    links = PartyLinks(fake.connect, 3)
    deadline = time.monotonic() + 5
    pending = [links.send(i, MsgType.STATUS, {"q": 1}) for i in (2, 0, 1)]  # sent in any order
    metas = [fake.answer(i, "ok") for i in range(3)]
    answers = links.collect(pending, deadline)
    assert [a.meta["party"] for a in answers] == [2, 0, 1]  # the order of ``pending``
    assert all(m["q"] == 1 for m in metas) and len({m["rid"] for m in metas}) == 3
    assert links.bytes_sent > 0 and fake.connects == [0, 1, 2]


def test_first_error_is_raised_after_every_answer_and_a_silent_party_is_reconnected(ctx: zmq.Context) -> None:
    fake = FakeParties(ctx, 4)
    links = PartyLinks(fake.connect, 4)
    deadline = time.monotonic() + 0.5
    pending = [links.send(i, MsgType.STATUS, {}) for i in range(4)]
    fake.answer(0, "ok")
    fake.answer(1, "refuse")
    fake.answer(2, "refuse")  # party 3 never answers
    silent = links[3]
    sent_before = links.bytes_sent
    with pytest.raises(RefusedError, match="no from 1"):  # the first error, not party 2's or party 3's timeout
        links.collect(pending, deadline)
    assert time.monotonic() >= deadline  # it waited for party 3 before raising
    assert fake.connects == [0, 1, 2, 3, 3]  # only the silent party's link was made again
    assert links[3] is not silent and silent.sock.closed and not links[2].sock.closed
    assert links.bytes_sent == sent_before  # the dropped link's bytes still count
    # the fresh link works, and party 2's error answer was consumed, not left for the next request
    pending = [links.send(i, MsgType.STATUS, {}) for i in (3, 2)]
    fake.answer(3, "ok")  # the request given up on reaches party 3 late: its answer goes to the closed link
    fake.answer(3, "ok")
    fake.answer(2, "ok")
    assert [a.meta["party"] for a in links.collect(pending, time.monotonic() + 5)] == [3, 2]


def test_a_timeout_alone_is_raised_as_a_timeout(ctx: zmq.Context) -> None:
    fake = FakeParties(ctx, 2)
    links = PartyLinks(fake.connect, 2)
    with pytest.raises(AggregationTimeout, match="party 1"):
        pending = [links.send(i, MsgType.STATUS, {}) for i in range(2)]
        fake.answer(0, "ok")
        links.collect(pending, time.monotonic() + 0.2)
    assert fake.connects == [0, 1, 1]

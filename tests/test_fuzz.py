"""Hostile network input: thousands of malformed frames at a party → typed errors, process up, next round fine.

``MPC_AGG_FUZZ_FRAMES`` sets the count (default 3,000 in ``make test``; the full run uses 10,000)."""

from __future__ import annotations

import json
import os
import random
import socket
import time

import numpy as np
import psutil
import pytest
import zmq

from fl_client import SecureAggClient
from mpc_agg.bulk import TAG_BYTES
from mpc_agg.config import read_secret_key
from mpc_agg.transport import SecureContext
from mpc_agg.wire import HEADER, MAGIC, PROTOCOL_VERSION, MsgType, decode_message, encode_message
from parties import Coordinator
from parties.launcher import LocalDeployment
from rawupload import RawUpload

pytestmark = pytest.mark.timeout(300)
FRAMES = int(os.environ.get("MPC_AGG_FUZZ_FRAMES", "3000"))


def _malformed(rng: random.Random, digest: str, rid: str, active: str | None = None) -> list[bytes]:
    """One hostile message: a mutation of a valid REPORT/GET_SPEC/OPEN/CLOSE/REPORT_CHUNK, or noise;
    ``active``: the id of an upload in progress, whose chunks are forged too."""
    meta = {"round": 1, "client": "client-0", "report_id": os.urandom(16).hex(), "spec_digest": digest, "rid": rid}
    kind = rng.randrange(15 if active else 14)
    if kind == 14:  # a forged chunk of the upload in progress: the right size, not sealed under its key
        return encode_message(MsgType.REPORT_CHUNK, {"rid": rid, "report_id": active, "offset": 0},
                              [os.urandom(9 * 8 + TAG_BYTES)])
    if kind == 0:
        return [os.urandom(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 4))]
    if kind == 1:  # wrong version / magic / flags / type
        v, m, f, t = rng.choice([(PROTOCOL_VERSION + 1, MAGIC, 0, 6), (PROTOCOL_VERSION - 1, MAGIC, 0, 6),
                                 (PROTOCOL_VERSION, b"XXXX", 0, 6), (PROTOCOL_VERSION, MAGIC, 1, 6),
                                 (PROTOCOL_VERSION, MAGIC, 0, 99)])
        body = json.dumps(meta).encode()
        return [HEADER.pack(m, v, t, f, len(body), 0), body]
    if kind == 2:  # lengths that lie
        body = json.dumps(meta).encode()
        return [HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, 0, len(body) + rng.randrange(1, 10**9), 0), body]
    if kind == 3:  # announced payload count differs
        body = json.dumps(meta).encode()
        return [HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, 0, len(body), rng.randrange(2, 2**31)), body, b"x"]
    if kind == 4:  # truncated or extended header
        frames = encode_message(MsgType.REPORT, meta, [b"x"])
        return [frames[0][: rng.randrange(16)] + os.urandom(rng.choice([0, 3])), *frames[1:]]
    if kind == 5:  # metadata not JSON / not an object
        junk = rng.choice([os.urandom(20), b"[1,2]", b'"s"', b"{" * 50])
        return [HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, 0, len(junk), 0), junk]
    if kind == 6:  # fields of the wrong type
        bad = dict(meta, **{rng.choice([k for k in meta if k != "rid"]): rng.choice([None, [], {}, 1.5, True, -1])})
        bad["rid"] = rid
        return encode_message(MsgType.REPORT, bad, [os.urandom(32)])
    if kind == 7:  # payload of the wrong size
        return encode_message(MsgType.REPORT, meta, [os.urandom(rng.choice([0, 31, 33, 8000]))])
    if kind == 8:  # a client pretending to be the coordinator
        return encode_message(rng.choice([MsgType.OPEN_ROUND, MsgType.CLOSE_ROUND]), {"rid": rid, "round": 1,
                                                                                  "session": "x", "spec": {}})
    if kind == 9:  # a report claiming another client, or an unknown round
        return encode_message(MsgType.REPORT, dict(meta, client="client-1") if rng.random() < 0.5
                              else dict(meta, round=rng.randrange(2, 10**6)), [os.urandom(32)])
    if kind == 10:  # message types a party does not serve
        return encode_message(rng.choice([MsgType.PEER, MsgType.DEALER_REPLY, MsgType.SUM_SHARE, MsgType.OK]),
                              {"rid": rid}, [])
    if kind == 12:  # an upload start with a bad deadline, digest or claimed client
        bad = rng.choice([{"deadline": rng.choice([None, "soon", [], True])}, {"deadline": 1e12, "spec_digest": "x"},
                          {"deadline": 1e12, "client": "client-3"}])
        return encode_message(MsgType.REPORT_BEGIN, dict(meta, **bad), [])
    if kind == 13:  # chunks of an upload that was never admitted, at odd offsets and sizes
        return encode_message(MsgType.REPORT_CHUNK, {"rid": rid, "report_id": meta["report_id"],
                                                     "offset": rng.choice([0, 1, -8, 2**62, "0"])},
                              [os.urandom(rng.choice([0, 8, 72, 4096]))])
    return encode_message(MsgType.REPORT, dict(meta, spec_digest="0" * 64), [os.urandom(32)])


@pytest.mark.parametrize("party,bulk", [(0, False), (1, False), (0, True)], ids=["leader", "helper", "bulk"])
def test_party_survives_malformed_frames(tmp_path, party: int, bulk: bool) -> None:  # type: ignore[no-untyped-def]
    """At the CURVE endpoint as an authenticated client, or at the leader's bulk endpoint as anyone, while
    client-0's upload is in progress there: its chunk, sent after them, is still taken."""
    rng = random.Random(2026 + party + 7 * bulk)
    with LocalDeployment(tmp_path / "dep", parties=3, clients=4, min_clients=3, dealer=False) as ld:
        with Coordinator.from_config(ld.config) as coord:
            spec = coord.open_round(1, shapes={"w": (8,)}, min_clients=3)
            target = ld.deployment.party(party)
            pid = ld.procs[f"party-{party}"].pid
            rss0 = psutil.Process(pid).memory_info().rss
            c = ld.deployment.client("client-0")
            with SecureContext() as sctx:
                up = RawUpload(sctx, ld.deployment, 0, "client-0", spec)
                up.begin()
                sock = sctx.bulk_client(target.bulk_endpoint) if bulk else sctx.client(
                    zmq.DEALER, target.client_endpoint, public_key=c.public_key,
                    secret_key=read_secret_key(c.private_key_file, "c"), server_key=target.public_key)
                codes: dict[str, int] = {}
                sent = 0
                for batch in range(0, FRAMES, 500):  # bounded pipelining
                    n = min(500, FRAMES - batch)
                    for i in range(n):
                        sock.send_multipart(_malformed(rng, spec.digest(), f"{batch + i:016x}", up.report))
                    sent += n
                    for _ in range(n):
                        assert sock.poll(30_000), "the party stopped answering"
                        reply = decode_message(sock.recv_multipart())
                        assert reply.type == MsgType.ERROR, reply
                        codes[reply.meta["code"]] = codes.get(reply.meta["code"], 0) + 1
                if party == 0:  # client-0's own chunk, after all that: its report counts
                    assert up.chunk(0, np.zeros(9, dtype=np.int64)).meta["done"]
            assert sum(codes.values()) == sent == FRAMES
            assert codes.get("wire", 0) > FRAMES // 3 and "error" not in codes
            assert ("seal" in codes and "auth" not in codes) if bulk else "auth" in codes
            assert ld.alive()[f"party-{party}"]
            assert psutil.Process(pid).memory_info().rss - rss0 < 64 * 2**20  # memory bounded
            for i in range(3):  # and the round still works
                with SecureAggClient.from_config(ld.config, f"client-{i + 1}") as cl:
                    cl.submit(1, {"w": np.full(8, 0.5)})
            res = coord.close_round(1, timeout_s=60)
    assert np.allclose(res.average["w"].numpy(), 0.5)  # client-0's zeros were never at the helpers'
    assert res.clients == ("client-1", "client-2", "client-3")


def _zmtp_greeting(mechanism: bytes) -> bytes:
    """A ZMTP 3.0 greeting (RFC 23): signature, version, mechanism, as-server flag, filler."""
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection, waiting (bounded) for a process that is still starting to bind its port."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_raw_tcp_junk_at_every_endpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Bytes that are not even ZMTP, or ZMTP without the CURVE handshake, at every party's client, peer and
    bulk endpoints and at the dealer: the connection is dropped, every process stays up, the next round works."""
    rng = random.Random(7)
    with LocalDeployment(tmp_path / "dep", parties=3, clients=3, min_clients=3, dealer=True) as ld:
        dep = ld.deployment
        with Coordinator(dep) as coord:
            coord.status(timeout_s=60)  # every party serves
            pids = {name: p.pid for name, p in ld.procs.items()}
            rss0 = {name: psutil.Process(pid).memory_info().rss for name, pid in pids.items()}
            endpoints = [e for p in dep.parties for e in (p.client_endpoint, p.peer_endpoint, p.bulk_endpoint)]
            endpoints.append(str(dep.dealer_endpoint))
            junks = [os.urandom(64), _zmtp_greeting(b"NULL") + os.urandom(200), _zmtp_greeting(b"PLAIN"),
                     _zmtp_greeting(b"CURVE") + b"\x04\xff" + os.urandom(8) + os.urandom(1000),
                     bytes(rng.randrange(256) for _ in range(100_000))]
            for ep in endpoints:
                host, port = ep.removeprefix("tcp://").rsplit(":", 1)
                for junk in junks:
                    with _connect(host, int(port), timeout_s=60) as s:
                        try:
                            s.sendall(junk)
                            s.shutdown(socket.SHUT_WR)
                            for _ in range(1000):  # bounded: the server drops us
                                if not s.recv(65536):
                                    break
                        except OSError:
                            pass  # reset or closed while we were still sending: dropped, as it should be
            assert all(ld.alive().values())
            for name, pid in pids.items():
                assert psutil.Process(pid).memory_info().rss - rss0[name] < 64 * 2**20
            coord.open_round(1, shapes={"w": (8,)}, min_clients=3)
            for i in range(3):
                with SecureAggClient.from_config(ld.config, f"client-{i}") as cl:
                    cl.submit(1, {"w": np.full(8, 0.25)})
            res = coord.close_round(1, timeout_s=60)
    assert np.allclose(res.average["w"].numpy(), 0.25)

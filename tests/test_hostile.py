"""Attacks by a client holding a valid key (SECURITY.md, "Hostile clients"), against real party processes.

Each test ends with an honest round that closes with the exact average.  The deployment is started
under umask 000, so the permission checks also show that the parties do not depend on the umask."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
import pytest
import torch
import zmq

from fl_client import SecureAggClient
from fl_client.client import clip_to_norm, flatten_update
from mpc_agg.config import read_secret_key
from mpc_agg.errors import ConfigError, EncodingError, SealError, WireError
from mpc_agg.fixedpoint import encode
from mpc_agg.logs import parse
from mpc_agg.spec import RoundSpec
from mpc_agg.store import RoundStore
from mpc_agg.transport import SecureContext
from mpc_agg.wire import HEADER, MAGIC, PROTOCOL_VERSION, MsgType, decode_message, encode_message
from parties import Coordinator
from parties.launcher import LocalDeployment
from parties.party import Party
from rawupload import RawUpload

pytestmark = pytest.mark.timeout(240)
SHAPES = {"w": (20,)}


@pytest.fixture(scope="module")
def ld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    old = os.umask(0)
    try:
        dep = LocalDeployment(tmp_path_factory.mktemp("hostile"), parties=3, clients=10, min_clients=3).start()
    finally:
        os.umask(old)
    try:
        yield dep
    finally:
        codes = dep.stop()
        assert set(codes.values()) <= {0}, codes


def _socket(ld: LocalDeployment, sctx: SecureContext, party: int, client: str) -> zmq.Socket:
    c, p = ld.deployment.client(client), ld.deployment.party(party)
    return sctx.client(zmq.DEALER, p.client_endpoint, public_key=c.public_key,
                       secret_key=read_secret_key(c.private_key_file, "test"), server_key=p.public_key)


def _honest_round(ld: LocalDeployment, round_id: int, clients: range = range(3), dim: int = 20) -> None:
    with Coordinator.from_config(ld.config) as coord:
        coord.open_round(round_id, shapes={"w": (dim,)}, min_clients=3)
        for i in clients:
            with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                c.submit(round_id, {"w": np.full(dim, 0.25 * (i + 1))})
        res = coord.close_round(round_id, timeout_s=60)
    assert np.allclose(res.average["w"].numpy(), np.mean([0.25 * (i + 1) for i in clients]), atol=1e-6)
    assert all(ld.alive().values())


def _raw_frames(mtype: MsgType, body: bytes, payloads: list[bytes] = []) -> list[bytes]:
    return [HEADER.pack(MAGIC, PROTOCOL_VERSION, int(mtype), 0, len(body), len(payloads)), body, *payloads]


def _ask(sock: zmq.Socket, frames: list[bytes]) -> dict:
    sock.send_multipart(frames)
    assert sock.poll(20_000), "the party stopped answering"
    reply = decode_message(sock.recv_multipart())
    assert reply.type == MsgType.ERROR
    return reply.meta


def test_frames_that_used_to_kill_a_party_are_refused(ld: LocalDeployment, round_id: int) -> None:
    n = 100_000
    nested = b'{"a":' * n + b"1" + b"}" * n  # 600 KB, nested 100,000 deep
    with SecureContext() as sctx:
        for party in (0, 1):
            sock = _socket(ld, sctx, party, "client-5")
            for mtype in (MsgType.STATUS, MsgType.GET_SPEC):
                assert "nested deeper" in _ask(sock, _raw_frames(mtype, nested if mtype == MsgType.STATUS
                                                                 else b"[" * 2000 + b"]" * 2000))["message"]
            assert "digits" in _ask(sock, _raw_frames(MsgType.STATUS, b'{"rid":' + b"9" * 5000 + b"}"))["message"]
            assert "over 4096" in _ask(sock, _raw_frames(MsgType.REPORT_BEGIN, nested))["message"]
            assert "duplicate" in _ask(sock, _raw_frames(MsgType.STATUS, b'{"rid":"a","rid":"b"}'))["message"]
    _honest_round(ld, round_id)


def test_million_byte_ids_are_refused_and_not_logged(ld: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(ld.config) as coord:
        spec = coord.open_round(round_id, shapes=SHAPES, min_clients=3)
    huge = os.urandom(500_000).hex()
    with SecureContext() as sctx:
        for party in (0, 1):
            sock = _socket(ld, sctx, party, "client-5")
            meta = {"round": round_id, "client": "client-5", "spec_digest": spec.digest(), "deadline": 2e9}
            for mtype, extra in ((MsgType.REPORT_BEGIN, {"report_id": huge}), (MsgType.STATUS, {"rid": huge}),
                                 (MsgType.OPEN_ROUND, {"spec": {"x": huge}})):
                body = encode_message(mtype, {**meta, **extra} if mtype == MsgType.REPORT_BEGIN else extra)[1]
                reply = _ask(sock, _raw_frames(mtype, body))
                assert len(reply["message"]) < 200 and reply["code"] in ("wire", "auth")
    _honest_round(ld, round_id + 1000)
    for log in ld.log_dir.glob("party-*.log"):
        text = log.read_text()
        assert huge[1000:1100] not in text
        assert max(len(line) for line in text.splitlines()) < 8192


def test_state_is_private_whatever_the_umask(ld: LocalDeployment, round_id: int, tmp_path: Path) -> None:
    _honest_round(ld, round_id)
    for p in ld.deployment.parties:
        paths = [p.state_dir, *p.state_dir.rglob("*")]
        assert len(paths) > 2
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    open_dir = tmp_path / "state"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(ConfigError, match="chmod 700"):
        RoundStore(open_dir)


def test_bad_client_input_is_a_typed_error_and_huge_updates_clip(ld: LocalDeployment, round_id: int) -> None:
    spec = RoundSpec.create(round_id, SHAPES)
    for bad in (np.array(["a"] * 20), np.array([object()] * 20, dtype=object), np.ones(20, dtype=np.complex128),
                torch.ones(20, dtype=torch.complex64), np.ones(20, dtype=bool), [[1.0], [1.0, 2.0]]):
        with pytest.raises(EncodingError):
            flatten_update(spec, {"w": bad})
    big = np.full(20, 1e200)
    assert np.allclose(clip_to_norm(big, 1.0), np.full(20, 20**-0.5))
    assert np.allclose(clip_to_norm(np.full(4, 1.7e308), 2.0), np.full(4, 1.0))
    with Coordinator.from_config(ld.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=3, clip_norm=1.0)
        for i, value in enumerate((1e200, -1e200, 0.0)):
            with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                c.submit(round_id, {"w": np.full(20, value)})
        res = coord.close_round(round_id, timeout_s=60)
    assert np.allclose(res.average["w"].numpy(), 0.0, atol=1e-6)  # +x and -x clipped alike: they cancel
    assert res.clients == ("client-0", "client-1", "client-2")


def test_a_bad_weight_is_rejected_before_the_reveal(ld: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(ld.config) as coord:
        spec = coord.open_round(round_id, shapes=SHAPES, min_clients=3, max_weight=100.0)
        for i in range(3):
            with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                c.submit(round_id, {"w": np.full(20, float(i + 1))}, weight=2.0)
        for client, weight in (("client-3", -2.0), ("client-4", 0.0), ("client-5", 101.0)):
            ring = np.empty(21, dtype=np.int64)
            encode(np.full(20, 1e6), spec.frac_bits, out=ring[:-1])
            encode([weight], spec.frac_bits, out=ring[-1:])
            with SecureAggClient.from_config(ld.config, client) as c:
                c.upload_encoded(spec, ring)
        res = coord.close_round(round_id, timeout_s=60)
    assert res.rejected == ("client-3", "client-4", "client-5")
    assert res.clients == ("client-0", "client-1", "client-2") and res.total_weight == 6.0
    assert np.allclose(res.average["w"].numpy(), 2.0)


def test_flood_of_payload_carrying_begins_keeps_the_leader_small(ld: LocalDeployment, round_id: int) -> None:
    """40 REPORT_BEGINs carrying 8 MiB each: past the CURVE endpoint's message cap, so libzmq drops the
    connection unread; 40 carrying 512 KiB (under the cap) are refused by the schema.  The leader stays small."""
    with Coordinator.from_config(ld.config) as coord:
        spec = coord.open_round(round_id, shapes=SHAPES, min_clients=3)
    proc = psutil.Process(ld.procs["party-0"].pid)
    rss0 = proc.memory_info().rss
    for size, answered in ((8 << 20, False), (512 << 10, True)):
        blob = os.urandom(size)
        with SecureContext() as sctx:
            socks = [_socket(ld, sctx, 0, f"client-{6 + j}") for j in range(4)]
            for k in range(40):
                meta = {"round": round_id, "client": f"client-{6 + k % 4}", "report_id": os.urandom(16).hex(),
                        "spec_digest": spec.digest(), "deadline": time.time() + 3600}
                socks[k % 4].send_multipart(encode_message(MsgType.REPORT_BEGIN, meta, [blob]))
            for k in range(40 if answered else 4):
                assert socks[k % 4].poll(30_000 if answered else 2_000) == answered
                if answered:
                    assert "payload" in decode_message(socks[k % 4].recv_multipart()).meta["message"]
    time.sleep(1.0)
    grown = proc.memory_info().rss - rss0
    assert grown < 48 << 20, f"leader RSS grew by {grown >> 20} MiB after 340 MiB of refused payloads"
    _honest_round(ld, round_id + 1000)


def _aborted(ld: LocalDeployment, client: str) -> list[dict[str, str]]:
    lines = (ld.log_dir / "party-0.log").read_text().splitlines()
    return [parse(x) for x in lines if "event=upload_aborted" in x and f"client={client}" in x]


def test_stalling_and_dripping_clients_cannot_starve_honest_ones(ld: LocalDeployment, round_id: int) -> None:
    """Two keys hold uploads without sending, one drips a chunk every 4 s (never idle): three honest
    clients still submit within their default timeout, and the round closes with exactly their average."""
    dim = 2 * Party.chunk_values + 1000  # a share of 3 chunks, 16.8 MB
    stop = threading.Event()
    with Coordinator.from_config(ld.config) as coord:
        spec = coord.open_round(round_id, shapes={"w": (dim,)}, min_clients=3)
        with SecureContext() as sctx:
            ups = {c: RawUpload(sctx, ld.deployment, 0, c, spec) for c in ("client-7", "client-8", "client-9")}
            for up in ups.values():
                assert up.begin(deadline_s=3600).meta["chunk"]

            def drip() -> None:
                junk = np.full(Party.chunk_values, 1 << 40, dtype=np.int64)
                for k in range(2):  # two of the three chunks, 4 s apart, then silence
                    if stop.wait(4.0):
                        return
                    ups["client-9"].chunk(k * Party.chunk_values, junk)
            dripper = threading.Thread(target=drip, daemon=True)
            dripper.start()
            t0 = time.monotonic()
            for i in range(3):  # the honest ones, with the default 30 s timeout
                with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                    c.submit(round_id, {"w": np.full(dim, float(i))})
            honest_s = time.monotonic() - t0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (_aborted(ld, "client-7") and _aborted(ld, "client-8")):
                time.sleep(0.2)
            stop.set()
            dripper.join(15)
            res = coord.close_round(round_id, timeout_s=60)
    assert honest_s < 30
    assert all("no chunk" in a["reason"] for c in ("client-7", "client-8") for a in _aborted(ld, c))
    assert res.clients == ("client-0", "client-1", "client-2")
    assert np.allclose(res.average["w"].numpy(), 1.0)  # nothing of the dripped chunks in the sum


def test_sealed_chunks_reordered_replayed_or_altered_are_refused(ld: LocalDeployment, round_id: int) -> None:
    """At the leader's bulk endpoint (mpc_agg.bulk): a chunk sealed for another offset, replayed into another
    client's upload, altered, or sent again is refused; the round closes with the honest reports exactly."""
    dim = 2 * Party.chunk_values - 1  # with the weight: two chunks of the same size
    with Coordinator.from_config(ld.config) as coord:
        spec = coord.open_round(round_id, shapes={"w": (dim,)}, min_clients=3)
        with SecureContext() as sctx:
            a, b = (RawUpload(sctx, ld.deployment, 0, c, spec) for c in ("client-5", "client-6"))
            a.begin(), b.begin()
            junk = np.full(Party.chunk_values, 1 << 40, dtype=np.int64)
            first, second = a.sealed(0, junk), a.sealed(Party.chunk_values, junk)
            altered = bytearray(first)
            altered[100] ^= 1
            for payload, report in ((second, a.report), (first, b.report), (bytes(altered), a.report)):
                with pytest.raises(SealError):  # reordered; replayed into b's upload; altered
                    a.send(0, payload, report_id=report)
            ack = a.send(0, first)  # the chunk itself is still taken: refusals change nothing
            assert ack.meta["next"] == Party.chunk_values and not ack.meta["done"]
            with pytest.raises(WireError):  # and only once
                a.send(0, first)
            for i in range(3):
                with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                    c.submit(round_id, {"w": np.full(dim, 0.5 * i)})
            res = coord.close_round(round_id, timeout_s=60)
    assert res.clients == ("client-0", "client-1", "client-2")
    assert np.allclose(res.average["w"].numpy(), 0.5)  # nothing of client-5's first chunk in the sum
    assert [x["reason"] for x in _aborted(ld, "client-5") + _aborted(ld, "client-6")][-2:] == \
        [f"round {round_id} is closing"] * 2

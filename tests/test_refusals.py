"""Each protocol rule is enforced by the parties with a typed error, and the next round still works."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq
from scipy import stats

from fl_client import SecureAggClient
from mpc_agg.config import read_secret_key
from mpc_agg.errors import (
    AggregationTimeout,
    AlreadyRevealedError,
    AuthError,
    CohortTooSmallError,
    DuplicateReportError,
    RefusedError,
    RoundStateError,
    SealError,
    SpecMismatchError,
    WireError,
)
from mpc_agg.spec import RoundSpec
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import MsgType
from parties import Coordinator
from parties.launcher import LocalDeployment
from rawupload import RawUpload, report_id_for

pytestmark = pytest.mark.timeout(180)
SHAPES = {"w": (20,)}


def _submit(ld: LocalDeployment, rid: int, clients: range | list[int], value: float = 1.0) -> None:
    for i in clients:
        with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
            c.submit(rid, {"w": np.full(20, value)})


def _healthy(ld: LocalDeployment, rid: int) -> None:
    """The parties still serve a normal round after a refusal."""
    with Coordinator.from_config(ld.config) as coord:
        coord.open_round(rid, shapes=SHAPES, min_clients=3)
        _submit(ld, rid, range(3), value=0.25)
        res = coord.close_round(rid, timeout_s=30)
    assert np.allclose(res.average["w"].numpy(), 0.25)


def _raw(ld: LocalDeployment, party: int, role_key: str, secret_file) -> Requester:  # type: ignore[no-untyped-def]
    sctx = SecureContext()
    p = ld.deployment.party(party)
    sock = sctx.client(zmq.DEALER, p.client_endpoint, public_key=role_key,
                       secret_key=read_secret_key(secret_file, "test"), server_key=p.public_key)
    req = Requester(sock)
    req.sctx = sctx  # type: ignore[attr-defined]
    return req


def test_second_report_and_replayed_report_id_refused(dep3: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=3)
        _submit(dep3, round_id, [0])
        with pytest.raises(DuplicateReportError):
            _submit(dep3, round_id, [0])
        # replay: client-1 resends a report id that client-1 already used, in a fresh message
        c = dep3.deployment.client("client-1")
        spec = RoundSpec.create(round_id, SHAPES, min_clients=3, parties=3)
        req = _raw(dep3, 1, c.public_key, c.private_key_file)
        try:
            rid = bytes.fromhex(report_id_for(spec, 3, 0))  # dense at party 0: party 1 takes a seed
            meta = {"round": round_id, "client": "client-1", "report_id": rid.hex(), "spec_digest": spec.digest()}
            req.request(MsgType.REPORT, meta, [os.urandom(32)], timeout_s=10, what="party 1")
            with pytest.raises(DuplicateReportError):
                req.request(MsgType.REPORT, meta, [os.urandom(32)], timeout_s=10, what="party 1")
        finally:
            req.sctx.close()  # type: ignore[attr-defined]
        _submit(dep3, round_id, [2, 3])
        res = coord.close_round(round_id, timeout_s=30)
    # client-1 reached only party 1: every party leaves it out (consistent cohort)
    assert res.clients == ("client-0", "client-2", "client-3")
    assert np.allclose(res.average["w"].numpy(), 1.0)
    _healthy(dep3, round_id + 1000)


def test_floor_cannot_be_lowered_by_the_coordinator(dep3: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=1)  # parties' own floor is 3
        _submit(dep3, round_id, [0, 1])
        with pytest.raises(CohortTooSmallError):
            coord.close_round(round_id, timeout_s=30)
        _submit(dep3, round_id, [2])  # round stays open: more clients can still join
        res = coord.close_round(round_id, timeout_s=30)
        assert len(res.clients) == 3
        with pytest.raises(AlreadyRevealedError):
            coord.close_round(round_id, timeout_s=30)
        with pytest.raises(RoundStateError):
            _submit(dep3, round_id, [3])  # closed round takes no more reports
        with pytest.raises(AlreadyRevealedError):  # with any spec: round ids are never reused
            coord.open_round(round_id, shapes={"w": (21,)}, min_clients=3)
    _healthy(dep3, round_id + 1000)


def test_different_specs_at_different_parties_are_refused(dep3: LocalDeployment, round_id: int) -> None:
    coord_key = dep3.deployment.coordinator_public_key
    coord_secret = dep3.deployment.coordinator_private_key_file
    specs = [RoundSpec.create(round_id, SHAPES, min_clients=3 + (p == 2), parties=3) for p in range(3)]
    reqs = [_raw(dep3, p, coord_key, coord_secret) for p in range(3)]
    try:
        for p, r in enumerate(reqs):
            r.request(MsgType.OPEN_ROUND, {"spec": specs[p].to_json()}, timeout_s=20, what=f"party {p}")
        with pytest.raises(SpecMismatchError):
            _submit(dep3, round_id, [0])  # the client compares the parties' specs first
        with Coordinator.from_config(dep3.config) as coord:
            coord.specs[round_id] = specs[0]
            with pytest.raises(SpecMismatchError):
                coord.close_round(round_id, timeout_s=30)
    finally:
        for r in reqs:
            r.sctx.close()  # type: ignore[attr-defined]
    _healthy(dep3, round_id + 1000)


def test_report_for_another_round_never_mixes(dep3: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=3)
        coord.open_round(round_id + 500, shapes=SHAPES, min_clients=3)
        other = RoundSpec.create(round_id + 500, SHAPES, min_clients=3, parties=3)
        with SecureContext() as sctx:
            up = RawUpload(sctx, dep3.deployment, 0, "client-4", other)
            with pytest.raises(SpecMismatchError):  # a digest of another round's spec
                up.begin(round=round_id)
            up.spec = RoundSpec.create(round_id, SHAPES, min_clients=3, parties=3)
            assert up.begin().meta["chunk"] > 21
            with pytest.raises(WireError):  # wrong payload length for this round
                up.send(0, up.sealed(0, np.zeros(5, dtype=np.int64)))
            with pytest.raises(SealError):  # the right length, sealed for another offset
                up.send(0, up.sealed(8, np.zeros(21, dtype=np.int64)))
        _submit(dep3, round_id, range(3), value=2.0)
        _submit(dep3, round_id + 500, range(3), value=-1.0)
        a = coord.close_round(round_id, timeout_s=30)
        b = coord.close_round(round_id + 500, timeout_s=30)
    assert np.allclose(a.average["w"].numpy(), 2.0) and np.allclose(b.average["w"].numpy(), -1.0)


def test_roles_are_enforced_by_key(dep3: LocalDeployment, round_id: int) -> None:
    c = dep3.deployment.client("client-0")
    req = _raw(dep3, 0, c.public_key, c.private_key_file)
    try:
        spec = RoundSpec.create(round_id, SHAPES, min_clients=3)
        with pytest.raises(AuthError):
            req.request(MsgType.OPEN_ROUND, {"spec": spec.to_json()}, timeout_s=10, what="party 0")
        with pytest.raises(AuthError):
            req.request(MsgType.CLOSE_ROUND, {"round": round_id, "session": "x"}, timeout_s=10, what="party 0")
    finally:
        req.sctx.close()  # type: ignore[attr-defined]


def test_connection_without_valid_keys_gets_nothing(dep3: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=3)
    pub, sec = zmq.curve_keypair()  # a key that is not in the deployment
    p = dep3.deployment.party(0)
    for server_key in (p.public_key, dep3.deployment.party(1).public_key):
        with SecureContext() as sctx:
            sock = sctx.client(zmq.DEALER, p.client_endpoint, public_key=pub.decode(), secret_key=sec.decode(),
                               server_key=server_key)
            with pytest.raises(AggregationTimeout):
                Requester(sock).request(MsgType.GET_SPEC, {"round": round_id}, timeout_s=2, what="party 0")
    # plaintext (no CURVE) connection: the handshake fails, nothing comes back
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(p.client_endpoint)
        s.send_multipart([b"MPAG", b"{}"])
        assert s.poll(1500) == 0
        s.close()
    finally:
        ctx.term()


def test_stored_share_is_indistinguishable_from_uniform(dep3: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes={"w": (40_000,)}, min_clients=3)
        with SecureAggClient.from_config(dep3.config, "client-5") as c:
            report = c.submit(round_id, {"w": np.zeros(40_000)})  # worst case: a constant delta
    from mpc_agg.store import RoundStore

    dense = []
    for party in range(3):
        store = RoundStore(dep3.deployment.party(party).state_dir)
        [rnd] = [r for r in store.load() if r.spec.round_id == round_id]
        [rep] = [r for r in rnd.reports if r.report == report]
        stored = store.read_material(rnd.dir, rep)
        if rep.kind == "dense":
            dense.append(party)
            assert len(stored) == 8 * 40_001
            counts = np.bincount(np.frombuffer(stored, dtype=np.uint8), minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
            assert np.frombuffer(stored, dtype=np.int64)[:-1].any()
        else:
            assert rep.kind == "seed" and len(stored) == 32  # the others hold only a seed
    assert len(dense) == 1  # one party holds the dense share


def test_bad_frames_get_a_typed_error_and_the_party_stays_up(dep3: LocalDeployment, round_id: int) -> None:
    c = dep3.deployment.client("client-0")
    req = _raw(dep3, 2, c.public_key, c.private_key_file)
    try:
        for frames in ([b"garbage"], [b"MPAG" + b"\x00" * 12, b"{}"], [b"\x00" * 16, b"{}", b"x"]):
            req.sock.send_multipart(frames)
            assert req.sock.poll(5000)
            msg = req.sock.recv_multipart()
            assert b'"code":"wire"' in msg[1]
    finally:
        req.sctx.close()  # type: ignore[attr-defined]
    assert all(dep3.alive().values())
    _healthy(dep3, round_id)


def test_replayed_close_after_its_deadline_is_ignored(dep3: LocalDeployment, round_id: int) -> None:
    """A close message that reaches a party late (a replay, or delivered after a network cut) reveals nothing."""
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=3)
        _submit(dep3, round_id, range(3), value=0.5)
        req = _raw(dep3, 0, dep3.deployment.coordinator_public_key, dep3.deployment.coordinator_private_key_file)
        try:
            with pytest.raises(RoundStateError, match="after its deadline"):
                req.request(MsgType.CLOSE_ROUND, {"round": round_id, "session": "old", "deadline": time.time() - 1},
                            timeout_s=10, what="party 0")
        finally:
            req.sctx.close()  # type: ignore[attr-defined]
        res = coord.close_round(round_id, timeout_s=30)  # the round is untouched and closes normally
    assert np.allclose(res.average["w"].numpy(), 0.5)


def test_coordinator_cannot_pick_a_subset_of_the_cohort(dep3: LocalDeployment, round_id: int) -> None:
    """A close naming reports or clients is refused by every party; the parties alone decide who counts."""
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes=SHAPES, min_clients=3)
        _submit(dep3, round_id, range(4), value=1.5)
        reqs = [_raw(dep3, p, dep3.deployment.coordinator_public_key, dep3.deployment.coordinator_private_key_file)
                for p in range(3)]
        try:
            for p, req in enumerate(reqs):
                for pick in ({"cohort": ["00" * 16]}, {"clients": ["client-0"]}):
                    with pytest.raises(RefusedError, match="parties choose the cohort"):
                        meta = {"round": round_id, "session": "s", "deadline": time.time() + 30, **pick}
                        req.request(MsgType.CLOSE_ROUND, meta, timeout_s=10, what=f"party {p}")
        finally:
            for req in reqs:
                req.sctx.close()  # type: ignore[attr-defined]
        res = coord.close_round(round_id, timeout_s=30)
    assert res.clients == ("client-0", "client-1", "client-2", "client-3")

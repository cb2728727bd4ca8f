"""Dense shares spread over the parties (docs/PROTOCOL.md, "Where the dense share goes"): each report's dense
party follows from its id, every party holds both kinds of record, and the averages stay exact; a report sent
to the wrong party is refused before anything is stored; verified rounds keep every dense share at the leader."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.errors import WireError
from mpc_agg.sharing import dense_party
from mpc_agg.spec import RoundSpec
from mpc_agg.store import RoundStore
from mpc_agg.transport import SecureContext
from mpc_agg.wire import MsgType
from parties import Coordinator
from parties.inprocess import Answer, InProcess
from parties.launcher import LocalDeployment
from rawupload import RawUpload, report_id_for

pytestmark = pytest.mark.timeout(180)

DIM = 37


def _ok(answer: Answer | None) -> bool:
    return isinstance(answer, tuple) and answer[0] in (MsgType.OK, MsgType.SUM_SHARE)


def _kinds(ip: InProcess, round_id: int) -> list[dict[str, str | None]]:
    """Per party: report id -> the kind of record it holds."""
    return [{h: rep.kind for h, rep in p.table.rounds[round_id].stored.items()} for p in ip.parties]


@pytest.mark.parametrize("k,bits", [(2, 64), (3, 64), (3, 32)])
def test_reports_spread_over_every_party_and_the_average_is_exact(tmp_path: Path, k: int, bits: int) -> None:
    spec = RoundSpec.create(1, {"w": (DIM,)}, min_clients=2, parties=k, clip_norm=2.0, max_weight=3.0,
                            max_cohort=20, frac_bits=16, ring_bits=bits)
    assert spec.ring_bits == bits
    ip = InProcess(tmp_path, k)
    assert all(_ok(a) for a in ip.open(spec))
    rng = np.random.default_rng(k)
    ups = [rng.normal(0, 0.1, DIM) for _ in range(3 * k)]  # norm about 0.6, within clip_norm
    weights = [1.0 + j % 3 for j in range(len(ups))]
    for j, (u, w) in enumerate(zip(ups, weights)):  # ids chosen so that every party is dense for three reports
        rid = bytes.fromhex(report_id_for(spec, k, j % k))
        assert all(_ok(a) for a in ip.submit(f"c{j}", spec, u, w, report_id=rid))
    kinds = _kinds(ip, 1)
    for i in range(k):  # each party: three dense shares, a seed of every other report
        assert sorted(kinds[i].values()) == ["dense"] * 3 + ["seed"] * (len(ups) - 3)
    for h in kinds[0]:  # exactly one dense party per report, the one the rule names
        assert [i for i in range(k) if kinds[i][h] == "dense"] == [dense_party(spec, bytes.fromhex(h), k)]
    want = np.average(np.stack(ups), axis=0, weights=weights)
    np.testing.assert_allclose(InProcess.average(spec, ip.close(1)), want, atol=len(ups) * 2.0 ** -spec.frac_bits)


def test_a_report_sent_to_the_wrong_party_is_refused_before_it_is_stored(tmp_path: Path) -> None:
    ip, spec = InProcess(tmp_path, 3), RoundSpec.create(1, {"w": (DIM,)}, min_clients=2, parties=3)
    ip.open(spec)
    rid = report_id_for(spec, 3, 2)
    meta = {"round": 1, "client": "c9", "report_id": rid, "spec_digest": spec.digest()}
    logs = [p.store.material_path(p.table.rounds[1].dir).stat().st_size for p in ip.parties]
    wrong = [ip.request(0, "client:c9", MsgType.REPORT_BEGIN, {**meta, "deadline": time.time() + 30}),
             ip.request(1, "client:c9", MsgType.REPORT_BEGIN, {**meta, "deadline": time.time() + 30}),
             ip.request(2, "client:c9", MsgType.REPORT, meta, [os.urandom(32)])]
    assert all(isinstance(a, WireError) for a in wrong), wrong
    assert "party 2" in str(wrong[0]) and "party 2" in str(wrong[1])  # names the dense party
    assert [p.store.material_path(p.table.rounds[1].dir).stat().st_size for p in ip.parties] == logs
    assert all(not p.table.rounds[1].reports and not p.uploads.active for p in ip.parties)
    ups = [np.full(DIM, float(j)) for j in range(3)]
    assert all(_ok(a) for a in ip.submit("c9", spec, ups[0], report_id=bytes.fromhex(rid)))  # the id is not burnt
    for j in (1, 2):
        ip.submit(f"c{j}", spec, ups[j])
    np.testing.assert_allclose(InProcess.average(spec, ip.close(1)), np.full(DIM, 1.0), atol=1e-6)


def test_verified_rounds_keep_every_dense_share_at_the_leader(tmp_path: Path) -> None:
    """The verified close reads dense shares at party 0 (parties/cohort.py): for any report id, only party 0
    takes REPORT_BEGIN and every other party a seed.  (In-process parties have no dealer, so the round is put
    in their tables directly; tests/test_normcheck.py runs verified rounds through real processes.)"""
    spec = RoundSpec.create(1, {"w": (DIM,)}, min_clients=2, parties=3, clip_norm=1.0, verify_norm=True)
    ip = InProcess(tmp_path, 3)
    for p in ip.parties:
        p.table.open(spec)
    plain = RoundSpec.create(1, {"w": (DIM,)}, parties=3)
    for j, d in enumerate((1, 2)):  # ids the rotation would give to parties 1 and 2
        rid = bytes.fromhex(report_id_for(plain, 3, d))
        meta = {"round": 1, "client": f"c{j}", "report_id": rid.hex(), "spec_digest": spec.digest()}
        begin = {**meta, "deadline": time.time() + 30}
        assert isinstance(ip.request(d, f"client:c{j}", MsgType.REPORT_BEGIN, begin), WireError)
        assert isinstance(ip.request(0, f"client:c{j}", MsgType.REPORT, meta, [os.urandom(32)]), WireError)
        assert all(_ok(a) for a in ip.submit(f"c{j}", spec, np.full(DIM, 0.01), report_id=rid))
    assert [sorted(set(kinds.values())) for kinds in _kinds(ip, 1)] == [["dense"], ["seed"], ["seed"]]


@pytest.mark.parametrize("k,n", [(2, 16), (3, 12)])
def test_real_processes_spread_the_dense_shares_and_check_weights(tmp_path: Path, k: int, n: int) -> None:
    """Real party processes with a dealer (so the close checks every weight in MPC, each party reading its
    weight share from whichever kind of record it holds): dense uploads go to every party, the weighted
    average is exact, and a REPORT_BEGIN at the wrong party is refused."""
    with LocalDeployment(tmp_path / "dep", parties=k, clients=n + 1, min_clients=3) as ld:
        with Coordinator.from_config(ld.config) as coord:
            spec = coord.open_round(1, shapes={"w": (DIM,)}, min_clients=3, max_weight=8.0)
            with SecureContext() as sctx:  # client-n asks a party that is not its report's dense party
                up = RawUpload(sctx, ld.deployment, 1, f"client-{n}", spec, report_id=report_id_for(spec, k, 0))
                with pytest.raises(WireError, match="goes to party 0"):
                    up.begin()
            rng = np.random.default_rng(n)
            ups, weights = [rng.normal(0, 1, DIM) for _ in range(n)], [1.0 + i % 4 for i in range(n)]
            for i, (u, w) in enumerate(zip(ups, weights)):
                with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                    c.submit(1, {"w": u}, weight=w)
            stores = [RoundStore(ld.deployment.party(i).state_dir) for i in range(k)]
            held = [{r.report: r.kind for rnd in s.load() if rnd.spec.round_id == 1 for r in rnd.reports}
                    for s in stores]  # read before the close deletes the logs
            res = coord.close_round(1, timeout_s=60)
    dense = {h: [i for i in range(k) if held[i][h] == "dense"] for h in held[0]}
    assert len(dense) == n and all(len(v) == 1 for v in dense.values())  # one dense party per report
    assert len({v[0] for v in dense.values()}) >= 2  # spread: all n at one party has odds k**(1-n) < 1e-4
    assert sorted(res.clients) == sorted(f"client-{i}" for i in range(n)) and not res.rejected
    want = np.average(np.stack(ups), axis=0, weights=weights)
    assert np.max(np.abs(res.average["w"].numpy() - want)) <= n * 2.0 ** -spec.frac_bits

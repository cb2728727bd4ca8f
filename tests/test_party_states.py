"""The party's round state machine in one process (parties/inprocess.py): every message type in every
state, refusals, crash and recovery; milliseconds per test, no sockets (docs/PROTOCOL.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpc_agg.bulk import TAG_BYTES, UploadSeal
from mpc_agg.errors import MpcAggError
from mpc_agg.sharing import SEED_BYTES, dense_party
from mpc_agg.spec import RoundSpec
from mpc_agg.wire import INLINE_MAX, MsgType
from parties.inprocess import Answer, InProcess
from parties.rounds import Phase
from parties.uploads import UploadLimits

DIM = 21  # with 8-value chunks: three chunks per dense upload, the last one short
HEX = "aa" * 16  # a report id whose dense party is party 1 of 3 (mpc_agg.sharing.dense_party); the leader takes a seed
DENSE, SEED = 1, 0


def outcome(answer: Answer | None) -> str:
    """A reply's type name, an error's code, or 'later' for a deferred reply."""
    if answer is None:
        return "later"
    if isinstance(answer, MpcAggError):
        return answer.code
    return answer[0].name


def spec_for(round_id: int = 1, min_clients: int = 2) -> RoundSpec:
    return RoundSpec.create(round_id, {"w": (DIM,)}, min_clients=min_clients, parties=3)


def updates(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=DIM) for _ in range(n)]


def sealed(go: Answer | None, spec: RoundSpec, report_hex: str, start: int, values: np.ndarray) -> list[bytes]:
    """``values`` (int64) as the chunk at ``start`` of the upload that ``go`` (REPORT_BEGIN's OK) admitted."""
    assert isinstance(go, tuple) and go[0] == MsgType.OK, go
    seal = UploadSeal(bytes.fromhex(go[1]["key"]), spec.round_id, bytes.fromhex(report_hex))
    return [seal.seal_chunk(start, values.size, values.data)]


def in_state(root: Path, phase: Phase) -> tuple[InProcess, RoundSpec]:
    """Three parties holding round 1 in ``phase`` (open/revealed rounds hold two reports)."""
    ip, spec = InProcess(root), spec_for()
    if phase is not Phase.ABSENT:
        ip.open(spec)
        for j, u in enumerate(updates(2)):
            ip.submit(f"c{j}", spec, u)
    if phase is Phase.REVEALED:
        assert {outcome(a) for a in ip.close(1)} == {"SUM_SHARE"}
    return ip, spec


def request_for(mtype: MsgType, spec: RoundSpec) -> tuple[str, dict[str, Any], list[bytes]]:
    """A well-formed request of each type a party serves, from the role that may send it."""
    report = {"round": 1, "client": "new", "report_id": HEX, "spec_digest": spec.digest()}
    return {
        MsgType.STATUS: ("client:new", {}, []),
        MsgType.GET_SPEC: ("client:new", {"round": 1}, []),
        MsgType.OPEN_ROUND: ("coordinator", {"spec": spec.to_json()}, []),
        MsgType.REPORT: ("client:new", report, [bytes(32)]),
        MsgType.REPORT_BEGIN: ("client:new", {**report, "deadline": time.time() + 30}, []),
        MsgType.REPORT_CHUNK: ("bulk", {"report_id": HEX, "offset": 0}, [bytes(64 + TAG_BYTES)]),
    }.get(mtype, ("coordinator", {"round": 1}, []))


# (type, party role) -> outcome in each state (absent, open, revealed).  "dense": report HEX's dense party
# (party 1), "seed": a party that takes a seed of it (party 0, the leader); CLOSE_ROUND is run at every party.
# A report sent as the wrong kind is refused in an open round (in the others the round's state speaks first:
# which party is dense follows from the round's spec).
EXPECTED: dict[tuple[MsgType, str], tuple[str, str, str]] = {
    (MsgType.STATUS, "dense"): ("STATUS", "STATUS", "STATUS"),
    (MsgType.STATUS, "seed"): ("STATUS", "STATUS", "STATUS"),
    (MsgType.GET_SPEC, "dense"): ("round_state", "SPEC", "SPEC"),
    (MsgType.GET_SPEC, "seed"): ("round_state", "SPEC", "SPEC"),
    (MsgType.OPEN_ROUND, "dense"): ("OK", "OK", "already_revealed"),
    (MsgType.OPEN_ROUND, "seed"): ("OK", "OK", "already_revealed"),
    (MsgType.REPORT, "dense"): ("round_state", "wire", "round_state"),
    (MsgType.REPORT, "seed"): ("round_state", "later", "round_state"),
    (MsgType.REPORT_BEGIN, "dense"): ("round_state", "OK", "round_state"),
    (MsgType.REPORT_BEGIN, "seed"): ("round_state", "wire", "round_state"),
    (MsgType.REPORT_CHUNK, "dense"): ("round_state", "round_state", "round_state"),
    (MsgType.REPORT_CHUNK, "seed"): ("round_state", "round_state", "round_state"),
    (MsgType.CLOSE_ROUND, "all"): ("round_state", "SUM_SHARE", "already_revealed"),
    **{(t, role): ("wire", "wire", "wire") for t in (MsgType.ERROR, MsgType.OK, MsgType.SPEC, MsgType.SUM_SHARE,
                                                      MsgType.PEER, MsgType.DEALER_REQUEST, MsgType.DEALER_REPLY)
       for role in ("dense", "seed")},
}


def test_the_table_covers_every_message_type() -> None:
    assert {t for t, _ in EXPECTED} == set(MsgType)
    assert (dense_party(spec_for(), bytes.fromhex(HEX), 3), SEED) == (DENSE, 0)


@pytest.mark.parametrize("phase", [Phase.ABSENT, Phase.OPEN, Phase.REVEALED], ids=lambda p: p.value)
def test_every_message_type_in_every_state(tmp_path: Path, phase: Phase) -> None:
    col = [Phase.ABSENT, Phase.OPEN, Phase.REVEALED].index(phase)
    shared = in_state(tmp_path / "shared", phase)  # for requests that are refused or only read
    for (mtype, role), want in EXPECTED.items():
        fresh = role == "all" or want[col] in ("OK", "later", "SUM_SHARE")
        ip, spec = in_state(tmp_path / f"{mtype.name}-{role}", phase) if fresh else shared
        if role == "all":
            got = {outcome(a) for a in ip.close(1)}
            assert got == {want[col]}, (mtype.name, phase, got)
            continue
        identity, meta, payloads = request_for(mtype, spec)
        party = DENSE if role == "dense" else SEED
        got = outcome(ip.request(party, identity, mtype, meta, payloads))
        assert got == want[col], (mtype.name, role, phase, got)
        moved = Phase.OPEN if mtype == MsgType.OPEN_ROUND and phase is Phase.ABSENT else phase
        assert ip.parties[party].table.phase(1) is moved  # only OPEN_ROUND and CLOSE_ROUND move the state


@pytest.mark.parametrize("inline_max", [INLINE_MAX, 0], ids=["dense-in-report", "dense-in-chunks"])
def test_a_round_reveals_the_weighted_average(tmp_path: Path, inline_max: int) -> None:
    ip, spec = InProcess(tmp_path, inline_max=inline_max), spec_for()
    assert {outcome(a) for a in ip.open(spec)} == {"OK"}
    ups, weights = updates(4), [1.0, 2.0, 0.5, 3.0]
    for j, (u, w) in enumerate(zip(ups, weights)):
        assert [outcome(a) for a in ip.submit(f"c{j}", spec, u, w)] == ["OK"] * 3
    answers = ip.close(1)
    want = sum(w * u for u, w in zip(ups, weights)) / sum(weights)
    np.testing.assert_allclose(InProcess.average(spec, answers), want, atol=1e-6)
    assert all(sorted(a[1]["clients"]) == ["c0", "c1", "c2", "c3"] for a in answers)


def test_reports_missing_at_a_party_are_left_out_exactly(tmp_path: Path) -> None:
    ip, spec = InProcess(tmp_path), spec_for()
    ip.open(spec)
    ups = updates(3)
    for j, u in enumerate(ups):
        ip.submit(f"c{j}", spec, u)
    ip.submit("partial", spec, np.full(DIM, 1e6), parties=[0, 2])  # party 1 never gets it
    answers = ip.close(1)
    np.testing.assert_allclose(InProcess.average(spec, answers), sum(ups) / 3, atol=1e-6)
    assert "partial" not in answers[0][1]["clients"]


def test_below_the_floor_nothing_is_revealed_and_the_round_stays_open(tmp_path: Path) -> None:
    ip, spec = InProcess(tmp_path), spec_for(min_clients=2)
    ip.open(spec)
    ip.submit("c0", spec, updates(1)[0])
    assert {outcome(a) for a in ip.close(1)} == {"cohort_too_small"}
    assert ip.parties[1].table.phase(1) is Phase.OPEN
    ip.submit("c1", spec, updates(1, seed=1)[0])
    assert {outcome(a) for a in ip.close(1)} == {"SUM_SHARE"}


def test_refused_requests_change_nothing(tmp_path: Path) -> None:
    ip, spec = in_state(tmp_path, Phase.OPEN)
    _, report, seed = request_for(MsgType.REPORT, spec)
    refusals = {
        "auth": [ip.request(0, "client:x", MsgType.OPEN_ROUND, {"spec": spec.to_json()}),
                 ip.request(1, "client:x", MsgType.CLOSE_ROUND, {"round": 1, "session": "s", "deadline": 1e12}),
                 ip.request(0, "coordinator", MsgType.REPORT_BEGIN, {**report, "deadline": 1.0})],
        "unknown_client": [ip.request(SEED, "client:other", MsgType.REPORT, report, seed)],
        "spec_mismatch": [ip.request(SEED, "client:new", MsgType.REPORT, {**report, "spec_digest": "0" * 64}, seed)],
        "duplicate_report": [ip.request(SEED, "client:c0", MsgType.REPORT, {**report, "client": "c0"}, seed)],
        "refused": [ip.request(1, "coordinator", MsgType.CLOSE_ROUND,
                               {"round": 1, "session": "s", "deadline": 1e12, "cohort": []})],
        "wire": [ip.request(SEED, "client:new", MsgType.REPORT, report, [bytes(31)]),
                 ip.request(DENSE, "client:new", MsgType.REPORT, report, seed),  # a seed to the dense party
                 ip.request(SEED, "client:new", MsgType.REPORT_BEGIN, {**report, "deadline": time.time() + 30})],
    }
    for code, answers in refusals.items():
        assert [outcome(a) for a in answers] == [code] * len(answers), code
    late = ip.request(1, "coordinator", MsgType.CLOSE_ROUND, {"round": 1, "session": "s", "deadline": 1.0})
    assert outcome(late) == "round_state" and "deadline" in str(late)
    assert [len(p.table.rounds[1].reports) for p in ip.parties] == [2, 2, 2]


def test_queued_upload_is_answered_when_a_slot_frees(tmp_path: Path) -> None:
    ip, spec = InProcess(tmp_path, upload_limits=UploadLimits(slots=1)), spec_for()
    ip.open(spec)
    _, report, _ = request_for(MsgType.REPORT_BEGIN, spec)
    first = {**report, "client": "c0", "report_id": "ab" * 16}  # both dense at party 0
    second = {**report, "client": "c1", "report_id": "33" * 16}
    go = ip.request(0, "client:c0", MsgType.REPORT_BEGIN, first)
    assert outcome(ip.request(0, "client:c1", MsgType.REPORT_BEGIN, second)) == "later"
    for start in range(0, DIM + 1, 8):
        ip.request(0, "bulk", MsgType.REPORT_CHUNK, {"report_id": first["report_id"], "offset": start},
                   sealed(go, spec, first["report_id"], start, np.zeros(min(8, DIM + 1 - start), "<i8")))
    later = ip.settle(0)  # c0's acknowledgement after the fsync, and c1's slot
    assert sorted(outcome(a) for a in later) == ["OK", "OK"]
    assert any(a[1].get("chunk") == 8 for a in later if isinstance(a, tuple))


def test_a_crash_loses_nothing_acknowledged_and_no_partial_upload(tmp_path: Path) -> None:
    """Every party holds dense shares and seeds (the three reports' dense parties are 0, 1 and 2); after
    a crash each reloads both kinds, by the kind its log records, and the round closes exactly."""
    ip, spec = InProcess(tmp_path), spec_for()
    ip.open(spec)
    ups = updates(3)
    for j, (u, rid) in enumerate(zip(ups, ("ab", "44", "bb"))):
        ip.submit(f"c{j}", spec, u, report_id=bytes.fromhex(rid * 16))
    _, report, _ = request_for(MsgType.REPORT_BEGIN, spec)
    go = ip.request(DENSE, "client:new", MsgType.REPORT_BEGIN, report)
    first = ip.request(DENSE, "bulk", MsgType.REPORT_CHUNK, {"report_id": HEX, "offset": 0},
                       sealed(go, spec, HEX, 0, np.ones(8, "<i8")))
    assert outcome(first) == "OK" and first[1]["next"] == 8
    for i in range(3):  # every party crashes and restarts from its state directory
        ip.restart(i)
    assert [p.table.summary()["1"]["reports"] for p in ip.parties] == [3, 3, 3]
    kinds = [sorted(r.kind for r in p.table.rounds[1].stored.values()) for p in ip.parties]
    assert kinds == [["dense", "seed", "seed"]] * 3
    answers = ip.close(1)
    np.testing.assert_allclose(InProcess.average(spec, answers), sum(ups) / 3, atol=1e-6)
    ip.restart(2)  # and after the reveal: the round stays revealed, its id is never reused
    assert ip.parties[2].table.phase(1) is Phase.REVEALED
    assert outcome(ip.open(spec)[2]) == "already_revealed"


def test_sealed_chunks_reordered_replayed_or_altered_are_refused(tmp_path: Path) -> None:
    """mpc_agg.bulk: a chunk opens only at its own offset of its own upload, unaltered; a refused chunk
    leaves the upload as it was, and the round closes with the honest reports exactly."""
    ip, spec = InProcess(tmp_path), spec_for()
    ip.open(spec)
    ups = updates(2)
    _, report, _ = request_for(MsgType.REPORT_BEGIN, spec)
    a, b = {**report, "client": "a", "report_id": "ab" * 16}, {**report, "client": "b", "report_id": "33" * 16}
    go_a = ip.request(0, "client:a", MsgType.REPORT_BEGIN, a)
    assert outcome(ip.request(0, "client:b", MsgType.REPORT_BEGIN, b)) == "OK"  # b's upload, into which a's chunk is replayed
    first, second = np.full(8, 1 << 40, dtype="<i8"), np.full(8, 1 << 41, dtype="<i8")
    a0, a8 = sealed(go_a, spec, a["report_id"], 0, first), sealed(go_a, spec, a["report_id"], 8, second)

    def chunk(report_id: str, offset: int, payload: list[bytes]) -> Answer | None:
        return ip.request(0, "bulk", MsgType.REPORT_CHUNK, {"report_id": report_id, "offset": offset}, payload)
    altered = bytearray(a0[0])
    altered[3] ^= 1
    assert outcome(chunk(a["report_id"], 0, [bytes(altered)])) == "seal"
    assert outcome(chunk(a["report_id"], 0, a8)) == "seal"  # the second chunk sent first (reordered)
    assert outcome(chunk(b["report_id"], 0, a0)) == "seal"  # a's chunk replayed into b's upload
    assert outcome(chunk(a["report_id"], 8, a8)) == "wire"  # not the offset the party expects next
    assert outcome(ip.request(0, "client:a", MsgType.REPORT_CHUNK, {"report_id": a["report_id"], "offset": 0},
                              a0)) == "wire"  # chunks are served on the bulk endpoint only
    assert outcome(ip.request(0, "bulk", MsgType.REPORT_BEGIN, {**a, "deadline": time.time() + 30})) == "wire"
    assert ip.parties[0].uploads.get(a["report_id"]).received == 0  # nothing of it was taken
    ok = chunk(a["report_id"], 0, a0)
    assert outcome(ok) == "OK" and ok[1]["next"] == 8
    UploadSeal(bytes.fromhex(go_a[1]["key"]), 1, bytes.fromhex(a["report_id"])).check_ack(8, False, ok[1]["tag"])
    assert outcome(chunk(a["report_id"], 0, a0)) == "wire"  # replayed at its own offset, once taken
    for j, u in enumerate(ups):
        ip.submit(f"c{j}", spec, u)
    answers = ip.close(1)  # a's and b's unfinished uploads are cut off and taken back out of the sum
    np.testing.assert_allclose(InProcess.average(spec, answers), sum(ups) / 2, atol=1e-6)
    assert sorted(answers[0][1]["clients"]) == ["c0", "c1"]


def test_a_dense_share_rides_in_its_report_only_when_small(tmp_path: Path) -> None:
    """At its dense party a REPORT may carry the whole dense share of at most INLINE_MAX bytes, of the
    round's exact size; a larger one must come in chunks.  Refusals store nothing; the rounds close exactly."""
    for dim, inline in ((DIM, True), (INLINE_MAX // 8, False)):  # 64-bit rounds: 8 (d + 1) bytes
        ip = InProcess(tmp_path / str(dim), chunk_values=1 << 16)
        spec = RoundSpec.create(1, {"w": (dim,)}, min_clients=2, parties=3)
        ip.open(spec)
        report = {"round": 1, "client": "x", "report_id": HEX, "spec_digest": spec.digest()}
        dense = dense_party(spec, bytes.fromhex(HEX), 3)
        size = 8 * (dim + 1)
        for payload in ([bytes(size)] if not inline else []) + [bytes(size - 8), bytes(SEED_BYTES)]:
            assert outcome(ip.request(dense, "client:x", MsgType.REPORT, report, [payload])) == "wire"
        assert ip.parties[dense].table.rounds[1].reports == {}
        ups = [np.full(dim, 0.25), np.full(dim, 0.75)]
        for j, u in enumerate(ups):
            ip.submit(f"c{j}", spec, u)
        np.testing.assert_allclose(InProcess.average(spec, ip.close(1)), np.full(dim, 0.5), atol=1e-6)


def test_a_report_in_upload_cannot_also_arrive_whole_nor_overfill_the_round(tmp_path: Path) -> None:
    """While a client's upload is queued or in progress at its dense party, a REPORT of the same client or
    report id is refused there; an upload that completes after the round filled up is refused and taken back
    out of the sum, so no party holds more than its cap (and no report counts twice)."""
    ip, spec = InProcess(tmp_path, inline_max=0), RoundSpec.create(1, {"w": (DIM,)}, min_clients=2, parties=3,
                                                                    max_cohort=2)
    ip.open(spec)
    report = {"round": 1, "client": "x", "report_id": HEX, "spec_digest": spec.digest()}
    go = ip.request(DENSE, "client:x", MsgType.REPORT_BEGIN, {**report, "deadline": time.time() + 30})
    whole = [bytes(8 * (DIM + 1))]
    for who, rid in (("x", "ab" * 16), ("y", HEX)):  # same client, another id; another client, the same id
        got = ip.request(DENSE, f"client:{who}", MsgType.REPORT, {**report, "client": who, "report_id": rid}, whole)
        assert outcome(got) == "duplicate_report", (who, got)
    ups = updates(2)
    for j, u in enumerate(ups):  # the round fills up while x uploads
        ip.submit(f"c{j}", spec, u)
    for start in range(0, DIM + 1, 8):
        last = ip.request(DENSE, "bulk", MsgType.REPORT_CHUNK, {"report_id": HEX, "offset": start},
                          sealed(go, spec, HEX, start, np.full(min(8, DIM + 1 - start), 1 << 40, "<i8")))
    assert outcome(last) == "round_state" and "full" in str(last)
    assert len(ip.parties[DENSE].table.rounds[1].reports) == 2
    np.testing.assert_allclose(InProcess.average(spec, ip.close(1)), sum(ups) / 2, atol=1e-6)

"""32-bit rounds (mpc_agg.ring): the ring is chosen from the round's bounds, stated in the spec,
refused where it does not fit, and gives the same averages as 64 bits within the fixed-point bound."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from fl_client import SecureAggClient
from fl_client.client import clip_to_norm
from mpc_agg import ring
from mpc_agg.bulk import UploadSeal
from mpc_agg.config import read_secret_key
from mpc_agg.errors import ConfigError, RangeError, RingSizeError, WireError
from mpc_agg.fixedpoint import decode_average, encode
from mpc_agg.sharing import (ShareContext, accumulate_seed, dense_party, leader_chunk32, leader_share, new_seeds,
                             seed_parties)
from mpc_agg.spec import RoundSpec
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import MAX_PAYLOADS, MsgType
from parties.coordinator import Coordinator
from parties.inprocess import InProcess
from parties.launcher import LocalDeployment

WEIGHTS = (0.5, 1.0, 1.5, 2.0)  # exact in fixed point: the weight adds no decoding error


def _updates(n: int, d: int, clip: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([clip_to_norm(rng.normal(0, 1, d) * rng.uniform(0.01, 3), clip) for _ in range(n)])


def _simulate(spec: RoundSpec, updates: np.ndarray, weights: list[float], *, parties: int = 3,
              chunk: int = 64) -> tuple[np.ndarray, float]:
    """The whole data path in one process: encode, share (seeds, and the dense share in chunks in the
    round's wire layout, at a dense party that rotates over the reports), each party's running sum, its
    sum-share frames, the coordinator's decode."""
    bits, d = spec.ring_bits, spec.dim
    totals = [np.zeros(d + 1, dtype=np.int64) for _ in range(parties)]
    for i, (x, w) in enumerate(zip(updates, weights)):
        vec = np.empty(d + 1, dtype=np.int64)
        encode(x, spec.frac_bits, scale=w, out=vec[:-1], bound=spec.report_bound())
        encode([w], spec.frac_bits, out=vec[-1:])
        ctx = ShareContext(spec.round_id, f"client-{i}", os.urandom(16))
        seeds, dense = new_seeds(parties), i % parties
        for start in range(0, d + 1, chunk):
            part = vec[start:start + chunk]
            payload = (leader_chunk32(part, seeds, ctx, start=start, dim=d, dense=dense) if bits == 32 else
                       leader_share(part.copy(), seeds, ctx, start=start, dense=dense))
            assert memoryview(payload).nbytes == ring.chunk_nbytes(bits, d, start, part.size)
            view = totals[dense][start:start + part.size]
            view += ring.widen_chunk(payload, bits, d, start, part.size)
        for j, seed in zip(seed_parties(parties, dense), seeds):
            accumulate_seed(totals[j], seed, ctx, j, bits=bits)
    revealed = np.zeros(d + 1, dtype=np.int64)
    for j, t in enumerate(totals):
        frames = ring.sum_share_frames(t, bits, step=50)
        assert sum(f.nbytes for f in frames) == ring.report_nbytes(bits, d)
        ring.add_sum_share(revealed, frames, bits, f"party {j}")
    return decode_average(revealed, spec.frac_bits, ring_bits=bits)


@pytest.mark.parametrize("bits", [32, 64])
def test_in_process_round_matches_numpy(bits: int) -> None:
    n, d, clip = 7, 301, 1.5
    spec = RoundSpec.create(1, {"w": (d,)}, clip_norm=clip, max_weight=2.0, max_cohort=20, ring_bits=bits,
                            frac_bits=20)
    assert spec.ring_bits == bits
    updates = _updates(n, d, clip)
    weights = [WEIGHTS[i % 4] for i in range(n)]
    avg, weight = _simulate(spec, updates, weights)
    expected = np.average(updates, axis=0, weights=weights)
    assert weight == sum(weights)
    bound = n * 2.0 ** -(spec.frac_bits + 1) / weight  # each encoded value is off by at most half a step
    err = float(np.max(np.abs(avg - expected)))
    assert err <= bound, (err, bound)
    assert err > 0  # the fixed-point rounding is there: the comparison is not vacuous


def test_32_bit_sums_of_extreme_reports_do_not_wrap() -> None:
    """Every report at +C (or -C) on one coordinate, the largest cohort the spec allows: exact."""
    d, cohort = 5, 16
    spec = RoundSpec.create(1, {"w": (d,)}, clip_norm=1.0, max_weight=1.0, max_cohort=cohort, ring_bits=32,
                            frac_bits=24)
    top = np.zeros(d)
    top[0], top[1] = 1.0, -1.0
    avg, weight = _simulate(spec, np.stack([top] * cohort), [1.0] * cohort, parties=2)
    assert weight == cohort and np.array_equal(avg, top)


def test_sum_share_frames_fit_the_envelope_and_bad_ones_are_refused() -> None:
    d = 64 * 1000
    share = np.arange(-5, d - 4, dtype=np.int64) * (1 << 33)  # high bits set: reduced mod 2**32 before leaving
    frames = ring.sum_share_frames(share, 32, step=-(-(d + 1) // MAX_PAYLOADS))
    assert len(frames) <= MAX_PAYLOADS and sum(f.nbytes for f in frames) == 4 * d + 8
    total = np.zeros(d + 1, dtype=np.int64)
    ring.add_sum_share(total, frames, 32, "party 0")
    assert np.array_equal(total[:-1], share[:-1].astype(np.int32)) and total[-1] == share[-1]
    for bad in (frames[:-1], [*frames[:-1], bytes(4)], [bytes(4 * d + 8)], [*frames, bytes(8)]):
        with pytest.raises(WireError, match="party 1 sent a malformed sum share"):
            ring.add_sum_share(np.zeros(d + 1, dtype=np.int64), bad, 32, "party 1")


def test_ring_is_chosen_from_the_bounds() -> None:
    shapes = {"w": (1000,)}
    assert RoundSpec.create(1, shapes, clip_norm=1.0, max_weight=1.0, max_cohort=32).ring_bits == 32
    assert RoundSpec.create(1, shapes, clip_norm=1.0, max_weight=1.0, max_cohort=64).ring_bits == 64  # 2^30 + 64
    assert RoundSpec.create(1, shapes, clip_norm=1.0, max_weight=1.0).ring_bits == 64  # 65,535 reports
    assert RoundSpec.create(1, shapes, clip_norm=1.0, max_cohort=32).ring_bits == 64  # no weight bound
    assert RoundSpec.create(1, shapes, max_weight=1.0, max_cohort=32).ring_bits == 64  # no clip
    assert RoundSpec.create(1, shapes, clip_norm=100.0, max_weight=1.0, max_cohort=32).ring_bits == 64
    assert RoundSpec.create(1, shapes, clip_norm=100.0, max_weight=1.0, max_cohort=32,
                            frac_bits=16).ring_bits == 32
    # noised rounds have weight 1; the cohort's noise tail counts (mpc_agg.ring.noise_tail)
    noised = RoundSpec.create(1, {"w": (10**6,)}, clip_norm=1.0, noise_multiplier=1.0, min_clients=10,
                              max_cohort=100)
    assert noised.ring_bits == 32 and noised.sum_bound() > 100 * 2**noised.frac_bits
    verified = dict(clip_norm=1.0, verify_norm=True, max_cohort=32)
    assert RoundSpec.create(1, shapes, **verified).ring_bits == 64  # type: ignore[arg-type]
    with pytest.raises(RingSizeError, match="verify_norm"):
        RoundSpec.create(1, shapes, ring_bits=32, **verified)  # type: ignore[arg-type]
    assert RoundSpec.create(1, shapes, clip_norm=1.0, max_weight=1.0, max_cohort=32, ring_bits=64).ring_bits == 64
    with pytest.raises(RingSizeError, match="does not fit a 32-bit ring.*65535 reports"):
        RoundSpec.create(1, shapes, clip_norm=1.0, max_weight=1.0, ring_bits=32)


def test_noise_tail_bounds_real_skellam_sums() -> None:
    rng = np.random.default_rng(1)
    lam, d = 5e5, 200_000
    sums = rng.poisson(lam, d) - rng.poisson(lam, d)
    tail = ring.noise_tail(lam, d)
    assert np.max(np.abs(sums)) < tail < 15 * math.sqrt(2 * lam)  # holds, and is not absurdly loose (~13 sd)


def test_spec_json_states_the_ring_and_old_specs_mean_64() -> None:
    spec = RoundSpec.create(3, {"w": (10,)}, clip_norm=1.0, max_weight=1.0, max_cohort=8)
    obj = spec.to_json()
    assert obj["ring_bits"] == 32 and obj["max_cohort"] == 8 and RoundSpec.from_json(obj) == spec
    wide = RoundSpec.create(3, {"w": (10,)}, clip_norm=1.0, max_weight=1.0, max_cohort=8, ring_bits=64)
    assert wide.digest() != spec.digest()  # the ring is part of the digest
    old = {k: v for k, v in wide.to_json().items() if k not in ("ring_bits",)}
    assert RoundSpec.from_json(old).ring_bits == 64 and RoundSpec.from_json(old).digest() == wide.digest()
    lie = {**RoundSpec.create(3, {"w": (10,)}, clip_norm=1.0, max_weight=1.0).to_json(), "ring_bits": 32}
    with pytest.raises(RingSizeError, match="does not fit a 32-bit ring"):
        RoundSpec.from_json(lie)  # what a client or party does with a spec it fetched or was sent
    with pytest.raises(WireError):
        RoundSpec.from_json({**obj, "ring_bits": 16})
    with pytest.raises(ConfigError):
        RoundSpec.create(3, {"w": (10,)}, min_clients=3, max_cohort=2)


def test_encode_refuses_values_past_a_32_bit_rounds_bound() -> None:
    spec = RoundSpec.create(1, {"w": (4,)}, clip_norm=1.0, max_weight=2.0, max_cohort=10)
    bound = spec.report_bound()
    assert spec.ring_bits == 32 and bound == 2 * 2**spec.frac_bits + 1
    encode([1.0, -1.0, 0.0, 0.5], spec.frac_bits, scale=2.0, bound=bound)  # at the bound: fine
    with pytest.raises(RangeError, match="32-bit ring"):
        encode([1.01, 0.0, 0.0, 0.0], spec.frac_bits, scale=2.0, bound=bound)


def _refusal(ld: LocalDeployment, spec_json: dict[str, Any]) -> str:
    """OPEN_ROUND with a hand-made spec at party 0, as a coordinator that lies would send it."""
    dep = ld.deployment
    ctx = SecureContext()
    try:
        secret = read_secret_key(dep.coordinator_private_key_file, "coordinator")
        p = dep.party(0)
        req = Requester(ctx.client(zmq.DEALER, p.client_endpoint, public_key=dep.coordinator_public_key,
                                   secret_key=secret, server_key=p.public_key))
        with pytest.raises(RingSizeError) as info:
            req.request(MsgType.OPEN_ROUND, {"spec": spec_json}, timeout_s=20, what="party 0")
        return str(info.value)
    finally:
        ctx.close()


def test_real_rounds_32_and_64_bits(dep3: LocalDeployment, round_id: int) -> None:
    """Real processes: a 32-bit round and a 64-bit round of the same updates give the numpy average;
    the 32-bit upload is at most 4·d + 1 KiB; a 32-bit spec that does not fit is refused by a party
    and by the client; a client update past the round's bound is refused before anything is sent."""
    n, d, clip = 3, 20_000, 1.0
    updates = _updates(n, d, clip, seed=2)
    weights = [1.0, 2.0, 0.5]
    expected = np.average(updates, axis=0, weights=weights)
    shapes = {"w": (d,)}
    with Coordinator(dep3.deployment) as coord:
        sent: dict[int, int] = {}
        for bits, rid in ((32, round_id), (64, round_id + 10_000)):
            spec = coord.open_round(rid, shapes, min_clients=3, clip_norm=clip, max_weight=2.0, max_cohort=16,
                                    ring_bits=None if bits == 32 else 64)
            assert spec.ring_bits == bits
            for i in range(n):
                with SecureAggClient(dep3.deployment, f"client-{i}") as c:
                    c.submit(rid, {"w": updates[i]}, weight=weights[i])
                    if i == 0:
                        sent[bits] = c.bytes_sent
            with SecureAggClient(dep3.deployment, "client-5") as c:  # weight 3 > max_weight 2: the 64-bit
                vec = np.empty(d + 1, dtype=np.int64)  # weight check drops it in both rings
                encode(updates[0], spec.frac_bits, scale=3.0, out=vec[:-1])
                encode([3.0], spec.frac_bits, out=vec[-1:])
                c.upload_encoded(c.fetch_spec(rid), vec)
            res = coord.close_round(rid, timeout_s=60)
            err = float(np.max(np.abs(res.average["w"].numpy() - expected)))
            assert res.rejected == ("client-5",) and len(res.clients) == n, res
            assert res.total_weight == sum(weights), res
            assert err <= n * 2.0 ** -(spec.frac_bits + 1) / sum(weights), (bits, err)
        assert sent[32] <= 4 * d + 1024 < 8 * d <= sent[64]
        # a client refuses an update past the 32-bit round's bound (clip=False), before sending anything
        rid = round_id + 20_000
        coord.open_round(rid, shapes, min_clients=3, clip_norm=clip, max_weight=1.0, max_cohort=16)
        with SecureAggClient(dep3.deployment, "client-3") as c:
            big = np.zeros(d)
            big[7] = 1.5 * clip  # past the round's |coordinate| bound (its L2 clip norm) for one report
            with pytest.raises(RangeError, match="32-bit ring"):
                c.submit(rid, {"w": big}, clip=False)
            assert c.bytes_sent < 1024  # only the spec fetches
    bad = {**RoundSpec.create(round_id + 30_000, shapes, clip_norm=clip, max_weight=1.0, parties=3).to_json(),
           "ring_bits": 32}
    assert "does not fit a 32-bit ring" in _refusal(dep3, bad)
    with pytest.raises(RingSizeError):  # the client's parse of the same spec (SecureAggClient.fetch_spec)
        RoundSpec.from_json(bad)


def test_party_state_machine_in_a_32_bit_round(tmp_path: Path) -> None:
    """The parties' own code in one process (parties/inprocess.py), 32-bit chunks in several pieces:
    a report one party never got (subtracted again at close), every party restarted from disk, an
    upload cut by a malformed chunk and one still running at close (both taken back out of the sum);
    the average is numpy's."""
    d = 21  # 8-value chunks: the weight arrives in the last, short one
    spec = RoundSpec.create(1, {"w": (d,)}, min_clients=2, clip_norm=2.0, max_weight=3.0, max_cohort=8,
                            parties=3)
    assert spec.ring_bits == 32
    ip = InProcess(tmp_path)
    ip.open(spec)
    ups = list(_updates(3, d, 2.0, seed=3))
    weights = [1.0, 3.0, 0.5]
    for j, (u, w) in enumerate(zip(ups, weights)):
        assert all(isinstance(a, tuple) for a in ip.submit(f"c{j}", spec, u, w))
    ip.submit("partial", spec, ups[0], parties=[0, 2])  # party 1 never gets it
    dense = [rep for p in ip.parties for rep in p.table.rounds[1].stored.values() if rep.kind == "dense"]
    assert len(dense) >= 3 and {rep.length for rep in dense} == {ring.report_nbytes(32, d)}  # logged as sent
    for i in range(3):  # recovery: each log holds dense shares in wire layout and seeds, by the record's kind
        ip.restart(i)
    junk = np.full(8, 1 << 30, "<i4").data
    for rid, second in (("cd", np.ones(8, "<i8").data), ("ce", None)):
        begin = {"round": 1, "client": f"cut-{rid}", "report_id": rid * 16, "spec_digest": spec.digest(),
                 "deadline": 2e9}
        at = dense_party(spec, bytes.fromhex(rid * 16), 3)  # party 2 for "cd", 1 for "ce"
        go = ip.request(at, f"client:cut-{rid}", MsgType.REPORT_BEGIN, begin)
        assert isinstance(go, tuple)
        seal = UploadSeal(bytes.fromhex(go[1]["key"]), 1, bytes.fromhex(rid * 16))
        taken = ip.request(at, "bulk", MsgType.REPORT_CHUNK, {"report_id": rid * 16, "offset": 0},
                           [seal.seal_chunk(0, 8, junk)])
        assert isinstance(taken, tuple)  # in the running sum now
        if second is not None:  # 64-bit bytes in a 32-bit round: refused
            bad = ip.request(at, "bulk", MsgType.REPORT_CHUNK, {"report_id": rid * 16, "offset": 8},
                             [seal.seal_chunk(8, 8, second)])
            assert isinstance(bad, WireError)
    answers = ip.close(1)  # both uploads are still running: dropped by the close, their chunks taken back out
    assert all(sorted(a[1]["clients"]) == ["c0", "c1", "c2"] for a in answers)  # type: ignore[index]
    assert all(sum(memoryview(f).nbytes for f in a[2]) == 4 * d + 8 for a in answers)  # type: ignore[index]
    want = np.average(np.stack(ups), axis=0, weights=weights)
    np.testing.assert_allclose(InProcess.average(spec, answers), want, atol=3 * 2.0 ** -spec.frac_bits)

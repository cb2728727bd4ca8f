"""Verified clipping: parties check each report's L2 norm in MPC (CrypTen + dealer) and drop violators."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from fl_client import SecureAggClient
from fl_client.client import clip_to_norm
from mpc_agg.errors import ConfigError, TrustError
from mpc_agg.fixedpoint import encode
from mpc_agg.spec import RoundSpec
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(300)
D, CLIP = 3000, 1.0


@pytest.fixture(scope="module", params=[2, 3], ids=lambda k: f"k{k}")
def vdep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    work = tmp_path_factory.mktemp(f"verify{request.param}")
    ld = LocalDeployment(work / "dep", parties=request.param, clients=6, min_clients=3, allow_verify_norm=True,
                         env={"MPC_AGG_TRANSCRIPT": str(work / "transcript")})
    ld.transcript_prefix = work / "transcript"  # type: ignore[attr-defined]
    with ld:
        yield ld


def _unit(rng: np.random.Generator, norm: float) -> np.ndarray:
    v = rng.normal(size=D)
    return v / np.linalg.norm(v) * norm


def _round(ld: LocalDeployment, rid: int, updates: list[np.ndarray], *, verify: bool, clip: list[bool]):  # type: ignore[no-untyped-def]
    with Coordinator.from_config(ld.config) as coord:
        coord.open_round(rid, shapes={"w": updates[0].shape}, min_clients=3, clip_norm=CLIP, verify_norm=verify)
        for i, (u, c) in enumerate(zip(updates, clip)):
            with SecureAggClient.from_config(ld.config, f"client-{i}", min_colluders=2) as cl:  # consents
                cl.submit(rid, {"w": u}, clip=c)
        return coord.close_round(rid, timeout_s=120)


def test_honest_clients_all_accepted_with_the_same_average(vdep: LocalDeployment, round_id: int) -> None:
    rng = np.random.default_rng(round_id)
    ups = [_unit(rng, 0.9), _unit(rng, 0.5), _unit(rng, 0.99)]
    res = _round(vdep, round_id, ups, verify=True, clip=[True] * 3)
    plain = _round(vdep, round_id + 10_000, ups, verify=False, clip=[True] * 3)
    assert res.rejected == () and len(res.clients) == 3
    assert np.allclose(res.average["w"].numpy(), plain.average["w"].numpy(), atol=3 * 2.0**-24)
    assert np.allclose(res.average["w"].numpy(), np.mean(ups, axis=0), atol=3 * 2.0**-24)


def test_odd_dimension_is_verified(vdep: LocalDeployment, round_id: int) -> None:
    """The weight then sits at an odd index, which helpers must expand from an AES block boundary."""
    with Coordinator.from_config(vdep.config) as coord:
        coord.open_round(round_id, shapes={"w": (7,)}, min_clients=3, clip_norm=CLIP, verify_norm=True)
        for i in range(3):
            with SecureAggClient.from_config(vdep.config, f"client-{i}", min_colluders=2) as cl:  # consents
                cl.submit(round_id, {"w": np.full(7, 0.1 * i)})
        res = coord.close_round(round_id, timeout_s=120)
    assert res.rejected == () and np.allclose(res.average["w"].numpy(), 0.1, atol=3 * 2.0**-24)


def test_unclipped_client_rejected_and_exact_bound_accepted(vdep: LocalDeployment, round_id: int) -> None:
    rng = np.random.default_rng(round_id)
    at_bound = _unit(rng, CLIP)  # exactly at the bound: accepted
    honest = [_unit(rng, 0.7), at_bound, _unit(rng, 0.3)]
    cheat = _unit(rng, 10 * CLIP)
    res = _round(vdep, round_id, [*honest, cheat], verify=True, clip=[True, True, True, False])
    assert res.rejected == ("client-3",)
    assert res.clients == ("client-0", "client-1", "client-2")
    assert np.allclose(res.average["w"].numpy(), np.mean(honest, axis=0), atol=3 * 2.0**-24)
    # no party's log, state or received messages hold the norm (as float or as the ring value)
    norms = [float(np.linalg.norm(u)) for u in [*honest, cheat]]
    # client-1's squared norm is the public bound itself (2^48): only the others are secrets to look for
    ring_sq = [int(round(n * 2**24)) ** 2 for i, n in enumerate(norms) if i != 1]
    files = [*Path(vdep.log_dir).glob("*.log"), *Path(vdep.workdir).rglob("state/**/*")]
    text = b"".join(p.read_bytes() for p in files if p.is_file())
    for n in norms:
        assert f"{n:.4f}".encode() not in text
    transcripts = b"".join(p.read_bytes() for p in Path(vdep.transcript_prefix).parent.glob("transcript.party*"))  # type: ignore[attr-defined]
    assert len(transcripts) > 8 * D  # the MPC really ran over the communicator
    for sq in ring_sq:
        for delta in range(-4096, 4097, 64):  # the exact value depends on rounding; scan around it
            assert (sq + delta).to_bytes(8, "little", signed=True) not in transcripts


@pytest.mark.parametrize("frac_bits", [16, 24])
def test_a_client_at_the_bound_always_encodes_within_it(frac_bits: int) -> None:
    """Rounding to nearest may lengthen a vector clipped to exactly clip_norm past the parties' bound (about
    one unit vector in 25 did at d = 3000); the client clips to clip_norm - sqrt(d)/2^(f+1) in verified rounds."""
    spec = RoundSpec.create(1, {"w": (D,)}, min_clients=3, clip_norm=CLIP, frac_bits=frac_bits, verify_norm=True)
    target = SecureAggClient._clip_target(spec, noised=False)
    assert CLIP - 1e-3 < target < CLIP
    for seed in range(200):
        v = np.random.default_rng(seed).normal(size=D)
        encoded = encode(clip_to_norm(v / np.linalg.norm(v) * 2 * CLIP, target), frac_bits)
        assert int(np.sum(encoded.astype(object) ** 2)) <= spec.norm_bound(), seed


def test_verify_norm_needs_clip_and_fitting_bound() -> None:
    with pytest.raises(ConfigError):
        RoundSpec.create(1, {"w": (10,)}, verify_norm=True)
    with pytest.raises(ConfigError):  # (C * 2^40)^2 cannot fit the ring
        RoundSpec.create(1, {"w": (10,)}, clip_norm=1.0, frac_bits=40, verify_norm=True)
    assert RoundSpec.create(1, {"w": (10,)}, clip_norm=1.0, verify_norm=True).norm_bound() >= 2**48


def _cheats(dim: int) -> dict[str, np.ndarray]:
    """Vectors whose squared norm wraps the ring (sum of squares = 0 mod 2**64 at frac_bits 24),
    or nearly: each would pass the squared-norm test alone (issue 13's attacks and more)."""
    def vec(**at: float) -> np.ndarray:
        v = np.zeros(dim)
        for k, x in at.items():
            v[int(k[1:])] = x
        return v
    many = np.zeros(dim)
    many[:16_384] = np.where(np.arange(16_384) % 2, 2.0, -2.0)  # 2**14 * (2**25)**2 = 2**64
    near_t = np.zeros(dim)
    near_t[:1024] = 8.0  # 2**27 ring units each, about 1.1 T: 2**10 * 2**54 = 2**64
    mix = np.zeros(dim)
    mix[:3] = [256.0, 0.3, -0.4]
    return {"one 2**32": vec(i7=256.0), "four 2**31": vec(i0=128.0, i1=128.0, i2=-128.0, i3=128.0),
            "16384 of 2**25": many, "1024 near T": near_t, "large plus small": mix}


def test_wrapping_cheats_are_rejected(vdep: LocalDeployment, round_id: int) -> None:
    dim = 20_000
    rng = np.random.default_rng(round_id)
    honest = [rng.normal(size=dim) for _ in range(3)]
    honest = [h / np.linalg.norm(h) * 0.999 * CLIP for h in honest]
    cheats = _cheats(dim)
    for r, names in enumerate((list(cheats)[:3], list(cheats)[3:])):
        ups = [*honest, *(cheats[n] for n in names)]
        res = _round(vdep, round_id + 100 * r, ups, verify=True, clip=[True] * 3 + [False] * len(names))
        assert res.rejected == tuple(f"client-{3 + j}" for j in range(len(names))), (names, res.rejected)
        assert res.clients == ("client-0", "client-1", "client-2")
        assert np.allclose(res.average["w"].numpy(), np.mean(honest, axis=0), atol=3 * 2.0**-24)


def test_many_chunks_are_verified(vdep: LocalDeployment, round_id: int) -> None:
    """Four reports of 1.1 M values span several chunks of the norm loop: three at k = 2
    (mpc_agg.normcheck.CHUNK_ELEMENTS), 17 at k = 3, where the leader streams its rows to party 2 up to
    LEADER_WINDOW = 8 chunks ahead of its acknowledgements (parties.cohort)."""
    dim = 1_100_000
    rng = np.random.default_rng(round_id)
    honest = [v / np.linalg.norm(v) * 0.999 * CLIP for v in rng.normal(size=(3, dim))]
    over = np.zeros(dim)
    over[-5:] = 1.0  # norm 2.2: only the last chunk holds it
    res = _round(vdep, round_id, [*honest, over], verify=True, clip=[True] * 3 + [False])
    assert res.rejected == ("client-3",) and res.clients == ("client-0", "client-1", "client-2")
    assert np.allclose(res.average["w"].numpy(), np.mean(honest, axis=0), atol=3 * 2.0**-24)


def test_client_floor_refuses_verified_rounds_unless_it_consents(vdep: LocalDeployment, round_id: int) -> None:
    """verify_norm lowers who must collude to 2 servers: a client whose floor asks for more refuses (typed,
    before anything is shared); consenting clients' round closes, and so does the next unverified one."""
    rng = np.random.default_rng(round_id)
    ups = [_unit(rng, 0.5) for _ in range(4)]
    with Coordinator.from_config(vdep.config) as coord:
        spec = coord.open_round(round_id, shapes={"w": (D,)}, min_clients=3, clip_norm=CLIP, verify_norm=True)
        assert spec.parties == len(vdep.deployment.parties) and spec.colluders == 2
        for floor in (None, 3):  # None: the default, all k parties
            with SecureAggClient.from_config(vdep.config, "client-5", min_colluders=floor) as cl:
                with pytest.raises(TrustError, match="refuses round"):
                    cl.submit(round_id, {"w": ups[3]})
                assert cl.bytes_sent < 4096  # only the spec requests: no share left the client
        for i in range(3):
            with SecureAggClient.from_config(vdep.config, f"client-{i}", min_colluders=2) as cl:
                cl.submit(round_id, {"w": ups[i]})
        res = coord.close_round(round_id, timeout_s=120)
        assert res.clients == ("client-0", "client-1", "client-2") and res.rejected == ()
        coord.open_round(round_id + 20_000, shapes={"w": (D,)}, min_clients=3, clip_norm=CLIP)
        for i in range(3):
            with SecureAggClient.from_config(vdep.config, f"client-{i}") as cl:  # default floor: fine here
                cl.submit(round_id + 20_000, {"w": ups[i]})
        plain = coord.close_round(round_id + 20_000, timeout_s=120)
    assert np.allclose(plain.average["w"].numpy(), np.mean(ups[:3], axis=0), atol=3 * 2.0**-24)

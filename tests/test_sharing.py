import numpy as np
import pytest
from scipy import stats

from mpc_agg.errors import EncodingError
from mpc_agg.sharing import (ShareContext, dense_party, expand_seed, new_seeds, reconstruct, seed_parties, split,
                             xor_leader_share)
from mpc_agg.spec import RoundSpec

CTX = ShareContext(round_id=7, client_id="client-0", report_id=bytes(range(16)))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_shares_reconstruct_exactly(k: int) -> None:
    x = np.random.default_rng(0).integers(-(2**62), 2**62, size=1001, dtype=np.int64)
    leader, seeds = split(x, k, CTX)
    assert len(seeds) == k - 1 and all(len(s) == 32 for s in seeds)
    helpers = [expand_seed(s, CTX, j, x.size) for j, s in enumerate(seeds, start=1)]
    assert np.array_equal(reconstruct([leader, *helpers]), x)


@pytest.mark.parametrize("k,dense", [(2, 1), (3, 1), (3, 2), (5, 3)])
def test_any_party_may_take_the_dense_share(k: int, dense: int) -> None:
    """The dense party's share and the others' seeds, each expanded with its own party index, add up to x."""
    x = np.random.default_rng(1).integers(-(2**62), 2**62, size=101, dtype=np.int64)
    share, seeds = split(x, k, CTX, dense=dense)
    others = seed_parties(k, dense)
    assert dense not in others and len(others) == k - 1
    expanded = [expand_seed(s, CTX, j, x.size) for j, s in zip(others, seeds)]
    assert np.array_equal(reconstruct([share, *expanded]), x)
    wrong = [expand_seed(s, CTX, j, x.size) for j, s in enumerate(seeds, start=1)]  # the leader-dense indices
    assert not np.array_equal(reconstruct([share, *wrong]), x)


def test_dense_party_rotates_with_the_report_id_except_in_verified_rounds() -> None:
    plain = RoundSpec.create(1, {"w": (4,)})
    verified = RoundSpec.create(1, {"w": (4,)}, clip_norm=1.0, verify_norm=True)
    ids = [bytes([i]) * 16 for i in range(256)]
    for k in (2, 3, 5):
        got = [dense_party(plain, r, k) for r in ids]
        assert got == [int.from_bytes(r[:8], "big") % k for r in ids]  # the rule, the same at every end
        assert set(got) == set(range(k)) and min(got.count(p) for p in range(k)) > 256 // k - 20  # spread evenly
        assert {dense_party(verified, r, k) for r in ids} == {0}  # verified rounds: the leader's (cohort.py)
    with pytest.raises(EncodingError):
        dense_party(plain, bytes(15), 3)
    with pytest.raises(EncodingError):
        seed_parties(3, 3)


def test_expansion_is_deterministic_and_domain_separated() -> None:
    seed = b"\x01" * 32
    a = expand_seed(seed, CTX, 1, 100)
    assert np.array_equal(a, expand_seed(seed, CTX, 1, 100))
    assert not np.array_equal(a, expand_seed(seed, CTX, 2, 100))
    other = ShareContext(round_id=8, client_id="client-0", report_id=bytes(range(16)))
    assert not np.array_equal(a, expand_seed(seed, other, 1, 100))
    # a prefix of a longer expansion is the shorter one (CTR keystream)
    assert np.array_equal(expand_seed(seed, CTX, 1, 1000)[:100], a)


def test_known_answer_vector() -> None:
    # Pins the derivation (HKDF-SHA256 info string, AES-128-CTR, little-endian int64):
    # any change to it breaks interoperability between versions and must be deliberate.
    got = expand_seed(bytes(32), ShareContext(1, "c", bytes(16)), 1, 2)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"mpc-agg/share|v1|round=1|client=c|report=" + b"00" * 16 + b"|party=1"
    key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=info).derive(bytes(32))
    ks = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16))
    assert got.tolist() == np.frombuffer(ks, dtype="<i8").tolist()


def test_leader_share_of_a_constant_is_uniform_bytes() -> None:
    x = np.zeros(50_000, dtype=np.int64)  # worst case: a constant secret
    leader, _ = split(x, 3, CTX)
    counts = np.bincount(np.frombuffer(leader.tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("bad", [b"short", b"x" * 33])
def test_bad_seed_length(bad: bytes) -> None:
    with pytest.raises(EncodingError):
        expand_seed(bad, CTX, 1, 4)


def test_split_validates_input() -> None:
    with pytest.raises(EncodingError):
        split(np.zeros(3, dtype=np.int64), 1, CTX)
    with pytest.raises(EncodingError):
        split(np.zeros(3), 3, CTX)  # type: ignore[arg-type]


def test_expansion_slices_match_the_whole() -> None:
    seed = b"\x07" * 32
    whole = expand_seed(seed, CTX, 2, 300_000)
    for start, n in ((0, 10), (2, 5), (3, 4), (131_072, 1000), (131_075, 9), (299_990, 10)):
        assert np.array_equal(expand_seed(seed, CTX, 2, n, start=start), whole[start:start + n])
    with pytest.raises(EncodingError):
        expand_seed(seed, CTX, 2, 4, start=-1)


def test_32_bit_stream_is_the_same_bytes_read_as_int32() -> None:
    seed = b"\x09" * 32
    raw = expand_seed(seed, CTX, 1, 50).astype("<i8").tobytes()
    narrow = expand_seed(seed, CTX, 1, 100, bits=32)
    assert np.array_equal(narrow, np.frombuffer(raw, dtype="<i4"))
    for start, n in ((1, 7), (5, 30), (99, 1)):  # any start, not only whole AES blocks
        assert np.array_equal(expand_seed(seed, CTX, 1, n, start=start, bits=32), narrow[start:start + n])


@pytest.mark.parametrize("k,bits", [(2, 64), (3, 64), (3, 1), (4, 7)])
def test_xor_shares_reconstruct_on_their_bits(k: int, bits: int) -> None:
    mask = -1 if bits == 64 else (1 << bits) - 1
    x = np.random.default_rng(1).integers(-(2**62), 2**62, size=1001, dtype=np.int64) & mask
    seeds = new_seeds(k)
    leader = xor_leader_share(x, seeds, CTX, bits=bits)
    helpers = [expand_seed(s, CTX, j, x.size) & mask for j, s in enumerate(seeds, start=1)]
    total = leader.copy()
    for h in helpers:
        total ^= h
    assert np.array_equal(total, x) and not np.array_equal(leader, x)
    assert np.array_equal(leader & ~np.int64(mask), np.zeros_like(x))  # no bit above ``bits`` is set


def test_xor_share_validates_input() -> None:
    with pytest.raises(EncodingError):
        xor_leader_share(np.zeros(3, dtype=np.int64), [], CTX)
    with pytest.raises(EncodingError):
        xor_leader_share(np.zeros(3, dtype=np.int64), new_seeds(2), CTX, bits=65)

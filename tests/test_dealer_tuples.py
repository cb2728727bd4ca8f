"""The dealer's tuples, in-process: every party's shares (party 0's in full, the others' as seeds it expands)
reconstruct to a correct tuple (parties/dealer.py ``deal``; mpc_agg.dealer_tuples.split_dealer_value)."""

from __future__ import annotations

from functools import reduce

import pytest
import torch

from mpc_agg.crypten_glue import import_crypten
from parties.dealer import Seeded, deal

pytestmark = pytest.mark.timeout(60)


def values(shares: list[list[torch.Tensor | Seeded]], j: int) -> list[torch.Tensor]:
    """Tuple element ``j`` as each party holds it (party i expands its seed with its own index)."""
    return [s[j].expand(i) if isinstance(s[j], Seeded) else s[j] for i, s in enumerate(shares)]


def added(shares: list[list[torch.Tensor | Seeded]], j: int) -> torch.Tensor:
    return reduce(torch.add, values(shares, j))  # int64 arithmetic wraps: the sum mod 2**64


def xored(shares: list[list[torch.Tensor | Seeded]], j: int) -> torch.Tensor:
    return reduce(torch.bitwise_xor, values(shares, j))


@pytest.mark.parametrize("k", [2, 3])
def test_additive_triples_and_squares_reconstruct(k: int) -> None:
    s = deal("additive", {"op": "matmul", "size0": [3, 4], "size1": [4, 2]}, k)
    assert len(s) == k and all(isinstance(x, Seeded) for p in s[1:] for x in p)  # helpers get seeds only
    a, b, c = added(s, 0), added(s, 1), added(s, 2)
    assert a.shape == (3, 4) and torch.equal(c, a @ b) and a.unique().numel() > 6
    sq = deal("square", {"size": [5]}, k)
    assert torch.equal(added(sq, 1), added(sq, 0) * added(sq, 0))


@pytest.mark.parametrize("k", [2, 3])
def test_binary_triples_and_b2a_bits_reconstruct(k: int) -> None:
    s = deal("binary", {"size0": [64], "size1": [64]}, k)
    a, b, c = xored(s, 0), xored(s, 1), xored(s, 2)
    assert torch.equal(c, a & b) and (a < 0).any() and (a > 0).any()  # all 64 bits used
    bits = deal("B2A", {"size": [200]}, k)
    arith, binary = added(bits, 0), xored(bits, 1)
    assert torch.equal(arith, binary) and set(arith.tolist()) == {0, 1}
    assert all(set(v.tolist()) <= {0, 1} for v in values(bits, 1))  # each binary share is one bit


def test_wraps_count_the_wraps_of_the_shares() -> None:
    import_crypten()
    from crypten.common.util import count_wraps

    s = deal("wraps", {"size": [50]}, 3)
    assert torch.equal(added(s, 1), count_wraps(values(s, 0)))

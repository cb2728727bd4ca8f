"""The sign circuit (mpc_agg.signcircuit) in-process: every party's shares at once, ANDs computed in the
clear and re-shared, so the circuit's logic is checked against plain int64 signs in milliseconds.  The
real parties run it in tests/test_normcheck.py and tests/test_hostile.py."""

from __future__ import annotations

import pytest
import torch

from mpc_agg import signcircuit

pytestmark = pytest.mark.timeout(60)
EDGES = [0, 1, -1, 2**62, 2**63 - 1, -2**63, -2**63 + 1, 2**32, -2**32, 12345, -12345]


class AllParties:
    """A BinaryEngine over all k parties' XOR shares, party on the last axis; counts rounds and triples."""

    def __init__(self, parties: int, seed: int) -> None:
        self.parties, self.gen = parties, torch.Generator().manual_seed(seed)
        self.rounds = self.budget = self.used = 0

    def _random(self, shape: torch.Size) -> torch.Tensor:
        return torch.randint(-2**63, 2**63 - 1, shape, generator=self.gen, dtype=torch.int64)

    def share(self, x: torch.Tensor) -> torch.Tensor:
        parts = self._random((*x.shape, self.parties - 1))
        last = x.clone()
        for i in range(self.parties - 1):
            last ^= parts[..., i]
        return torch.cat([parts, last[..., None]], dim=-1)

    def addends(self, shares: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(self.parties):
            a = torch.zeros_like(shares)
            a[..., i] = shares[..., i]
            out.append(a)
        return out

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., 0] ^= 1
        return x

    def prepare(self, elements: int) -> None:
        self.budget, self.used = elements, 0

    def and_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.shape == y.shape
        self.rounds += 1
        self.used += x[..., 0].numel()
        assert self.used <= self.budget, "more triples used than prepared"
        return self.share(self.reveal(x) & self.reveal(y))

    def reveal(self, x: torch.Tensor) -> torch.Tensor:
        out = x[..., 0].clone()
        for i in range(1, self.parties):
            out ^= x[..., i]
        return out


def _additive(values: torch.Tensor, parties: int, gen: torch.Generator) -> torch.Tensor:
    """Additive shares mod 2**64 of ``values``, party on the last axis."""
    parts = torch.randint(-2**63, 2**63 - 1, (*values.shape, parties - 1), generator=gen, dtype=torch.int64)
    return torch.cat([parts, (values - parts.sum(dim=-1))[..., None]], dim=-1)


@pytest.mark.parametrize("parties", [2, 3, 4, 5])
def test_all_nonnegative_matches_plain_signs(parties: int) -> None:
    gen = torch.Generator().manual_seed(parties)
    values = torch.randint(-2**63, 2**63 - 1, (84, 40), generator=gen, dtype=torch.int64)
    values[values < 0] //= 64  # about half the reports pass: most values nonnegative
    values[:, :20] = values[:, :20].abs()
    values[:, 0] = -2**63  # abs() overflows: stays negative
    values[: len(EDGES), 21] = torch.tensor(EDGES)
    values[5, 22], values[83, 23] = -1, -2**63
    engine = AllParties(parties, seed=7)
    got = signcircuit.all_nonnegative(engine, _additive(values, parties, gen))
    assert got == (values >= 0).all(dim=0).tolist()
    assert 10 <= sum(got) <= 30  # both outcomes exercised
    assert engine.used == engine.budget == signcircuit.and_elements(parties, 84, 40)


def test_every_single_sign_and_its_round_count() -> None:
    gen = torch.Generator().manual_seed(1)
    values = torch.tensor([EDGES])
    engine = AllParties(3, seed=2)
    assert signcircuit.all_nonnegative(engine, _additive(values, 3, gen)) == [v >= 0 for v in EDGES]
    assert engine.rounds == 1 + 1 + 6  # carry save, generate, prefix; one test: no AND tree


def test_verified_clipping_shape_takes_fifteen_layers() -> None:
    gen = torch.Generator().manual_seed(3)
    engine = AllParties(3, seed=4)
    signcircuit.all_nonnegative(engine, _additive(torch.zeros(84, 10, dtype=torch.int64), 3, gen))
    assert engine.rounds == 15


def test_reports_beyond_one_batch_are_checked_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signcircuit, "MAX_BATCH_ELEMENTS", 3 * signcircuit.and_elements(3, 4, 1))
    gen = torch.Generator().manual_seed(5)
    values = torch.randint(-2**20, 2**20, (4, 10), generator=gen, dtype=torch.int64)
    got = signcircuit.all_nonnegative(AllParties(3, seed=6), _additive(values, 3, gen))
    assert got == (values >= 0).all(dim=0).tolist()

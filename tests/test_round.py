"""End-to-end rounds against real party processes (started with the CLI) on loopback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_client import SecureAggClient
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(180)


def _run(ld: LocalDeployment, rid: int, updates: list[dict[str, np.ndarray]], weights: list[float], *,
         frac_bits: int | None = None, clip_norm: float | None = None, clip: bool = True):
    shapes = {n: v.shape for n, v in updates[0].items()}
    with Coordinator.from_config(ld.config) as coord:
        spec = coord.open_round(rid, shapes=shapes, min_clients=3, clip_norm=clip_norm, frac_bits=frac_bits)
        for i, (u, w) in enumerate(zip(updates, weights)):
            with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                c.submit(rid, {n: torch.from_numpy(v) if i % 2 else v for n, v in u.items()}, weight=w, clip=clip)
        return spec, coord.close_round(rid, timeout_s=60)


def _weighted_mean(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    w = np.asarray(weights)
    return {n: sum(wi * u[n] for wi, u in zip(w, updates)) / w.sum() for n in updates[0]}


def test_weighted_average_matches_numpy(deployment: LocalDeployment, round_id: int) -> None:
    rng = np.random.default_rng(round_id)
    clip = 4.0
    updates = []
    for i in range(4):
        u = {"w": rng.normal(0, 0.3, size=50) - 0.37, "b": rng.normal(0, 1, size=(3, 4)), "s": np.array(0.0)}
        updates.append(u)
    # values near ±clip and negative fractions (CrypTen's decode trap)
    updates[0]["w"][:3] = [clip - 2.0**-20, -clip + 2.0**-20, -1.0 - 2.0**-17]
    updates[1]["b"][0] = [-3.0000152587890625, -0.5, -7.75, -1e-3]
    weights = [1.0, 2.5, 3.0, 0.5]
    spec, res = _run(deployment, round_id, updates, weights)
    exp = _weighted_mean(updates, weights)
    tol = len(updates) * 2.0 ** -spec.frac_bits
    assert set(res.average) == {"w", "b", "s"}
    for n in exp:
        got = res.average[n]
        assert isinstance(got, torch.Tensor) and tuple(got.shape) == exp[n].shape
        assert np.max(np.abs(got.numpy() - exp[n])) <= tol
    assert res.clients == tuple(f"client-{i}" for i in range(4))
    assert res.total_weight == pytest.approx(sum(weights), abs=1e-6)


def test_tiny_deltas_with_more_fractional_bits(dep3: LocalDeployment, round_id: int) -> None:
    rng = np.random.default_rng(5)
    updates = [{"w": rng.choice([-1, 1], size=200) * 1e-6 * rng.uniform(0.5, 1.5, size=200)} for _ in range(3)]
    spec, res = _run(dep3, round_id, updates, [1.0, 1.0, 1.0], frac_bits=40)
    exp = _weighted_mean(updates, [1, 1, 1])["w"]
    err = np.max(np.abs(res.average["w"].numpy() - exp))
    assert err <= 3 * 2.0**-40
    assert np.max(np.abs(exp)) > 1e-7  # the signal is really there, and it survived
    assert np.corrcoef(res.average["w"].numpy(), exp)[0, 1] > 0.999999


def test_client_clips_to_the_round_bound(dep3: LocalDeployment, round_id: int) -> None:
    big = {"w": np.full(100, 1.0)}  # norm 10
    small = {"w": np.full(100, 0.01)}  # norm 0.1, untouched
    _, res = _run(dep3, round_id, [big, small, small], [1.0, 1.0, 1.0], clip_norm=1.0)
    exp = (np.full(100, 0.1) + 2 * np.full(100, 0.01)) / 3
    assert np.allclose(res.average["w"].numpy(), exp, atol=1e-6)


def test_clip_false_skips_client_clipping(dep3: LocalDeployment, round_id: int) -> None:
    big = {"w": np.full(100, 1.0)}
    _, res = _run(dep3, round_id, [big, big, big], [1.0, 1.0, 1.0], clip_norm=1.0, clip=False)
    assert np.allclose(res.average["w"].numpy(), 1.0, atol=1e-6)

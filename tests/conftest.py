"""Shared fixtures: real party processes on loopback, tracked and always stopped."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from parties.launcher import LocalDeployment  # noqa: E402

_round_ids = itertools.count(1)


@pytest.fixture
def round_id() -> int:
    """A round id never used before in this test session."""
    return next(_round_ids)


def _deployment(tmp_path_factory: pytest.TempPathFactory, k: int) -> Iterator[LocalDeployment]:
    ld = LocalDeployment(tmp_path_factory.mktemp(f"dep{k}"), parties=k, clients=6, min_clients=3)
    ld.start()
    try:
        yield ld
    finally:
        codes = ld.stop()
        assert set(codes.values()) <= {0}, f"a process did not exit cleanly: {codes}"


@pytest.fixture(scope="module", params=[2, 3, 5], ids=lambda k: f"k{k}")
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """A running deployment with k = 2, 3 and 5 parties, 6 clients, floor 3."""
    yield from _deployment(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def dep3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """A running 3-party deployment (6 clients, floor 3)."""
    yield from _deployment(tmp_path_factory, 3)

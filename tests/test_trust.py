"""Who must collude is part of the contract: a party that has not opted in refuses verify_norm; the party's
report cap keeps the ring sum from wrapping.  Real processes; the parties' consent is their own config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.config import Deployment
from mpc_agg.errors import RoundStateError, TrustError
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """k = 3 with a dealer; parties 0 and 1 allow verify_norm, party 2 does not; 3 reports per round at most."""
    ld = LocalDeployment(tmp_path_factory.mktemp("trust"), parties=3, clients=5, min_clients=3,
                         allow_verify_norm=True)
    text = Path(ld.config).read_text()
    head, party2 = text.split("id = 2\n", 1)
    party2 = party2.replace("allow_verify_norm = true", "allow_verify_norm = false", 1)
    text = re.sub(r"(min_clients = 3\n)", r"\1max_reports = 3\n", head + "id = 2\n" + party2)
    Path(ld.config).write_text(text)
    ld.deployment = Deployment.load(ld.config)
    assert [p.allow_verify_norm for p in ld.deployment.parties] == [True, True, False]
    assert [p.max_reports for p in ld.deployment.parties] == [3, 3, 3]
    with ld:
        yield ld


def _honest_round(ld: LocalDeployment, rid: int, coord: Coordinator, n: int = 3) -> np.ndarray:
    coord.open_round(rid, shapes={"w": (8,)}, min_clients=3)
    for i in range(n):
        with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
            c.submit(rid, {"w": np.full(8, float(i))})
    return coord.close_round(rid, timeout_s=60).average["w"].numpy()


def test_a_party_that_has_not_opted_in_refuses_verify_norm(mixed: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(mixed.config) as coord:
        with pytest.raises(TrustError, match="party 2 refuses verify_norm"):
            coord.open_round(round_id, shapes={"w": (8,)}, min_clients=3, clip_norm=1.0, verify_norm=True)
        with SecureAggClient.from_config(mixed.config, "client-0", min_colluders=2) as c:  # even if consenting
            with pytest.raises(RoundStateError, match="party 2"):  # parties 0 and 1 opened it, 2 did not
                c.submit(round_id, {"w": np.zeros(8)})
        assert np.allclose(_honest_round(mixed, round_id + 100, coord), 1.0)  # the next honest round closes


def test_a_party_caps_reports_per_round(mixed: LocalDeployment, round_id: int) -> None:
    with Coordinator.from_config(mixed.config) as coord:
        coord.open_round(round_id, shapes={"w": (8,)}, min_clients=3)
        for i in range(3):
            with SecureAggClient.from_config(mixed.config, f"client-{i}") as c:
                c.submit(round_id, {"w": np.full(8, float(i))})
        with SecureAggClient.from_config(mixed.config, "client-4") as c:
            with pytest.raises(RoundStateError, match="is full"):
                c.submit(round_id, {"w": np.full(8, 100.0)})
        res = coord.close_round(round_id, timeout_s=60)
    assert res.clients == ("client-0", "client-1", "client-2") and np.allclose(res.average["w"].numpy(), 1.0)

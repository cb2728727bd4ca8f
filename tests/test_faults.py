"""Faults: a party killed with SIGKILL keeps every report it acknowledged; a round whose party is down
ends in a typed error with nothing revealed, and closes once the party is back."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.errors import AggregationTimeout, MpcAggError
from mpc_agg.store import RoundStore
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(300)


def test_kill9_keeps_acknowledged_reports_and_down_party_blocks_reveal(tmp_path: Path) -> None:
    with LocalDeployment(tmp_path / "dep", parties=3, clients=4, min_clients=3, dealer=False) as ld:
        with Coordinator.from_config(ld.config) as coord:
            coord.open_round(1, shapes={"w": (1000,)}, min_clients=3)
            ups = [np.full(1000, float(i + 1)) for i in range(4)]
            for i, u in enumerate(ups):
                with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                    c.submit(1, {"w": u})
            for victim in ("party-0", "party-2"):  # each holds dense shares and seeds (mpc_agg.sharing.dense_party)
                assert ld.stop_process(victim, signal.SIGKILL) == -signal.SIGKILL
            # a party is down: the close fails with a typed error within its timeout, nothing is revealed
            with pytest.raises(AggregationTimeout):
                coord.close_round(1, timeout_s=5)
            for i in (0, 2):
                assert not RoundStore(ld.deployment.party(i).state_dir).is_revealed(1)
            ld.start_party(0)
            ld.start_party(2)
            res = coord.close_round(1, timeout_s=60)  # recovered from disk: the full cohort
    assert res.clients == ("client-0", "client-1", "client-2", "client-3")
    assert np.allclose(res.average["w"].numpy(), 2.5)


def test_torn_report_is_never_counted(tmp_path: Path) -> None:
    from mpc_agg.spec import RoundSpec

    store = RoundStore(tmp_path)
    spec = RoundSpec.create(5, {"w": (4,)})
    rdir = store.create_round(spec)
    store.add_report(rdir, "aa" * 16, "client-0", b"\x01" * 32, "seed")
    store.add_report(rdir, "bb" * 16, "client-1", b"\x02" * 32, "seed")
    [loaded] = list(store.load())
    assert [r.report for r in loaded.reports] == ["aa" * 16, "bb" * 16] and not loaded.torn
    assert store.read_material(rdir, loaded.reports[1]) == b"\x02" * 32
    log = store.material_path(rdir)
    log.write_bytes(log.read_bytes()[:-5])  # a crash in the middle of the second append
    [loaded] = list(store.load())
    assert loaded.spec == spec and [r.report for r in loaded.reports] == ["aa" * 16] and loaded.torn
    data = bytearray(log.read_bytes())
    data[loaded.reports[0].offset + 3] ^= 0x01  # a flipped bit in the first record's material
    log.write_bytes(bytes(data))
    assert [r.report for r in next(iter(store.load())).reports] == []


def test_errors_stay_typed(tmp_path: Path) -> None:
    assert issubclass(AggregationTimeout, MpcAggError)

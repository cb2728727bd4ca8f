"""Operations: structured logs without share material, health output, and SIGTERM draining in-flight work."""

from __future__ import annotations

import base64
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.logs import parse
from mpc_agg.sharing import SEED_BYTES
from mpc_agg.store import RoundStore
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(240)


def wait_for_log(path: Path, needle: str, timeout_s: float) -> None:
    """Block until ``needle`` appears in the log at ``path`` (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def held_material(ld: LocalDeployment, round_id: int) -> list[bytes]:
    """Every seed and share the parties hold for ``round_id``, read back from their stores (mpc_agg.store)."""
    out = []
    for p in ld.deployment.parties:
        store = RoundStore(p.state_dir)
        for rnd in store.load():
            if rnd.spec.round_id == round_id:
                out.extend(store.read_material(rnd.dir, rep) for rep in rnd.reports)
    return out


def test_logs_are_one_event_per_line_with_ids_and_no_share_bytes(tmp_path: Path) -> None:
    with LocalDeployment(tmp_path / "dep", parties=3, clients=3, min_clients=3, dealer=False) as ld:
        with Coordinator.from_config(ld.config) as coord:
            coord.open_round(1, shapes={"w": (50,)}, min_clients=3)
            reports = []
            for i in range(3):
                with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                    reports.append(c.submit(1, {"w": np.full(50, 0.1 * (i + 1))}))
            material = held_material(ld, 1)  # before the close, which deletes it
            res = coord.close_round(1, timeout_s=60)
            health = coord.status()
        codes = ld.stop()
    assert sorted(res.report_ids) == sorted(reports) and set(codes.values()) == {0}
    for h in health:  # `mpc-agg status`: liveness figures next to the rounds
        assert h["rounds"]["1"] == {"reports": 3, "revealed": True}
        assert h["handled"] >= 5 and h["refused"] == 0 and h["peak_rss_bytes"] > 50 << 20 and h["uptime_s"] > 0
    seeds = [m for m in material if len(m) == SEED_BYTES]  # 2 per report, at the parties not dense for it
    shares = [m for m in material if len(m) != SEED_BYTES]  # the dense party's: an element per coordinate and weight
    assert len(seeds) == 6 and len(shares) == 3 and len(set(material)) == 9 and all(len(m) >= 4 * 51 for m in shares)
    secrets = [s.hex() for s in seeds] + [base64.b64encode(s).decode() for s in seeds]
    secrets += [m[i:i + 8].hex() for m in shares for i in range(0, len(m) - 7, 8)]  # all of every share
    for i in range(3):
        lines = (ld.log_dir / f"party-{i}.log").read_text().splitlines()
        events = [parse(line) for line in lines if line.strip()]
        assert events and all({"ts", "level", "logger", "event"} <= e.keys() for e in events), lines
        logged = {e["report"] for e in events if e["event"] == "report"}
        assert logged == set(reports)  # every report id, once per party
        text = "\n".join(lines)
        assert not any(s in text for s in secrets)  # never a seed or share bytes
        assert {"start", "open", "close_start", "reveal", "drained", "stop"} <= {e["event"] for e in events}


def test_sigterm_drains_an_in_flight_close(tmp_path: Path) -> None:
    """SIGTERM during the parties' close protocol: the close completes, the coordinator gets the average,
    and the parties then exit 0."""
    with LocalDeployment(tmp_path / "dep", parties=3, clients=3, min_clients=3, dealer=False) as ld:
        with Coordinator.from_config(ld.config) as coord:
            coord.open_round(1, shapes={"w": (1000,)}, min_clients=3)
            for i in range(3):
                with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                    c.submit(1, {"w": np.full(1000, float(i))})
            helper = ld.procs["party-2"]
            helper.send_signal(signal.SIGSTOP)  # party 2 cannot answer: the others wait inside close
            result: list[Any] = []
            t = threading.Thread(target=lambda: result.append(coord.close_round(1, timeout_s=90)), daemon=True)
            try:
                t.start()
                for i in (0, 1):
                    wait_for_log(ld.log_dir / f"party-{i}.log", "event=close_start party=%d round=1" % i, 60)
                for i in (0, 1):
                    ld.procs[f"party-{i}"].send_signal(signal.SIGTERM)
            finally:
                helper.send_signal(signal.SIGCONT)
            t.join(90)
            assert not t.is_alive() and result, "the close did not complete"
            assert [ld.procs[f"party-{i}"].wait(30) for i in (0, 1)] == [0, 0]
    assert result[0].clients == ("client-0", "client-1", "client-2")
    assert np.allclose(result[0].average["w"].numpy(), 1.0)
    for i in (0, 1):
        names = [parse(x).get("event") for x in (ld.log_dir / f"party-{i}.log").read_text().splitlines()]
        assert names.index("reveal") < names.index("drained") < names.index("stop")

"""Load test: many clients through a bounded pool into one secure round, none lost (benchmarks.load).

``MPC_AGG_LOAD_CLIENTS`` overrides the client count (default 150), e.g. 1000 for the full load run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.load import one_client, run_load
from mpc_agg.config import Deployment

CLIENTS = int(os.environ.get("MPC_AGG_LOAD_CLIENTS", "150"))
DIM, PARTIES, WORKERS = 2000, 3, 8


@pytest.mark.timeout(120 + CLIENTS // 2)
def test_every_client_counted_once_with_the_right_average(tmp_path: Path) -> None:
    rep = run_load(CLIENTS, DIM, PARTIES, WORKERS, tmp_path, timeout_s=60 + CLIENTS / 2)
    assert rep["failures"] == [] and rep["close_error"] is None
    assert rep["lost"] == [] and rep["duplicates"] == [] and rep["unexpected"] == []
    assert rep["accepted"] == CLIENTS and rep["report_ids"] == CLIENTS
    assert rep["total_weight"] == pytest.approx(CLIENTS, abs=1e-6)
    assert rep["max_abs_error"] <= rep["tolerance"] == 2.0 ** -rep["params"]["frac_bits"]
    assert rep["ok"]
    assert rep["throughput_per_s"] > 0 and len(rep["party_peak_rss_bytes"]) == PARTIES
    assert 0 < rep["submit_latency_s"]["median"] <= rep["submit_latency_s"]["p95"] <= rep["submit_latency_s"]["max"]


@pytest.mark.timeout(120)
def test_a_failing_client_fails_the_run(tmp_path: Path) -> None:
    def flaky(dep: Deployment, client_id: str, update: npt.NDArray[np.float64], timeout_s: float
              ) -> tuple[float, float]:
        if client_id == "client-2":
            raise RuntimeError("injected")
        return one_client(dep, client_id, update, timeout_s)

    rep = run_load(5, 100, 2, 2, tmp_path, timeout_s=30, client=flaky)
    assert not rep["ok"]
    assert rep["failures"] == [{"client": "client-2", "error": "RuntimeError: injected"}]
    assert rep["close_error"] is not None  # the cohort floor is all 5 clients: the parties refuse to reveal
    assert rep["lost"] == [f"client-{i}" for i in range(5)]

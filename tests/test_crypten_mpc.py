"""CrypTen's own arithmetic across 3 processes over the ZeroMQ communicator, with the dealer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(240)
WORKER = Path(__file__).with_name("crypten_worker.py")


def test_add_multiply_compare_reveal_across_three_processes(tmp_path: Path) -> None:
    ld = LocalDeployment(tmp_path / "dep", parties=3, clients=0, dealer=True)
    ld.start_dealer()
    try:
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(ld.config), str(r), str(tmp_path / f"{r}.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(3)]
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0, out.decode()[-3000:]
    finally:
        ld.stop()
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)]
    sys.path.insert(0, str(WORKER.parent))
    from crypten_worker import inputs

    a, b = (t.tolist() for t in inputs())
    for res in results:
        assert res["provider"] == "DEALER"
        assert res["add"] == pytest.approx([x + y for x, y in zip(a, b)], abs=1e-4)
        # products are truncated back to 16 fractional bits: error a few ulps, never CrypTen's 1.0 decode slip
        assert res["mul"] == pytest.approx([x * y for x, y in zip(a, b)], abs=1e-3)
        assert res["square"] == pytest.approx([x * x for x in a], abs=1e-3)
        assert res["lt"] == [float(x < y) for x, y in zip(a, b)]
        assert res["bytes"] > 0


def test_tfp_provider_is_never_the_default() -> None:
    from mpc_agg.crypten_glue import import_crypten

    crypten = import_crypten()
    assert crypten.cfg.mpc.provider != "TFP"

"""``python -m benchmarks.flower_secagg``: a real tiny run, and the clean skip when flwr is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)


def test_skip_message_without_flower(tmp_path: Path) -> None:
    """With flwr unimportable (forced) the script exits 0 with the install hint."""
    out_json = tmp_path / "skip.json"
    code = ("import sys, benchmarks.flower_secagg as m; "
            f"sys.exit(m.main(['--clients', '3', '--dim', '100', '--repeat', '1', '--json', {str(out_json)!r}], "
            "missing_reason=lambda: 'flwr is not importable'))")
    proc = _run([sys.executable, "-c", code], 120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped" in proc.stdout and "make install" in proc.stdout, proc.stdout
    rep = json.loads(out_json.read_text())
    assert rep["status"] == "skipped" and "make install" in rep["reason"]
    assert rep["params"] == {"clients": 3, "dim": 100, "repeat": 1}


def test_flower_secagg_tiny_real_run(tmp_path: Path) -> None:
    out_json = tmp_path / "flower.json"
    proc = _run([sys.executable, "-m", "benchmarks.flower_secagg", "--clients", "3", "--dim", "1000",
                 "--repeat", "1", "--timeout", "60", "--json", str(out_json)], 280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out_json.read_text())
    assert rep["status"] == "ok" and rep["params"]["clients"] == 3 and rep["params"]["dim"] == 1000
    for key in ("flower_secagg_round_s", "flower_plain_round_s", "flower_mpc_agg_adapter_round_s",
                "mpc_agg_secure_round_s", "mpc_agg_plaintext_round_s", "ratio_flower_secagg_over_mpc_agg_secure",
                "ratio_flower_secagg_over_adapter"):
        assert rep[key] > 0, key
    assert rep["max_abs_error"]["flower_secagg"] <= 2 * 8.0 / 2**22 + 8.0 * 2.0**-23  # the aggregate was checked
    assert rep["max_abs_error"]["flower_mpc_agg_adapter"] <= 1e-6
    for label in ("Flower SecAgg+", "Flower + mpc-agg (adapter)", "mpc-agg secure"):
        assert label in proc.stdout, label

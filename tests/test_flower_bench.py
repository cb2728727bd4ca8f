"""``python -m benchmarks.flower_secagg``: skipped cleanly without flwr, a real tiny run with it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAVE_FLOWER = all(importlib.util.find_spec(m) is not None for m in ("flwr", "ray"))
pytestmark = pytest.mark.timeout(300)


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)


def _assert_skipped(proc: subprocess.CompletedProcess[str], out_json: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped" in proc.stdout and "pip install -e .[bench]" in proc.stdout, proc.stdout
    rep = json.loads(out_json.read_text())
    assert rep["status"] == "skipped" and "pip install -e .[bench]" in rep["reason"]
    assert rep["params"] == {"clients": 3, "dim": 100, "repeat": 1}


def test_skip_message_without_flower(tmp_path: Path) -> None:
    """Whatever this interpreter has, the skip path (forced) exits 0 with the install hint."""
    out_json = tmp_path / "skip.json"
    code = ("import sys, benchmarks.flower_secagg as m; m.flower_missing = lambda: 'flwr is not importable'; "
            f"sys.exit(m.main(['--clients', '3', '--dim', '100', '--repeat', '1', '--json', {str(out_json)!r}]))")
    _assert_skipped(_run([sys.executable, "-c", code], 120), out_json)


@pytest.mark.skipif(HAVE_FLOWER, reason="flwr[simulation] is installed: the real path is tested instead")
def test_module_skips_when_flower_is_absent(tmp_path: Path) -> None:
    out_json = tmp_path / "skip.json"
    proc = _run([sys.executable, "-m", "benchmarks.flower_secagg", "--clients", "3", "--dim", "100",
                 "--repeat", "1", "--json", str(out_json)], 120)
    _assert_skipped(proc, out_json)


@pytest.mark.skipif(not HAVE_FLOWER, reason="needs flwr[simulation] (pip install -e .[bench])")
def test_flower_secagg_tiny_real_run(tmp_path: Path) -> None:
    out_json = tmp_path / "flower.json"
    proc = _run([sys.executable, "-m", "benchmarks.flower_secagg", "--clients", "3", "--dim", "1000",
                 "--repeat", "1", "--timeout", "60", "--json", str(out_json)], 280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out_json.read_text())
    assert rep["status"] == "ok" and rep["params"]["clients"] == 3 and rep["params"]["dim"] == 1000
    for key in ("flower_secagg_round_s", "flower_plain_round_s", "mpc_agg_secure_round_s",
                "mpc_agg_plaintext_round_s", "ratio_flower_secagg_over_mpc_agg_secure"):
        assert rep[key] > 0, key
    assert rep["max_abs_error"]["flower_secagg"] <= 2 * 8.0 / 2**22 + 8.0 * 2.0**-23  # the aggregate was checked
    assert "Flower SecAgg+" in proc.stdout and "mpc-agg secure" in proc.stdout

"""The benchmark scripts run from the repository root (never CrypTen's own top-level ``benchmarks``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def test_our_benchmarks_package_wins_from_the_repo_root() -> None:
    out = subprocess.run([sys.executable, "-c", "import benchmarks; print(benchmarks.__file__)"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert Path(out.stdout.strip()).resolve() == ROOT / "benchmarks" / "__init__.py"


def test_overhead_smoke(tmp_path: Path) -> None:
    out_json = tmp_path / "o.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", "--clients", "3", "--dim", "1000", "--parties", "2",
         "--repeat", "1", "--rss-clients", "3", "--json", str(out_json)],
        capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out_json.read_text())
    for key in ("secure_round_s", "plaintext_round_s", "ratio", "client_shard_ms", "upload_bytes_per_client",
                "party_peak_rss_bytes", "stages", "params"):
        assert key in res, key
    assert res["secure_round_s"] > 0 and res["plaintext_round_s"] > 0
    assert res["params"]["ring_bits"] == 32  # the stated bounds fit the compact ring
    assert 4 * 1000 + 8 <= res["upload_bytes_per_client"] < 4 * 1000 + 8 + 1024  # 32-bit shares, 64-bit weight
    assert res["params"]["dim"] == 1000 and res["party_peak_rss_bytes"] > 0
    # the honest baseline: plaintext clients upload float32 (4·d bytes and a small header), as FedAvg users do
    assert res["params"]["plaintext_dtype"] == "float32"
    assert 4 * 1000 < res["plaintext_upload_bytes_per_client"] < 4 * 1000 + 1024
    # the parties' own close figures, from RoundResult.party_stats (their SUM_SHARE replies)
    secure = res["stages"]["secure"]
    assert 0 < secure["close_party_agreement_s"] <= secure["close_s"] and secure["close_peer_bytes"] > 0


def test_large_and_client_profile_smoke(tmp_path: Path) -> None:
    """The 1e8 script's path (chunked uploads, checked average) and the per-stage client profile, tiny."""
    large, prof = tmp_path / "large.json", tmp_path / "prof.json"
    for args in (["benchmarks.large", "--dim", "3000", "--clients", "2", "--json", str(large)],
                 ["benchmarks.client_profile", "--dim", "3000", "--submits", "2", "--json", str(prof)]):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=80)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads(large.read_text())
    assert rep["ok"] and rep["max_abs_error"] <= rep["tolerance"] and len(rep["submit_s"]) == 2
    assert len(rep["party_peak_rss_bytes"]) == 3 and rep["sum_bytes"] == 8 * 3001
    rep = json.loads(prof.read_text())
    assert rep["client_thread_cpu_ms"] > 0
    assert set(rep["stages_ms"]) == {"fetch_spec", "clip", "encode", "leader_share", "seal"}
    assert rep["process_cpu_ms"] >= rep["client_thread_cpu_ms"]


def test_noise_benchmark_smoke(tmp_path: Path) -> None:
    out_json = tmp_path / "n.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.noise", "--dim", "1000", "--repeat", "1",
                           "--json", str(out_json)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out_json.read_text())["results"]
    assert set(res) == {"sigma_2^8", "sigma_2^12", "sigma_2^16"}
    assert all(r["exact_s"]["median"] > 0 and r["table_entries"] > 1000 for r in res.values())

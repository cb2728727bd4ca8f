"""`mpc-agg experiments`: the attacks on known inputs, and a smoke run through real party processes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mpc_agg.errors import ConfigError
from parties.experiments import PRESETS, run_experiments
from parties.experiments import attacks

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(30)
def test_a_delta_touching_known_rows_gives_precision_and_recall_one() -> None:
    delta = np.zeros((50, 8))
    delta[[3, 7, 41]] = np.random.default_rng(0).normal(size=(3, 8))
    guess = attacks.touched_rows(delta)
    assert guess == {3, 7, 41}
    assert attacks.set_precision_recall(guess, {3, 7, 41}) == (1.0, 1.0)
    assert attacks.set_precision_recall(guess, {3, 7, 41, 44}) == (1.0, 0.75)
    assert attacks.set_precision_recall(set(), {1}) == (0.0, 0.0)


@pytest.mark.timeout(30)
def test_an_aggregate_of_disjoint_clients_gives_each_client_its_share_of_the_rows() -> None:
    rng = np.random.default_rng(1)
    a, b = np.zeros((20, 4)), np.zeros((20, 4))
    a[[1, 2]] = rng.normal(size=(2, 4))
    b[[5, 6, 7]] = rng.normal(size=(3, 4))
    guess = attacks.touched_rows((a + b) / 2)  # all the server sees: the mean
    assert guess == {1, 2, 5, 6, 7}
    assert attacks.set_precision_recall(guess, {1, 2}) == (2 / 5, 1.0)
    assert attacks.set_precision_recall(guess, {5, 6, 7}) == (3 / 5, 1.0)
    assert attacks.mean_precision_recall([guess, guess], [{1, 2}, {5, 6, 7}]) == (pytest.approx(0.5), 1.0)


@pytest.mark.timeout(30)
def test_noise_threshold_rejects_pure_noise_and_keeps_strong_rows() -> None:
    rng = np.random.default_rng(2)
    sigma, width, rows = 0.01, 64, 5000
    noise = rng.normal(scale=sigma, size=(rows, width))
    thr = attacks.noise_row_threshold(sigma, width, rows)
    assert len(attacks.touched_rows(noise, thr)) <= 3  # fewer than one expected false positive, with slack
    noise[[10, 20]] += 10 * sigma  # rows whose norm is 10·sigma·8, far above the noise
    assert attacks.touched_rows(noise, thr) >= {10, 20}


@pytest.mark.timeout(30)
def test_roc_auc_and_tpr_at_low_fpr_by_hand() -> None:
    assert attacks.roc_auc([3, 4], [1, 2]) == 1.0
    assert attacks.roc_auc([1, 2], [3, 4]) == 0.0
    assert attacks.roc_auc([1, 1], [1, 1]) == 0.5
    assert attacks.roc_auc([0.8, 0.4], [0.5, 0.1]) == 0.75  # 3 of the 4 pairs ordered right
    assert attacks.roc_auc([2, 1], [1, 0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)  # one tie
    non = np.arange(100.0)  # 1% of 100: one non-member may score above the threshold (98)
    assert attacks.tpr_at_fpr([98.5, 99.5, 50.0], non, 0.01) == pytest.approx(2 / 3)
    assert attacks.tpr_at_fpr([30.0, 60.0, 10.0], non[:50], 0.01) == pytest.approx(1 / 3)  # 50: none may pass 49
    np.testing.assert_allclose(attacks.calibrated_scores([1.0, 2.0], [1.5, 1.0]), [0.5, -1.0])
    np.testing.assert_allclose(attacks.loss_scores([1.0, 2.0]), [-1.0, -2.0])
    with pytest.raises(ConfigError):
        attacks.calibrated_scores([1.0], [1.0, 2.0])
    with pytest.raises(ConfigError):
        attacks.roc_auc([], [1.0])


@pytest.mark.timeout(900)
def test_smoke_run_writes_the_report_and_secure_equals_plain(tmp_path: Path) -> None:
    report = run_experiments(PRESETS["smoke"], tmp_path / "out", say=lambda s: None)
    saved = json.loads((tmp_path / "out" / "experiments.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert {"ppl_seen", "ppl_unseen", "mia_auc", "mia_tpr_at_1pct_fpr"} <= set(saved["initial"])
    keys = {"setting", "seed", "ppl_seen", "ppl_unseen", "rounds_to_target", "seconds_to_target", "mia_auc",
            "mia_tpr_at_1pct_fpr", "token_precision", "token_recall", "epsilon", "delta", "noise_multiplier"}
    rows = saved["rows"]
    for row in rows:
        assert keys <= set(row), keys - set(row)
        assert row["ppl_seen"] > 1 and row["ppl_unseen"] > 1
        assert 0 <= row["mia_auc"] <= 1 and 0 <= row["mia_tpr_at_1pct_fpr"] <= 1
    by = {r["setting"]: r for r in rows}
    assert list(by) == ["centralised", "local-only", "fedavg-plain", "fedavg-secure", "secure-dp"]
    plain, secure = by["fedavg-plain"], by["fedavg-secure"]
    assert abs(secure["ppl_seen"] - plain["ppl_seen"]) <= 1e-3 * plain["ppl_seen"]
    assert abs(secure["ppl_unseen"] - plain["ppl_unseen"]) <= 1e-3 * plain["ppl_unseen"]
    assert by["centralised"]["ppl_seen"] < saved["initial"]["ppl_seen"]
    # a plaintext server sees each client's own rows: every guess is right
    assert plain["token_precision"] == 1.0 and 0 < plain["token_recall"] <= 1
    assert 0 < secure["token_precision"] <= 1
    dp = [r for r in rows if r["setting"] == "secure-dp"]
    assert sorted(r["noise_multiplier"] for r in dp) == sorted(PRESETS["smoke"].dp_noise_multipliers)
    for r in dp:
        assert r["epsilon"] > 0 and r["delta"] == PRESETS["smoke"].delta
    assert dp[0]["epsilon"] > dp[1]["epsilon"]  # less noise, more epsilon
    for r in rows:
        if r["setting"] != "secure-dp":
            assert r["epsilon"] is None and r["noise_multiplier"] is None
    table = (tmp_path / "out" / "experiments.md").read_text()
    for label in ("centralised", "local-only", "fedavg-plain", "fedavg-secure", "secure-dp (z=1)"):
        assert f"| {label} |" in table
    for png in ("experiments-curves.png", "experiments-attacks.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_bad_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("only one topic\n\nand a second paragraph\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "experiments.json").write_text('{"not": "a report"}')
    for args in (["--data", str(tmp_path / "missing")], ["--data", str(tmp_path)], ["--out", str(tmp_path / "mine")]):
        out = subprocess.run([sys.executable, "-m", "parties.cli", "experiments", "--smoke",
                              "--out", str(tmp_path / "o"), *args], capture_output=True, text=True, cwd=ROOT,
                             timeout=100)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and "error:" in out.stderr
    assert (tmp_path / "mine" / "experiments.json").read_text() == '{"not": "a report"}'
    with pytest.raises(ConfigError):
        replace(PRESETS["smoke"], dp_noise_multipliers=())


@pytest.mark.timeout(30)
def test_dp_noise_ratio_is_noise_norm_on_the_average_over_the_clip() -> None:
    from parties.demo.federated import dp_noise_ratio

    assert dp_noise_ratio(1.0, 10_000, 4) == 25.0  # z·sqrt(d)/n
    assert dp_noise_ratio(2.0, 30_650, 128) == pytest.approx(2 * 30_650**0.5 / 128)

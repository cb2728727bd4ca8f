"""The sweep of secure vs plaintext rounds over n, d, k and of party memory over n (benchmarks.sweep), tiny grid."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from benchmarks.sweep import main

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(180)
def test_quick_sweep_writes_every_point_and_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # check_repo: run from the repository root
    out_json, out_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert main(["--quick", "--json", str(out_json), "--png", str(out_png)]) == 0
    rep = json.loads(out_json.read_text())
    fixed = {"clients": 3, "dim": 1000, "parties": 2}
    for param, values in (("clients", [2, 3]), ("dim", [1000, 2000]), ("parties", [2, 3])):
        points = rep["time"][param]
        assert [p[param] for p in points] == values
        for p in points:
            assert {k: p[k] for k in fixed if k != param} == {k: v for k, v in fixed.items() if k != param}
            assert p["repeat"] == 1 and p["secure_round_s"] > 0 and p["plaintext_round_s"] > 0 and p["ratio"] > 0
            assert len(p["samples"]["secure_round_s"]) == 1 and len(p["party_peak_rss_bytes"]) == p["parties"]
    assert [(p["clients"], p["dim"], p["parties"]) for p in rep["rss"]] == [(2, 2000, 2), (3, 2000, 2)]
    for p in rep["rss"]:
        assert p["leader_peak_bytes"] > 0 and p["helper_peak_bytes"] > 0 and len(p["helpers_peak_bytes"]) == 1
    assert rep["params"]["timed_points"] == 4  # the fixed point (3, 1000, 2) is shared by all three grids
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(out_png).shape
    assert width > 500 and height > 500


@pytest.mark.parametrize("argv", [["--dims", "1000,abc"], ["--parties", "1,3"], ["--clients", "0"],
                                  ["--rss-dim", "1.5"], ["--fixed-parties", "1"], ["--repeat", "0"]])
def test_bad_flags_are_argparse_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err

"""A newcomer's mistakes: each gives one line and a non-zero exit, and nothing the user made is destroyed.

Also: a coordinator restarted mid-round closes the round, a revealed round cannot be opened again, and a
dealer that is down is named in the coordinator's error (not only in the parties' logs)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.config import Deployment, generate_deployment
from mpc_agg.errors import AggregationTimeout, AlreadyRevealedError, ConfigError, RoundStateError
from parties import Coordinator
from parties.launcher import LocalDeployment
from parties.demo.workdir import MARKER, check_report_path, claim_workdir, next_model_dir

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "parties.cli", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _one_line_error(proc: subprocess.Popen[str], *needles: str) -> str:
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 2, (proc.args, out, err)
    assert err.startswith("mpc-agg: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_cli_mistakes_are_one_line_and_touch_nothing(tmp_path: Path) -> None:
    dep = tmp_path / "dep"
    generate_deployment(dep, parties=3, clients=3, min_clients=3)
    (dep / "state" / "party-0").mkdir(parents=True)
    before = _tree(dep)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my work")
    busy = socket.socket()
    busy.bind(("127.0.0.1", int(Deployment.load(dep / "deployment.toml").party(1).client_endpoint.rsplit(":", 1)[1])))
    busy.listen()
    try:  # all at once: each is its own process
        procs = {
            "keygen again": _start(["keygen", "--out", str(dep)], tmp_path),
            "floor above clients": _start(["keygen", "--out", str(tmp_path / "d2"), "--clients", "2",
                                           "--min-clients", "5"], tmp_path),
            "config is a dir": _start(["party", "--config", str(dep), "--id", "0"], tmp_path),
            "port in use": _start(["party", "--config", str(dep / "deployment.toml"), "--id", "1"], tmp_path),
            "selftest over a deployment": _start(["selftest", "--workdir", str(dep)], tmp_path),
            "demo into a user dir": _start(["demo", "--workdir", str(user), "--report",
                                            str(tmp_path / "r.json")], tmp_path),
            "demo into the cwd": _start(["demo", "--workdir", ".", "--report", str(tmp_path / "r.json")], user),
        }
        _one_line_error(procs["keygen again"], "already holds a deployment", "--force")
        _one_line_error(procs["floor above clients"], "cohort floor of 5")
        _one_line_error(procs["config is a dir"], "is a directory")
        _one_line_error(procs["port in use"], "Address already in use")
        _one_line_error(procs["selftest over a deployment"], "already holds a deployment")
        _one_line_error(procs["demo into a user dir"], "not empty and was not made by the demo")
        _one_line_error(procs["demo into the cwd"], "not empty and was not made by the demo")
    finally:
        busy.close()
    assert _tree(dep) == before and (dep / "state" / "party-0").is_dir()
    assert _tree(user) == {"notes.txt": hashlib.sha256(b"my work").hexdigest()}
    assert not (tmp_path / "d2").exists() and not (tmp_path / "r.json").exists()
    # --force replaces the deployment and its stale party state, and nothing else
    (dep / "state" / "party-0" / "old-round").write_text("stale")
    (dep / "README-mine.txt").write_text("kept")
    proc = _start(["keygen", "--out", str(dep), "--force"], tmp_path)
    assert proc.communicate(timeout=60)[1] == "" and proc.returncode == 0
    after = _tree(dep)
    assert not (dep / "state" / "party-0").exists() and after["README-mine.txt"]
    assert after["keys/party-0.key"] != before["keys/party-0.key"]


def test_workdir_claims_only_what_it_marked(tmp_path: Path) -> None:
    work = tmp_path / "w"
    assert claim_workdir(work) == work and (work / MARKER).is_file()
    for name in ("deployment", "scratch", "global-final"):
        (work / name).mkdir()
        (work / name / "f").write_text(name)
    (work / "mine.txt").write_text("user file in a marked dir")
    with pytest.raises(ConfigError, match="scratch space"):
        claim_workdir(work, reads=[work / "scratch" / "model"])
    assert (work / "scratch" / "f").exists()  # the refusal came before any deletion
    claim_workdir(work, reads=[work / "global-final", None])
    assert sorted(p.name for p in work.iterdir()) == [MARKER, "global-final", "mine.txt"]
    assert next_model_dir(work) == work / "global-final-2"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not made by the demo"):
        claim_workdir(tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_workdir(tmp_path / "file")
    (tmp_path / "report.json").write_text(json.dumps({"config": {}, "rounds": []}))
    check_report_path(tmp_path / "report.json")  # an earlier demo report may be replaced
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ConfigError, match="not an earlier demo report"):
        check_report_path(tmp_path / "notes.json")
    (tmp_path / "plot.png").write_bytes(b"png")
    with pytest.raises(ConfigError, match="not overwriting"):
        check_report_path(tmp_path / "plot.json")


def _open_in_another_process(config: Path, round_id: int) -> None:
    code = textwrap.dedent(f"""
        from parties import Coordinator
        with Coordinator.from_config({str(config)!r}) as c:
            c.open_round({round_id}, shapes={{"w": (100,)}}, min_clients=3)
    """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, check=True, timeout=120)


def test_restarted_coordinator_closes_its_round_and_dealer_failure_is_named(tmp_path: Path) -> None:
    with LocalDeployment(tmp_path / "dep", parties=3, clients=3, min_clients=3, allow_verify_norm=True) as ld:
        _open_in_another_process(ld.config, 1)  # that coordinator process has exited
        for i in range(3):
            with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                c.submit(1, {"w": np.full(100, float(i))})
        with Coordinator.from_config(ld.config) as coord:  # a new process knows nothing of round 1
            res = coord.close_round(1, timeout_s=60)
            assert res.clients == ("client-0", "client-1", "client-2")
            assert np.allclose(res.average["w"].numpy(), 1.0)
            with pytest.raises(AlreadyRevealedError):
                coord.open_round(1, shapes={"w": (100,)}, min_clients=3)
            with pytest.raises(RoundStateError) as info:
                coord.close_round(7, timeout_s=30)
            assert str(info.value).startswith("party 0: round 7 is not open") and str(info.value).count("party") == 1
            # the dealer goes down: a verified round's close names it, before the coordinator gives up
            assert ld.stop_process("dealer") == 0
            coord.open_round(2, shapes={"w": (100,)}, min_clients=3, clip_norm=10.0, verify_norm=True)
            for i in range(3):
                with SecureAggClient.from_config(ld.config, f"client-{i}", min_colluders=2) as c:
                    c.submit(2, {"w": np.full(100, 0.1)})
            with pytest.raises(AggregationTimeout, match="the dealer sent no tuples .* `mpc-agg dealer` running"):
                coord.close_round(2, timeout_s=8)

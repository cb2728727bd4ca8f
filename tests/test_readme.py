"""Every code block in README.md runs as written.

The command-line block runs against real processes (its `dealer` and `party` lines in the background,
`party` once per party id as its comment says), then the Python API block runs against those parties and
must print what its comments say.  `make` blocks are checked with `make -n` (each is minutes of work:
the demo itself is covered by tests/test_federated.py); `text` blocks are sample output."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpc_agg.config import Deployment

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "parties.cli"]


def readme_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block in README.md."""
    return re.findall(r"^```(\w*)\n(.*?)^```", (ROOT / "README.md").read_text("utf-8"), flags=re.S | re.M)


def _commands(body: str) -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in body.splitlines() if line.strip()]


def _wait_started(log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and "event=start" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"never started: {log.read_text(errors='replace') if log.exists() else 'no log'}")


def _run_cli_block(body: str, cwd: Path, background: dict[str, subprocess.Popen[bytes]]) -> dict[str, str]:
    """Run the block's `mpc-agg` lines in order; returns the stdout of each foreground subcommand."""
    outputs: dict[str, str] = {}
    for cmd in _commands(body):
        assert cmd[0] == "mpc-agg", cmd
        sub, args = cmd[1], cmd[2:]
        if sub in ("dealer", "party"):
            cfg = Deployment.load(cwd / args[args.index("--config") + 1])
            ids = [str(p.id) for p in cfg.parties] if sub == "party" else [""]
            for i in ids:
                argv = [*args[:args.index("--id") + 1], i] if sub == "party" else args
                log = cwd / f"{sub}{i}.log"
                with open(log, "wb") as f:
                    background[f"{sub}{i}"] = subprocess.Popen([*CLI, sub, *argv], cwd=cwd, env=ENV, stdout=f,
                                                               stderr=subprocess.STDOUT)
            continue
        for name in background:  # foreground commands need the processes started above
            _wait_started(cwd / f"{name}.log")
        out = subprocess.run([*CLI, sub, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=150)
        assert out.returncode == 0, (cmd, out.stdout, out.stderr)
        outputs[sub] = out.stdout
    return outputs


def _run_python_block(body: str, cwd: Path) -> None:
    out = subprocess.run([sys.executable, "-c", body], cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=150)
    assert out.returncode == 0, out.stderr
    expected = [line.split("#", 1)[1].split(" — ")[0].strip() for line in body.splitlines()
                if line.strip().startswith("print(")]
    assert out.stdout.splitlines() == expected


def test_every_readme_block_runs_as_written(tmp_path: Path) -> None:
    blocks = readme_blocks()
    kinds = {lang for lang, _ in blocks}
    assert kinds <= {"sh", "python", "text"}, kinds  # a new kind of block needs a way to run it here
    # "Use with Flower": its blocks need Flower's engine; they are compiled here, and the same lines run in
    # tests/test_flower_adapter.py through examples/flower
    flower = [(lang, b) for lang, b in blocks if "flwr" in b]
    for lang, body in flower:
        if lang == "python":
            compile(body, "README.md (Flower)", "exec")
    blocks = [blk for blk in blocks if blk not in flower]
    cli = [b for lang, b in blocks if lang == "sh" and b.lstrip().startswith("mpc-agg")]
    make = [b for lang, b in blocks if lang == "sh" and b.lstrip().startswith("make")]
    python = [b for lang, b in blocks if lang == "python"]
    assert len(flower) == 2 and all(lang in ("sh", "python") for lang, _ in flower), flower
    assert len(cli) == 1 and len(python) == 1 and len(make) + 2 == len(blocks) - sum(k == "text" for k, _ in blocks)
    for body in make:
        for cmd in _commands(body):
            assert cmd[0] == "make" and subprocess.run(["make", "-n", *cmd[1:]], cwd=ROOT, capture_output=True,
                                                       timeout=60).returncode == 0, cmd
    background: dict[str, subprocess.Popen[bytes]] = {}
    try:
        outputs = _run_cli_block(cli[0], tmp_path, background)
        assert len(json.loads(outputs["status"])) == 3 and "PASSED" in outputs["selftest"]
        _run_python_block(python[0], tmp_path)
    finally:
        codes = {}
        for name, proc in background.items():
            proc.send_signal(signal.SIGTERM)
        for name, proc in background.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(30)
    assert set(codes.values()) == {0}, codes

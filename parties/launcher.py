"""Start a whole deployment's party and dealer processes on this machine (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Callable, Sequence

from mpc_agg.config import Deployment, generate_deployment

__all__ = ["LocalDeployment"]


class LocalDeployment:
    """Keygen into ``workdir`` and run ``mpc-agg party`` × k (+ dealer) as real processes."""

    def __init__(self, workdir: str | os.PathLike[str], *, parties: int = 3, clients: int = 3,
                 min_clients: int = 3, dealer: bool = True, log_dir: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None, hosts: Sequence[str] | None = None,
                 party_prefix: Callable[[int], Sequence[str]] | None = None,
                 allow_verify_norm: bool = False) -> None:
        """``hosts``: one address per party (default loopback); ``party_prefix(i)``: argv that wraps
        party i's command, e.g. ``["ip", "netns", "exec", "ns-i"]`` to run it in its own network namespace;
        ``allow_verify_norm``: every party consents to verify_norm rounds (mpc_agg.trust)."""
        self.workdir = Path(workdir)
        self.config = generate_deployment(self.workdir, parties=parties, clients=clients,
                                          min_clients=min_clients, with_dealer=dealer, hosts=hosts,
                                          allow_verify_norm=allow_verify_norm)
        self.party_prefix = party_prefix
        self.deployment = Deployment.load(self.config)
        self.log_dir = Path(log_dir) if log_dir else self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.dealer = dealer
        # k parties and the dealer share this machine's cores: one BLAS/OpenMP thread each, unless the
        # caller says otherwise (oversubscribed BLAS threads doubled the verified close here)
        single = {v: "1" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        self.env = {**single, **os.environ, **(env or {})}

    def _spawn(self, name: str, *args: str, prefix: Sequence[str] = ()) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "parties.cli", *args, "--config", str(self.config.resolve())],
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent, env=self.env,
        )
        log.close()

    def start_party(self, i: int) -> None:
        self._spawn(f"party-{i}", "party", "--id", str(i), prefix=self.party_prefix(i) if self.party_prefix else ())

    def start_dealer(self) -> None:
        self._spawn("dealer", "dealer")

    def start(self) -> "LocalDeployment":
        if self.dealer:
            self.start_dealer()
        for p in self.deployment.parties:
            self.start_party(p.id)
        return self

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        return proc.returncode

    def stop(self) -> dict[str, int | None]:
        return {name: self.stop_process(name) for name in list(self.procs)}

    def alive(self) -> dict[str, bool]:
        return {n: p.poll() is None for n, p in self.procs.items()}

    def __enter__(self) -> "LocalDeployment":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


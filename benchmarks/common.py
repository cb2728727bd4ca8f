"""What every benchmark script shares: the repository check, argument types, summaries, JSON output,
process memory and CPU, concurrent timing, and the logs of a failed deployment.

Pure helpers (no deployment of their own); the scripts in this package import them from here and
nowhere else.  Linux only where ``/proc`` is read (:func:`proc_status_bytes`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import psutil

__all__ = ["NAME", "REPO", "check_repo", "int_at_least", "positive_int", "count", "party_count", "positive_seconds",
           "stats", "mib", "write_json", "proc_status_bytes", "party_rss", "cpu_seconds", "cpu_delta",
           "run_concurrently", "print_log_tails", "logs_on_failure"]

NAME = "w"
"""The one tensor of every benchmark round, of shape (dim,)."""

REPO = Path(__file__).resolve().parent.parent


def check_repo(module: str) -> None:
    """Refuse to run unless this package and mpc_agg are the checkout in the current directory
    (CrypTen installs another top-level ``benchmarks`` package; see benchmarks/__init__.py)."""
    import mpc_agg

    cwd = Path.cwd().resolve()
    pkg = Path(mpc_agg.__file__).resolve().parent.parent
    if cwd != REPO or pkg != REPO:
        raise SystemExit(
            f"{module}: run `python -m {module}` from the mpc-agg repository root.\n"
            f"  this package: {Path(__file__).resolve().parent}\n  mpc_agg from: {pkg}\n  cwd:          {cwd}")
    print(f"{module}: {REPO / 'benchmarks' / (module.split('.')[-1] + '.py')} (repository {REPO})", flush=True)


# --- argument types (argparse ``type=``) ----------------------------------------------------

def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        v = _number(text, int)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return int(v)
    return parse


positive_int = int_at_least(1)
party_count = int_at_least(2)
"""A number of parties: an integer >= 2."""


def count(text: str) -> int:
    """A positive integer, also written like 1e6."""
    v = _number(text, float)
    if not v.is_integer() or v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(v)


def positive_seconds(text: str) -> float:
    """A duration in seconds, > 0."""
    v = _number(text, float)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return float(v)


# --- summaries and output ---------------------------------------------------------------------

def stats(xs: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a non-empty sample."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def write_json(path: Path | None, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented JSON to ``path`` (its folder created), if a path is given."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


# --- processes: memory, CPU, logs -----------------------------------------------------------

def proc_status_bytes(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (e.g. VmHWM, the peak resident set) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise RuntimeError(f"unexpected unit {unit!r} for {key} in /proc/{pid}/status")
            return int(value) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def party_rss(ld: Any) -> dict[str, list[int]]:
    """Each party process's peak (VmHWM) and current (VmRSS) resident set of a
    :class:`parties.launcher.LocalDeployment`, in bytes, in party order."""
    pids = [ld.procs[f"party-{p.id}"].pid for p in ld.deployment.parties]
    return {"peak": [proc_status_bytes(pid, "VmHWM") for pid in pids],
            "current": [proc_status_bytes(pid, "VmRSS") for pid in pids]}


def cpu_seconds(procs: Mapping[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process (clients and coordinator) and by ``procs``."""
    out = {"clients+coordinator": time.process_time()}
    for name, proc in procs.items():
        t = proc.cpu_times()
        out[name] = t.user + t.system
    return out


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def print_log_tails(log_dir: Path, lines: int = 15) -> None:
    """Print the end of every process log (for a failed run)."""
    for log in sorted(log_dir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {log} (last {len(tail)} lines)", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


@contextmanager
def logs_on_failure(log_dir: Path) -> Iterator[None]:
    """Print the tails of the deployment's logs if the block raises (then re-raise)."""
    try:
        yield
    except BaseException:
        print_log_tails(log_dir)
        raise


# --- timing -----------------------------------------------------------------------------------

def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_concurrently(pool: ThreadPoolExecutor, calls: Sequence[Callable[[], object]],
                     timeout_s: float) -> tuple[float, tuple[float, ...]]:
    """Run ``calls`` on ``pool`` at once: (wall seconds, each call's seconds); errors re-raised."""
    t0 = time.perf_counter()
    futures = [pool.submit(_timed, c) for c in calls]
    _, pending = wait(futures, timeout=timeout_s)
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(futures)} client uploads did not finish in {timeout_s:.0f} s")
    durations = tuple(f.result() for f in futures)
    return time.perf_counter() - t0, durations

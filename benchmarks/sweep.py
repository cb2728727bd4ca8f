"""Sweep of the secure round against plaintext FedAvg over n, d and k, and of party memory over n.

Run from the repository root (``benchmarks`` is never installed; see benchmarks/__init__.py)::

    python -m benchmarks.sweep --json bench-out/sweep.json --png bench-out/sweep.png

Every timed point is :func:`benchmarks.rounds.run_main` on a fresh deployment
(k parties + dealer + the float32 plaintext server, one untimed warm-up round of each
kind, then ``--repeat`` alternating secure/plaintext rounds, n concurrent
client threads; both averages checked against the numpy mean).  Grids, each
holding the other two parameters at the fixed point (default n=10, d=1e6, k=3):

* time against n (``--clients``, default 2,5,10,20,50),
* time against d (``--dims``, default 1e4,1e5,1e6,1e7),
* time against k (``--parties``, default 2,3,5);

a point shared by several grids runs once.  Party memory against n
(``--rss-clients`` at ``--rss-dim``, default d=1e7, k fixed) is
:func:`benchmarks.rounds.run_rss`: one secure round on a fresh deployment,
then each party's peak RSS (VmHWM; the leader, party 0, holds the int64
share vectors, the helpers only seeds).  The JSON holds every point with its
medians, samples and parameters; the PNG has four panels (time against n, d
(log-log) and k with the secure/plaintext ratio on a second axis, and peak
RSS against n for the leader and the helpers).

``--quick`` is a smoke-test grid (n 2,3; d 1000,2000; k 2,3; RSS n 2,3 at d=2000;
fixed n=3, d=1000, k=2; one repeat); explicit flags override it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpc_agg.fixedpoint import DEFAULT_FRAC_BITS

from .common import check_repo, count, mib, party_count, positive_int, positive_seconds, stats, write_json
from .rounds import make_updates, run_main, run_rss

__all__ = ["main", "plot", "sweep"]

FULL: dict[str, Any] = {"clients": [2, 5, 10, 20, 50], "dims": [10_000, 100_000, 1_000_000, 10_000_000],
                        "parties": [2, 3, 5], "rss_clients": [2, 5, 10, 20, 50], "rss_dim": 10_000_000,
                        "fixed_clients": 10, "fixed_dim": 1_000_000, "fixed_parties": 3, "repeat": 3}
QUICK: dict[str, Any] = {"clients": [2, 3], "dims": [1000, 2000], "parties": [2, 3], "rss_clients": [2, 3],
                         "rss_dim": 2000, "fixed_clients": 3, "fixed_dim": 1000, "fixed_parties": 2, "repeat": 1}
GRIDS = (("clients", "clients"), ("dims", "dim"), ("parties", "parties"))
"""(grid flag, the point parameter it varies)"""


def time_point(workdir: Path, clients: int, dim: int, parties: int, repeat: int, timeout_s: float) -> dict[str, Any]:
    """One (n, d, k): medians of ``repeat`` secure and plaintext rounds on a fresh deployment."""
    m = run_main(workdir, make_updates(clients, dim, seed=0), parties, repeat, timeout_s)
    sec = [t.total_s for t in m.secure]
    pl = [t.total_s for t in m.plaintext]
    return {
        "clients": clients, "dim": dim, "parties": parties, "repeat": repeat,
        "secure_round_s": statistics.median(sec),
        "plaintext_round_s": statistics.median(pl),
        "ratio": statistics.median(s / p for s, p in zip(sec, pl)),
        "secure_uploads_s": statistics.median(t.uploads_s for t in m.secure),
        "secure_close_s": statistics.median(t.close_s for t in m.secure),
        "plaintext_uploads_s": statistics.median(t.uploads_s for t in m.plaintext),
        "plaintext_close_s": statistics.median(t.close_s for t in m.plaintext),
        "secure_round_stats": stats(sec),
        "plaintext_round_stats": stats(pl),
        "max_abs_error": m.max_abs_error,
        "party_peak_rss_bytes": m.rss["peak"],
        "samples": {"secure_round_s": sec, "plaintext_round_s": pl},
    }


def rss_point(workdir: Path, clients: int, dim: int, parties: int, timeout_s: float) -> dict[str, Any]:
    """Party peak RSS after one secure round of ``clients`` on a fresh deployment (party 0 is the leader)."""
    r = run_rss(workdir, clients, dim, parties, timeout_s)
    return {"clients": clients, "dim": dim, "parties": parties,
            "leader_peak_bytes": r["peak"][0], "helper_peak_bytes": max(r["peak"][1:]),
            "helpers_peak_bytes": r["peak"][1:], "peak_bytes": r["peak"], "idle_bytes": r["idle"],
            "current_bytes": r["current"]}


def _key(point: dict[str, int]) -> tuple[int, int, int]:
    return point["clients"], point["dim"], point["parties"]


def sweep(grids: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run every grid of ``grids`` (FULL's keys); returns the JSON report."""
    fixed = {"clients": grids["fixed_clients"], "dim": grids["fixed_dim"], "parties": grids["fixed_parties"]}
    wanted = {param: [_key({**fixed, param: v}) for v in grids[flag]] for flag, param in GRIDS}
    unique = list(dict.fromkeys(key for keys in wanted.values() for key in keys))
    total = len(unique) + len(grids["rss_clients"])
    done: dict[tuple[int, int, int], dict[str, Any]] = {}
    rss: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpc-agg-sweep-") as tmp:
        for i, (n, d, k) in enumerate(unique, 1):
            print(f"[{i}/{total}] time n={n} d={d:,} k={k} ({grids['repeat']} repeats)", flush=True)
            t0 = time.perf_counter()
            pt = done[(n, d, k)] = time_point(Path(tmp) / f"t-{n}-{d}-{k}", n, d, k, grids["repeat"], timeout_s)
            print(f"[{i}/{total}] time n={n} d={d:,} k={k}: secure {pt['secure_round_s']:.3f} s, plaintext "
                  f"{pt['plaintext_round_s']:.3f} s, ratio {pt['ratio']:.2f} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
        for i, n in enumerate(grids["rss_clients"], len(unique) + 1):
            d, k = grids["rss_dim"], grids["fixed_parties"]
            print(f"[{i}/{total}] RSS n={n} d={d:,} k={k}", flush=True)
            t0 = time.perf_counter()
            rp = rss_point(Path(tmp) / f"rss-{n}", n, d, k, timeout_s)
            rss.append(rp)
            print(f"[{i}/{total}] RSS n={n} d={d:,} k={k}: leader {mib(rp['leader_peak_bytes'])}, helpers "
                  f"{', '.join(mib(b) for b in rp['helpers_peak_bytes'])} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    return {
        "time": {param: [done[key] for key in keys] for param, keys in wanted.items()},
        "rss": rss,
        "seconds": time.perf_counter() - t_start,
        "params": {**grids, "fixed": fixed, "timeout_s": timeout_s, "frac_bits": DEFAULT_FRAC_BITS,
                   "timed_points": len(unique)},
    }


def plot(rep: dict[str, Any], png: Path) -> None:
    """Four panels: time against n, d (log-log) and k with the ratio on a twin axis; peak RSS against n."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = rep["params"]["fixed"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panels = (("clients", "clients n", ("dim", "parties")), ("dim", "values per update d", ("clients", "parties")),
              ("parties", "parties k", ("clients", "dim")))
    short = {"clients": "n", "dim": "d", "parties": "k"}
    for ax, (param, label, held) in zip(axes.flat, panels):
        pts = rep["time"][param]
        x = [p[param] for p in pts]
        lines = ax.plot(x, [p["secure_round_s"] for p in pts], "o-", label="secure round")
        lines += ax.plot(x, [p["plaintext_round_s"] for p in pts], "s-", label="plaintext FedAvg round (float32)")
        ax2 = ax.twinx()
        ratio = [p["ratio"] for p in pts]
        lines += ax2.plot(x, ratio, "^--", color="tab:gray", label="ratio secure / plaintext")
        ax2.set_ylabel("ratio secure / plaintext")
        ax2.set_ylim(0, 1.15 * max(ratio))
        if param == "dim":
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            ax.set_xticks(x)
            ax.set_ylim(bottom=0)
        ax.set_xlabel(label)
        ax.set_ylabel("round time, median (s)")
        ax.set_title(f"time vs {short[param]} ({', '.join(f'{short[h]}={fixed[h]:,}' for h in held)})")
        ax.grid(alpha=0.3)
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="best", framealpha=0.8)
    ax = axes[1, 1]
    if rep["rss"]:
        x = [p["clients"] for p in rep["rss"]]
        ax.plot(x, [p["leader_peak_bytes"] / 2**20 for p in rep["rss"]], "o-", label="leader (party 0)")
        ax.plot(x, [p["helper_peak_bytes"] / 2**20 for p in rep["rss"]], "s-", label="helpers (max)")
        ax.set_xticks(x)
        ax.set_title(f"party peak RSS vs n (d={rep['rss'][0]['dim']:,}, k={rep['rss'][0]['parties']})")
        ax.set_ylim(0, 1.1 * max(p["leader_peak_bytes"] / 2**20 for p in rep["rss"]) + 1)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("clients n")
    ax.set_ylabel("peak RSS (MiB)")
    ax.grid(alpha=0.3)
    fig.suptitle("mpc-agg: secure aggregation vs plaintext FedAvg (loopback, one machine)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _counts(text: str) -> list[int]:
    out = list(dict.fromkeys(count(t) for t in text.split(",") if t.strip()))  # in order, no repeats
    if not out:
        raise argparse.ArgumentTypeError("needs at least one value")
    return out


def _party_counts(text: str) -> list[int]:
    out = _counts(text)
    if min(out) < 2:
        raise argparse.ArgumentTypeError(f"party counts must be >= 2, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=_counts, help="n grid (default 2,5,10,20,50)")
    p.add_argument("--dims", type=_counts, help="d grid (default 1e4,1e5,1e6,1e7)")
    p.add_argument("--parties", type=_party_counts, help="k grid (default 2,3,5)")
    p.add_argument("--rss-clients", type=_counts, help="n grid of the memory runs (default 2,5,10,20,50)")
    p.add_argument("--rss-dim", type=count, help="d of the memory runs (default 1e7)")
    p.add_argument("--fixed-clients", type=positive_int, help="n held fixed in the d and k grids (default 10)")
    p.add_argument("--fixed-dim", type=count, help="d held fixed in the n and k grids (default 1e6)")
    p.add_argument("--fixed-parties", type=party_count,
                   help="k held fixed in the n and d grids and the memory runs (default 3)")
    p.add_argument("--repeat", type=positive_int, help="timed rounds of each kind per point (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test grid (see the module docstring)")
    p.add_argument("--timeout", type=positive_seconds, default=300.0, help="bound on every wait, in seconds")
    p.add_argument("--json", type=Path, default=Path("bench-out/sweep.json"))
    p.add_argument("--png", type=Path, default=Path("bench-out/sweep.png"))
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    grids = {key: base[key] if getattr(args, key) is None else getattr(args, key) for key in FULL}
    check_repo("benchmarks.sweep")
    rep = sweep(grids, args.timeout)
    rep["params"]["quick"] = args.quick
    write_json(args.json, rep)
    plot(rep, args.png)
    print(f"sweep done in {rep['seconds']:.0f} s ({rep['params']['timed_points']} timed points, "
          f"{len(rep['rss'])} memory runs); wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

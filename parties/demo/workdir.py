"""The demo's output paths: it deletes only what it created and marked, and never a saved model.

A work directory belongs to the demo once it holds the marker file ``MARKER``,
which the demo writes only into a directory that was missing or empty.  In a
marked directory a new run deletes only the entries in ``SCRATCH`` (the
previous run's deployment and working files); saved models (``global-final``,
``global-final-2``, ...) are never deleted or overwritten.  Every check runs
before anything is written, so a refused run leaves the file system as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from mpc_agg.errors import ConfigError

__all__ = ["MARKER", "SCRATCH", "claim_workdir", "check_report_path", "next_model_dir"]

MARKER = ".mpc-agg-demo"
SCRATCH = ("deployment", "scratch")
"""entries of a marked work directory that every run recreates (deployment: keys, party state and logs;
scratch: the initial model, per-round weights, plaintext-check deltas, the privacy ledger)"""


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def claim_workdir(workdir: str | os.PathLike[str], *, reads: Sequence[str | os.PathLike[str] | None] = ()) -> Path:
    """Make ``workdir`` the demo's own (create and mark it), or refuse with ConfigError before touching it.

    ``reads`` are the user's input paths (model, data): refused if a run would delete them."""
    work = Path(workdir).resolve()
    if work.exists() and not work.is_dir():
        raise ConfigError(f"--workdir {workdir} exists and is not a directory")
    marked = (work / MARKER).is_file()
    if work.exists() and not marked and any(work.iterdir()):
        raise ConfigError(f"--workdir {workdir} is not empty and was not made by the demo (no {MARKER} in it): "
                          "give a new or empty directory (output of an older mpc-agg demo: delete it yourself)")
    for r in reads:
        if r is None:
            continue
        rp = Path(r).resolve()
        if any(_inside(rp, work / s) for s in SCRATCH):
            raise ConfigError(f"{r} lies in the demo's scratch space ({work / rp.relative_to(work).parts[0]}), "
                              "which every run deletes: copy it elsewhere first")
    work.mkdir(parents=True, exist_ok=True)
    if not marked:
        (work / MARKER).write_text("made by `mpc-agg demo`: a new run replaces deployment/ and scratch/ here; "
                                   "saved models (global-final*) are kept\n")
    for s in SCRATCH:
        if (work / s).is_dir() and not (work / s).is_symlink():
            shutil.rmtree(work / s)
        elif (work / s).exists() or (work / s).is_symlink():
            (work / s).unlink()
    return Path(workdir)


def check_report_path(report: str | os.PathLike[str]) -> None:
    """Refuse a report path whose JSON or PNG would overwrite a file that is not an earlier demo report."""
    rp = Path(report)
    png = rp.with_suffix(".png")
    if rp.suffix == ".png":
        raise ConfigError(f"--report {report}: give a .json path (the plot is written beside it as .png)")
    if rp.exists():
        try:
            old = json.loads(rp.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            old = None
        if not (isinstance(old, dict) and {"config", "rounds"} <= old.keys()):
            raise ConfigError(f"--report {report} exists and is not an earlier demo report: not overwriting it")
    elif png.exists():
        raise ConfigError(f"{png} exists and no demo report lies beside it: not overwriting it")


def next_model_dir(work: Path) -> Path:
    """``work/global-final``, or the first free ``global-final-N``: a saved model is never overwritten."""
    for n in range(1, 10_000):
        p = work / ("global-final" if n == 1 else f"global-final-{n}")
        if not p.exists():
            return p
    raise ConfigError(f"{work} holds 10,000 saved models: move some away")

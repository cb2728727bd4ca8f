"""A party's durable state: round specs and acknowledged reports, crash-safe on disk.

Layout under a party's ``state_dir``::

    round-<id>/spec.json          the round's spec (written before OPEN is acknowledged)
    round-<id>/<report>.share     this party's share material (seed or int64 vector)
    round-<id>/reports.jsonl      one line per acknowledged report: id, client, SHA-256 of the material
    round-<id>/revealed           marker: the round's sum share was released (never again)

Every file is written to a temporary name, fsync'ed and renamed; the index line
is appended and fsync'ed before the party acknowledges the report.  So a report
a client saw acknowledged survives ``kill -9``; a torn write is never taken for
a report (its index line is missing or its checksum does not match).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .spec import RoundSpec

__all__ = ["StoredRound", "RoundStore"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class StoredRound:
    spec: RoundSpec
    dir: Path
    reports: tuple[tuple[str, str], ...]  # (report id hex, client id), in acknowledgement order
    revealed: bool
    skipped: int  # index lines whose material was missing or corrupt (never acknowledged)


class RoundStore:
    """Reads and writes one party's rounds under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def round_dir(self, round_id: int) -> Path:
        return self.root / f"round-{round_id}"

    def create_round(self, spec: RoundSpec) -> Path:
        rdir = self.round_dir(spec.round_id)
        rdir.mkdir(exist_ok=True)
        _write_atomic(rdir / "spec.json", json.dumps(spec.to_json()).encode())
        return rdir

    def add_report(self, rdir: Path, report_hex: str, client: str, material: bytes | memoryview) -> None:
        _write_atomic(rdir / f"{report_hex}.share", material)
        line = json.dumps({"report": report_hex, "client": client,
                           "sha256": hashlib.sha256(material).hexdigest()}) + "\n"
        with open(rdir / "reports.jsonl", "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def mark_revealed(self, rdir: Path, cohort: list[str]) -> None:
        _write_atomic(rdir / "revealed", json.dumps({"cohort": cohort}).encode())

    def drop_material(self, rdir: Path, reports: list[str]) -> None:
        for h in reports:
            (rdir / f"{h}.share").unlink(missing_ok=True)

    def is_revealed(self, round_id: int) -> bool:
        return (self.round_dir(round_id) / "revealed").exists()

    def load(self) -> Iterator[StoredRound]:
        """Every round on disk, with the reports whose material is intact."""
        for rdir in sorted(self.root.glob("round-*")):
            try:
                spec = RoundSpec.from_json(json.loads((rdir / "spec.json").read_text()))
            except (OSError, ValueError):
                continue  # a round whose OPEN was never acknowledged
            revealed = (rdir / "revealed").exists()
            reports, skipped = [], 0
            index = rdir / "reports.jsonl"
            lines = index.read_text().splitlines() if index.exists() else []
            for line in lines:
                try:
                    entry = json.loads(line)
                    h, client, digest = str(entry["report"]), str(entry["client"]), str(entry["sha256"])
                except (ValueError, KeyError, TypeError):
                    skipped += 1
                    continue
                path = rdir / f"{h}.share"
                if not revealed and (not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest):
                    skipped += 1
                    continue
                reports.append((h, client))
            yield StoredRound(spec, rdir, tuple(reports), revealed, skipped)

"""A party's durable state: round specs and acknowledged reports, crash-safe on disk.

Layout under a party's ``state_dir``::

    round-<id>/spec.json      the round's spec (written before OPEN is acknowledged)
    round-<id>/reports.log    append-only records, one per acknowledged report:
                              b"RPT1" | u32 header length | JSON header {report, client, len, sha256} | material
    round-<id>/revealed       marker: the round's sum share was released (never again)

``spec.json`` and ``revealed`` are written to a temporary name, fsync'ed and
renamed.  A report's record is appended and the log fsync'ed (one fsync, no
new directory entry) before the party acknowledges it.  So a report a client
saw acknowledged survives ``kill -9``; a torn tail (a crash mid-append) is
recognised by its length or checksum and never taken for a report.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .spec import RoundSpec

__all__ = ["StoredReport", "StoredRound", "RoundStore"]


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


RECORD_MAGIC = b"RPT1"
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class StoredReport:
    report: str
    client: str
    offset: int  # of the material in reports.log
    length: int


@dataclass(frozen=True)
class StoredRound:
    spec: RoundSpec
    dir: Path
    reports: tuple[StoredReport, ...]  # in acknowledgement order
    revealed: bool
    torn: bool  # the log ended in a partial record (a crash mid-append; never acknowledged)


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
        (rdir / "reports.log").touch()
        _write_atomic(rdir / "spec.json", json.dumps(spec.to_json()).encode())
        return rdir

    def add_report(self, rdir: Path, report_hex: str, client: str, material: bytes | memoryview) -> StoredReport:
        """Append and fsync one report's record; returns where its material lies."""
        length = memoryview(material).nbytes
        header = json.dumps({"report": report_hex, "client": client, "len": length,
                             "sha256": hashlib.sha256(material).hexdigest()}).encode()
        with open(rdir / "reports.log", "ab") as f:
            start = f.tell()
            f.write(RECORD_MAGIC + _LEN.pack(len(header)) + header)
            f.write(material)
            f.flush()
            os.fsync(f.fileno())
        return StoredReport(report_hex, client, start + 8 + len(header), length)

    @staticmethod
    def material_path(rdir: Path) -> Path:
        return rdir / "reports.log"

    def read_material(self, rdir: Path, rep: StoredReport) -> bytes:
        with open(rdir / "reports.log", "rb") as f:
            f.seek(rep.offset)
            return f.read(rep.length)

    def mark_revealed(self, rdir: Path, cohort: list[str]) -> None:
        _write_atomic(rdir / "revealed", json.dumps({"cohort": cohort}).encode())

    def drop_material(self, rdir: Path, reports: dict[str, str]) -> None:
        """After the reveal: keep only the report ids (the replay guard), not their shares."""
        ids = [{"report": h, "client": c} for h, c in reports.items()]
        _write_atomic(rdir / "revealed-reports.json", json.dumps(ids).encode())
        (rdir / "reports.log").unlink(missing_ok=True)

    def is_revealed(self, round_id: int) -> bool:
        return (self.round_dir(round_id) / "revealed").exists()

    @staticmethod
    def _records(path: Path) -> tuple[list[StoredReport], bool]:
        """Stream a report log: (intact records, whether a torn or corrupt tail followed them)."""
        out: list[StoredReport] = []
        if not path.exists():
            return out, False
        with open(path, "rb") as f:
            while True:
                pos = f.tell()
                head = f.read(8)
                if not head:
                    return out, False
                try:
                    if len(head) < 8 or head[:4] != RECORD_MAGIC:
                        raise ValueError("bad record start")
                    (hlen,) = _LEN.unpack_from(head, 4)
                    header = json.loads(f.read(hlen))
                    length, digest = int(header["len"]), hashlib.sha256()
                    start, left = pos + 8 + hlen, int(header["len"])
                    while left:
                        block = f.read(min(left, 1 << 20))
                        if not block:
                            raise ValueError("truncated material")
                        digest.update(block)
                        left -= len(block)
                    if digest.hexdigest() != header["sha256"]:
                        raise ValueError("checksum mismatch")
                    out.append(StoredReport(str(header["report"]), str(header["client"]), start, length))
                except (ValueError, KeyError, TypeError, struct.error):
                    return out, True

    def load(self) -> Iterator[StoredRound]:
        """Every round on disk, with the reports whose records are intact."""
        for rdir in sorted(self.root.glob("round-*")):
            try:
                spec = RoundSpec.from_json(json.loads((rdir / "spec.json").read_text()))
            except (OSError, ValueError):
                continue  # a round whose OPEN was never acknowledged
            if (rdir / "revealed").exists():
                try:
                    ids = json.loads((rdir / "revealed-reports.json").read_text())
                    reps = tuple(StoredReport(str(x["report"]), str(x["client"]), 0, 0) for x in ids)
                except (OSError, ValueError, KeyError, TypeError):
                    reps = tuple(self._records(rdir / "reports.log")[0])
                yield StoredRound(spec, rdir, reps, True, False)
                continue
            reps_list, torn = self._records(rdir / "reports.log")
            yield StoredRound(spec, rdir, tuple(reps_list), False, torn)

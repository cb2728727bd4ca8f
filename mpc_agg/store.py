"""A party's durable state: round specs and acknowledged reports, crash-safe on disk.

Layout under a party's ``state_dir``::

    round-<id>/spec.json      the round's spec (written before OPEN is acknowledged)
    round-<id>/reports.log    append-only records, one per acknowledged report:
                              b"RPT3" | u32 header length | JSON header {report, client, len} | material
                              | CRC-32 of the material (u32, written last)
    round-<id>/revealed       marker: the round's sum share was released (never again), with the
                              cohort and every report id; the log is deleted then

``spec.json`` and ``revealed`` are written to a temporary name, fsync'ed and
renamed.  A report's record may be appended in chunks (the leader receives its
share in chunks, one report at a time); its checksum is appended and the log
fsync'ed (no new directory entry; one fsync may cover several reports: group
commit) before the party acknowledges it.
So a report a client saw acknowledged survives ``kill -9``; a torn tail (a
crash, or a client gone mid-upload) is recognised by its length or checksum,
never taken for a report, and cut off when the round is loaded again.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .spec import RoundSpec

__all__ = ["StoredReport", "StoredRound", "RoundStore", "ReportWriter"]


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


RECORD_MAGIC = b"RPT3"
_LEN = struct.Struct(">I")
_CRC = struct.Struct(">I")


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

    def begin_report(self, rdir: Path, report_hex: str, client: str, length: int) -> "ReportWriter":
        """Start appending one report's record; its material follows in :meth:`ReportWriter.write` calls."""
        return ReportWriter(rdir / "reports.log", report_hex, client, length)

    def add_report(self, rdir: Path, report_hex: str, client: str, material: bytes | memoryview, *,
                   sync: bool = True) -> StoredReport:
        """Append (and fsync, unless ``sync=False``) one whole report's record; returns where its material lies."""
        w = self.begin_report(rdir, report_hex, client, memoryview(material).nbytes)
        w.write(material)
        return w.commit(sync=sync)

    def sync(self, rdir: Path) -> None:
        """fsync a round's log: every record sealed so far survives a crash (one fsync for many reports)."""
        fd = os.open(rdir / "reports.log", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def material_path(rdir: Path) -> Path:
        return rdir / "reports.log"

    def read_material(self, rdir: Path, rep: StoredReport) -> bytes:
        with open(rdir / "reports.log", "rb") as f:
            f.seek(rep.offset)
            return f.read(rep.length)

    def iter_material(self, rdir: Path, rep: StoredReport, block: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """(byte offset, bytes) blocks of a report's material, so a large share is never read whole."""
        with open(rdir / "reports.log", "rb") as f:
            f.seek(rep.offset)
            for pos in range(0, rep.length, block):
                yield pos, f.read(min(block, rep.length - pos))

    def mark_revealed(self, rdir: Path, cohort: list[str], reports: dict[str, str]) -> None:
        """Durably mark the round revealed (never again), keeping the cohort and every report id (the replay
        guard); then drop the share material."""
        ids = [{"report": h, "client": c} for h, c in reports.items()]
        _write_atomic(rdir / "revealed", json.dumps({"cohort": cohort, "reports": ids}).encode())
        (rdir / "reports.log").unlink(missing_ok=True)

    def is_revealed(self, round_id: int) -> bool:
        return (self.round_dir(round_id) / "revealed").exists()

    @staticmethod
    def _records(path: Path) -> tuple[list[StoredReport], int]:
        """Stream a report log: (intact records, byte length of the intact prefix)."""
        out: list[StoredReport] = []
        if not path.exists():
            return out, 0
        with open(path, "rb") as f:
            while True:
                pos = f.tell()
                head = f.read(8)
                if not head:
                    return out, pos
                try:
                    if len(head) < 8 or head[:4] != RECORD_MAGIC:
                        raise ValueError("bad record start")
                    (hlen,) = _LEN.unpack_from(head, 4)
                    header = json.loads(f.read(hlen))
                    length, crc = int(header["len"]), 0
                    start, left = pos + 8 + hlen, length
                    while left:
                        data = f.read(min(left, 1 << 20))
                        if not data:
                            raise ValueError("truncated material")
                        crc = zlib.crc32(data, crc)
                        left -= len(data)
                    if f.read(_CRC.size) != _CRC.pack(crc):
                        raise ValueError("checksum mismatch")
                    out.append(StoredReport(str(header["report"]), str(header["client"]), start, length))
                except (ValueError, KeyError, TypeError, struct.error):
                    return out, pos

    def load(self) -> Iterator[StoredRound]:
        """Every round on disk, with the reports whose records are intact."""
        for rdir in sorted(self.root.glob("round-*")):
            try:
                spec = RoundSpec.from_json(json.loads((rdir / "spec.json").read_text()))
            except (OSError, ValueError):
                continue  # a round whose OPEN was never acknowledged
            if (rdir / "revealed").exists():
                try:
                    ids = json.loads((rdir / "revealed").read_text())["reports"]
                    reps = tuple(StoredReport(str(x["report"]), str(x["client"]), 0, 0) for x in ids)
                except (OSError, ValueError, KeyError, TypeError):
                    reps = tuple(self._records(rdir / "reports.log")[0])
                yield StoredRound(spec, rdir, reps, True, False)
                continue
            log = rdir / "reports.log"
            reps_list, intact = self._records(log)
            torn = log.exists() and log.stat().st_size > intact
            if torn:  # cut the unacknowledged tail off, so that later appends stay readable
                with open(log, "r+b") as f:
                    f.truncate(intact)
                    os.fsync(f.fileno())
            yield StoredRound(spec, rdir, tuple(reps_list), False, torn)


class ReportWriter:
    """Appends one report's record: header now, material in order, checksum and fsync at :meth:`commit`.

    Only one writer per round log may be open at a time (the leader admits one upload at a time).
    """

    def __init__(self, path: Path, report_hex: str, client: str, length: int) -> None:
        header = json.dumps({"report": report_hex, "client": client, "len": length}).encode()
        self.report, self.client, self.length = report_hex, client, length
        self._f = open(path, "ab")
        self.start = self._f.tell()
        self._f.write(RECORD_MAGIC + _LEN.pack(len(header)) + header)
        self.offset = self.start + 8 + len(header)
        self.written = 0
        self._crc = 0

    def write(self, data: bytes | memoryview) -> None:
        n = memoryview(data).nbytes
        if self.written + n > self.length:
            raise ValueError("more material than the record announced")
        self._f.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self.written += n

    def commit(self, *, sync: bool = True) -> StoredReport:
        """Seal the record; with ``sync`` fsync the log too (else :meth:`RoundStore.sync` must run before
        the report is acknowledged).  Once synced the report survives a crash."""
        if self.written != self.length:
            raise ValueError("record is incomplete")
        self._f.write(_CRC.pack(self._crc))
        self._f.flush()
        if sync:
            os.fsync(self._f.fileno())
        self._f.close()
        return StoredReport(self.report, self.client, self.offset, self.length)

    def material(self) -> StoredReport:
        """Where the material written so far lies (for reading it back before an abort)."""
        self._f.flush()
        return StoredReport(self.report, self.client, self.offset, self.written)

    def abort(self) -> None:
        """Cut the unfinished record off the log (nothing of it was acknowledged)."""
        self._f.flush()
        self._f.truncate(self.start)
        self._f.close()

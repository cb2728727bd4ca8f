"""A party's durable state: round specs and acknowledged reports, crash-safe on disk.

Layout under a party's ``state_dir``::

    round-<id>/spec.json      the round's spec (written before OPEN is acknowledged)
    round-<id>/reports.log    records, one per report, each reserved whole when the report starts:
                              b"RPT4" | u32 header length | JSON header {report, client, len, kind} | material
                              | CRC-32 of the material (u32) | b"DONE" (the trailer, written last)
    round-<id>/revealed       marker: the round's sum share was released (never again), with the
                              cohort and every report id; the log is deleted then

``spec.json`` and ``revealed`` are written to a temporary name, fsync'ed and
renamed.  A report's record is reserved at the end of the log when its upload
starts (header written, the file extended by its length), so several uploads
can be written at once, each at its own offsets; the trailer is written and the
log fsync'ed (no new directory entry; one fsync may cover several reports: group
commit) before the party acknowledges it.  So a report a client saw
acknowledged survives ``kill -9``.  A record without its trailer (an upload
aborted, or in progress at a crash) is skipped when the log is read; a torn
tail (a crash while reserving) is cut off when the round is loaded again.

Everything is private to the party's user: directories 0700, files 0600,
whatever the umask; a state_dir that group or others can read is refused.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, MpcAggError
from .ring import chunk_nbytes
from .spec import RoundSpec

__all__ = ["KINDS", "StoredReport", "StoredRound", "RoundStore", "ReportWriter"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_file(path: Path, flags: int) -> int:
    """Open (creating) ``path`` with mode 0600 whatever the umask; returns the fd."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(_private_file(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


RECORD_MAGIC = b"RPT4"
_LEN = struct.Struct(">I")
_CRC = struct.Struct(">I")
_DONE = b"DONE"


KINDS = ("dense", "seed")
"""What a record's material is: a dense share vector in the round's wire layout (mpc_agg.ring: int64 values,
or int32 coordinates and an int64 weight in a 32-bit round) or a 32-byte seed."""


@dataclass(frozen=True)
class StoredReport:
    report: str
    client: str
    offset: int  # of the material in reports.log
    length: int
    kind: str | None = None
    """``"dense"`` or ``"seed"``, from the record's header (every record has one); None only in the
    list of a revealed round's reports, whose material is never read again."""


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
        if not root.exists():
            root.parent.mkdir(parents=True, exist_ok=True)
            _private_dir(root)
        if root.stat().st_mode & 0o077:
            raise ConfigError(f"state_dir {root} is accessible to group/others (mode "
                              f"{root.stat().st_mode & 0o777:o}); it holds shares: chmod 700 it")

    def round_dir(self, round_id: int) -> Path:
        return self.root / f"round-{round_id}"

    def create_round(self, spec: RoundSpec) -> Path:
        rdir = self.round_dir(spec.round_id)
        _private_dir(rdir)
        os.close(_private_file(rdir / "reports.log", os.O_WRONLY))
        _write_atomic(rdir / "spec.json", json.dumps(spec.to_json()).encode())
        return rdir

    def begin_report(self, rdir: Path, report_hex: str, client: str, length: int, kind: str) -> "ReportWriter":
        """Reserve one report's record (``kind`` in :data:`KINDS`) at the end of the log; its material
        follows in :meth:`ReportWriter.write` calls (several writers may be open at once)."""
        return ReportWriter(rdir / "reports.log", report_hex, client, length, kind)

    def add_report(self, rdir: Path, report_hex: str, client: str, material: bytes | memoryview, kind: str, *,
                   sync: bool = True) -> StoredReport:
        """Append (and fsync, unless ``sync=False``) one whole report's record; returns where its material lies."""
        w = self.begin_report(rdir, report_hex, client, memoryview(material).nbytes, kind)
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

    def iter_values(self, rdir: Path, rep: StoredReport, bits: int, dim: int,
                    values: int = 1 << 20) -> Iterator[tuple[int, int, bytes]]:
        """(first value, value count, bytes) blocks of a dense share as it was logged (mpc_agg.ring's wire
        layout: 4 bytes a coordinate in a 32-bit round), so a large share is never read whole.  A record cut
        short (an aborted upload's prefix: whole values, the weight only in a whole record) yields what it
        holds."""
        with open(rdir / "reports.log", "rb") as f:
            f.seek(rep.offset)
            pos = 0
            for start in range(0, dim + 1, values):
                count = min(values, dim + 1 - start)
                n = chunk_nbytes(bits, dim, start, count)
                if pos + n > rep.length:
                    count = (rep.length - pos) // (bits // 8)
                    n = chunk_nbytes(bits, dim, start, count)
                if count:
                    yield start, count, f.read(n)
                pos += n
                if pos >= rep.length:
                    return

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
        """Scan a report log: (committed records, byte length of the well-formed prefix).

        A record without its trailer (aborted, or unfinished at a crash) is skipped; scanning
        stops at the first record that does not fit in the file (a torn tail)."""
        out: list[StoredReport] = []
        if not path.exists():
            return out, 0
        size = path.stat().st_size
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
                    length, crc, kind = int(header["len"]), 0, header["kind"]
                    if kind not in KINDS:
                        raise ValueError("unknown record kind")
                    start = pos + 8 + hlen
                    trailer = _CRC.size + len(_DONE)
                    if start + length + trailer > size:
                        raise ValueError("record runs past the end of the log")
                    for at in range(0, length, 1 << 20):
                        crc = zlib.crc32(f.read(min(1 << 20, length - at)), crc)
                    tail = f.read(trailer)
                    if tail == _CRC.pack(crc) + _DONE:
                        out.append(StoredReport(str(header["report"]), str(header["client"]), start, length, kind))
                except (ValueError, KeyError, TypeError, struct.error):
                    return out, pos

    def load(self) -> Iterator[StoredRound]:
        """Every round on disk, with the reports whose records are intact."""
        for rdir in sorted(self.root.glob("round-*")):
            try:
                raw = json.loads((rdir / "spec.json").read_text())
            except (OSError, ValueError):
                continue  # a round whose OPEN was never acknowledged
            try:
                spec = RoundSpec.from_json(raw)
            except MpcAggError as exc:  # e.g. written by a build that speaks another protocol version
                raise ConfigError(f"{rdir}: cannot load this round ({exc}); a party keeps the state of one "
                                  "protocol version: move the state directory aside to start afresh") from None
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
    """Writes one report's reserved record: material in order, then the trailer at :meth:`commit`."""

    def __init__(self, path: Path, report_hex: str, client: str, length: int, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"a record is one of {KINDS}, not {kind!r}")
        header = json.dumps({"report": report_hex, "client": client, "len": length, "kind": kind}).encode()
        self.report, self.client, self.length, self.kind = report_hex, client, length, kind
        self._fd = _private_file(path, os.O_RDWR)
        self.start = os.lseek(self._fd, 0, os.SEEK_END)
        self.offset = self.start + 8 + len(header)
        self.end = self.offset + length + _CRC.size + len(_DONE)
        os.pwrite(self._fd, RECORD_MAGIC + _LEN.pack(len(header)) + header, self.start)
        os.ftruncate(self._fd, self.end)  # reserved (sparse); the zero trailer marks it unfinished
        self.written = 0
        self._crc = 0

    def write(self, data: bytes | memoryview) -> None:
        n = memoryview(data).nbytes
        if self.written + n > self.length:
            raise ValueError("more material than the record announced")
        os.pwrite(self._fd, data, self.offset + self.written)
        self._crc = zlib.crc32(data, self._crc)
        self.written += n

    def commit(self, *, sync: bool = True) -> StoredReport:
        """Write the trailer; with ``sync`` fsync the log too (else :meth:`RoundStore.sync` must run before
        the report is acknowledged).  Once synced the report survives a crash."""
        if self.written != self.length:
            raise ValueError("record is incomplete")
        os.pwrite(self._fd, _CRC.pack(self._crc) + _DONE, self.offset + self.length)
        if sync:
            os.fsync(self._fd)
        os.close(self._fd)
        return StoredReport(self.report, self.client, self.offset, self.length, self.kind)

    def material(self) -> StoredReport:
        """Where the material written so far lies (for reading it back before an abort)."""
        return StoredReport(self.report, self.client, self.offset, self.written, self.kind)

    def abort(self) -> None:
        """Leave the record unfinished (skipped when read); cut it off if nothing was reserved after it."""
        if os.fstat(self._fd).st_size == self.end:
            os.ftruncate(self._fd, self.start)
        os.close(self._fd)

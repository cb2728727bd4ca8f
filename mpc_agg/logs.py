"""Structured logs: one logfmt line per event (``ts=… level=… logger=… event=NAME key=value …``).

Call sites log through :func:`event`, which quotes values that need it, so
every line parses with :func:`parse` and a traceback never spans lines.
Fields carry ids, counts and timings, never share bytes, seeds or norms.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

__all__ = ["event", "parse", "LogfmtFormatter", "configure"]

_BARE = re.compile(r"[^\s=\"\\]+")
_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


MAX_FIELD_CHARS = 512
"""Longest value written to a log line; longer ones are cut (a peer cannot bloat the log)."""


def _value(v: Any, limit: int | None = MAX_FIELD_CHARS) -> str:
    if isinstance(v, float):
        v = f"{v:.6g}"
    s = str(v)
    if limit is not None and len(s) > limit:
        s = f"{s[:limit]}...({len(s)} chars)"
    if _BARE.fullmatch(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render(name: str, fields: dict[str, Any]) -> str:
    return " ".join([f"event={_value(name)}", *(f"{k}={_value(v)}" for k, v in fields.items())])


def event(logger: logging.Logger, name: str, level: int = logging.INFO, *, exc_info: bool = False,
          **fields: Any) -> None:
    """Log one event as ``event=name k=v …`` (fields in the order given)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", render(name, fields), exc_info=exc_info)


def parse(line: str) -> dict[str, str]:
    """The key/value pairs of one logfmt line (quoted values unescaped)."""
    out = {}
    for key, raw in _PAIR.findall(line):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], raw[1:-1])
        out[key] = raw
    return out


class LogfmtFormatter(logging.Formatter):
    """``ts=ISO8601 level=info logger=NAME <message>`` on one line; exceptions as a quoted ``exc`` field."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"
        msg = record.getMessage()
        if not msg.startswith("event="):  # a library's free-text message
            msg = f"event=message msg={_value(msg)}"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {msg}"
        if record.exc_info:
            line += f" exc={_value(self.formatException(record.exc_info), None)}"
        return line


def configure(level: int) -> None:
    """Send every log record to stderr as logfmt (the role processes' only log sink)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

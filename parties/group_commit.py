"""Group commit: a report is acknowledged only after an fsync that covers it, one fsync for many reports.

Sealed reports wait here with the token of their request (mpc_agg.service.ReplyTo);
:meth:`GroupCommit.flush` syncs every round log that has some and hands back the
acknowledgements to send (docs/PROTOCOL.md, "What is on disk").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpc_agg.service import ReplyTo
from mpc_agg.store import RoundStore

__all__ = ["GroupCommit"]


class GroupCommit:
    """Acknowledgements waiting for the next fsync of their round's log; at most ``max_group`` wait per log."""

    def __init__(self, store: RoundStore, max_group: int = 64) -> None:
        self.store, self.max_group = store, max_group
        self._waiting: dict[Path, list[tuple[ReplyTo, dict[str, Any]]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._waiting.values())

    def defer(self, rdir: Path, to: ReplyTo, meta: dict[str, Any]) -> None:
        """Acknowledge ``meta`` to ``to`` once the log in ``rdir`` has been synced."""
        self._waiting.setdefault(rdir, []).append((to, meta))

    def due(self, *, idle: bool) -> bool:
        """Sync now: nothing else is queued (``idle``), several logs wait, or one has ``max_group``."""
        if not self._waiting:
            return False
        return idle or len(self._waiting) > 1 or len(next(iter(self._waiting.values()))) >= self.max_group

    def flush(self) -> list[tuple[ReplyTo, dict[str, Any]]]:
        """fsync every log with waiting reports; return their acknowledgements, in arrival order per log."""
        waiting, self._waiting = self._waiting, {}
        acks = []
        for rdir, items in waiting.items():
            self.store.sync(rdir)
            acks += items
        return acks

"""The upload scheduler's limits, in-process with a fake clock (parties/uploads.py; SECURITY.md, "Hostile clients")."""

from __future__ import annotations

import pytest

from mpc_agg.errors import DuplicateReportError, RoundStateError
from parties.uploads import UploadLimits, UploadScheduler

pytestmark = pytest.mark.timeout(30)
MB = 1 << 20
LIMITS = UploadLimits(slots=2, idle_s=5.0, grace_s=10.0, min_rate=float(MB), max_queue_s=60.0, max_queued=3)


def _offer(s: UploadScheduler[str], client: str, now: float, *, size: int = 8 * MB, deadline: float = 1e9,
           report: str | None = None, round_id: int = 1):
    return s.offer(client, round_id, client, report or f"r-{client}", size, client_deadline=deadline, now=now)


def test_one_upload_per_client_whatever_the_report_id() -> None:
    s: UploadScheduler[str] = UploadScheduler(LIMITS)
    assert _offer(s, "a", 0.0) is not None
    with pytest.raises(DuplicateReportError):
        _offer(s, "a", 0.1, report="another")
    _offer(s, "b", 0.0)
    assert _offer(s, "c", 0.0) is None  # queued
    with pytest.raises(DuplicateReportError):
        _offer(s, "c", 0.2, report="third")  # one queued entry per client too
    with pytest.raises(DuplicateReportError):
        s.offer("d", 1, "d", "r-a", MB, client_deadline=1e9, now=0.3)  # a report id already in flight


def test_queue_is_bounded_and_fifo() -> None:
    s: UploadScheduler[str] = UploadScheduler(LIMITS)
    for c in "ab":
        _offer(s, c, 0.0)
    for c in "cde":
        assert _offer(s, c, 0.0) is None
    with pytest.raises(RoundStateError, match="queue is full"):
        _offer(s, "f", 0.0)
    s.finish(s.get("r-a"))
    admitted, gone = s.admit(1.0)
    assert [q.client for q, _ in admitted] == ["c"] and not gone


def test_a_stated_deadline_is_capped_by_the_party() -> None:
    s: UploadScheduler[str] = UploadScheduler(LIMITS)
    for c in "ab":
        _offer(s, c, 0.0)
    _offer(s, "c", 0.0, deadline=1e12)  # the client says it will wait for ages
    admitted, gone = s.admit(LIMITS.max_queue_s - 0.1)
    assert not admitted and not gone
    admitted, gone = s.admit(LIMITS.max_queue_s)
    assert [q.client for q in gone] == ["c"] and not s.busy("c")


def test_idle_and_slow_uploads_release_their_slots() -> None:
    s: UploadScheduler[str] = UploadScheduler(LIMITS)
    stall, drip = _offer(s, "stall", 0.0), _offer(s, "drip", 0.0)
    assert stall is not None and drip is not None
    now = 0.0
    dripped = []
    while now < 100:  # the dripper sends one 1 MiB chunk every 4.9 s: never idle, far below the rate
        now += 4.9
        if s.get("r-drip") is not None:
            s.progress(drip, MB // 8, now)
            dripped.append(now)
        for up, why in s.expired(now):
            assert (up.client, "no chunk" in why) in {("stall", True), ("drip", False)}
    assert not s.active
    budget = LIMITS.budget_s(8 * MB)  # grace + size / min_rate = 18 s
    assert max(dripped) <= budget + 4.9


def test_honest_clients_are_served_while_attackers_hold_their_slots() -> None:
    """With 3 slots and 2 misbehaving keys, an honest queue drains at the honest rate."""
    s: UploadScheduler[str] = UploadScheduler(UploadLimits(slots=3))
    _offer(s, "evil-1", 0.0)
    _offer(s, "evil-2", 0.0)
    served = []
    assert _offer(s, "honest-0", 0.0) is not None  # the third slot
    for i in range(1, 5):
        assert _offer(s, f"honest-{i}", 0.0) is None
    now = 0.0
    for _ in range(20):
        now += 0.1
        for up in [u for u in s.active.values() if u.client.startswith("honest")]:
            s.finish(up)  # an honest upload of a small share completes within 0.1 s
            served.append(up.client)
        s.admit(now)
        for u in s.active.values():
            if u.client.startswith("evil"):
                s.progress(u, 1, now)  # the attackers keep their uploads barely alive
    assert served == [f"honest-{i}" for i in range(5)] and now < 3


def test_closing_a_round_ends_its_uploads_and_queue_only() -> None:
    s: UploadScheduler[str] = UploadScheduler(LIMITS)
    _offer(s, "a", 0.0, round_id=1)
    _offer(s, "b", 0.0, round_id=2)
    _offer(s, "c", 0.0, round_id=1)
    _offer(s, "d", 0.0, round_id=2)
    ups, queued = s.drop_round(1)
    assert [u.client for u in ups] == ["a"] and [q.client for q in queued] == ["c"]
    admitted, _ = s.admit(0.5)
    assert [q.client for q, _ in admitted] == ["d"] and set(u.client for u in s.active.values()) == {"b", "d"}

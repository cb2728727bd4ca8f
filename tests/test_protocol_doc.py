"""docs/PROTOCOL.md keeps up with the code: every message type has a row in its message table, every field of
a request schema (mpc_agg.messages.REQUESTS) is in that type's row with the roles that may send it, every field
of a reply schema (REPLIES) in the reply type's row, every repository file it cites exists, and every section
of it that the code cites by title is there.  Pure text checks: no processes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpc_agg.messages import REPLIES, REQUESTS
from mpc_agg.wire import MAGIC, PROTOCOL_VERSION, MsgType

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PROTOCOL.md"
pytestmark = pytest.mark.timeout(30)


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def message_rows() -> dict[str, list[str]]:
    """The message table's rows by type name: the cells of each row whose first cell is "`NAME` (number)"."""
    rows: dict[str, list[str]] = {}
    for line in _section("Messages").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([A-Z_]+)` \(\d+\)", cells[0]) if line.startswith("|") else None
        if m:
            assert m[1] not in rows, f"two rows for {m[1]}"
            rows[m[1]] = cells
    return rows


def test_every_message_type_has_a_row_with_its_number() -> None:
    rows = message_rows()
    assert {name: cells[0] for name, cells in rows.items()} == {t.name: f"`{t.name}` ({t.value})" for t in MsgType}
    for name, cells in rows.items():
        assert len(cells) == 5 and all(cells), f"{name}: type, sender → receiver, fields, payloads, reply"


@pytest.mark.parametrize("mtype", sorted(REQUESTS, key=int), ids=lambda t: t.name)
def test_every_request_field_and_sender_role_is_in_its_row(mtype: MsgType) -> None:
    schema = REQUESTS[mtype]
    _, route, fields, _, _ = message_rows()[mtype.name]
    for name in schema.fields:
        assert f"`{name}`" in fields, f"{mtype.name}: field {name!r} is not documented"
    sender = route.split("→")[0]
    for role in schema.senders:
        assert role in sender, f"{mtype.name}: role {role!r} may send it, the doc does not say so"


@pytest.mark.parametrize("request_type", sorted(REPLIES, key=int), ids=lambda t: t.name)
def test_every_reply_field_is_in_the_reply_types_row(request_type: MsgType) -> None:
    reply_type, schema = REPLIES[request_type]
    rows = message_rows()
    assert f"`{reply_type.name}`" in rows[request_type.name][4], f"{request_type.name}: its reply is {reply_type.name}"
    fields = rows[reply_type.name][2]
    for name in schema.fields:
        assert f"`{name}`" in fields, f"{reply_type.name}: field {name!r} (reply to {request_type.name}) not documented"


def test_the_envelope_section_states_the_wire_constants() -> None:
    envelope = _section("The envelope")
    assert f"`{MAGIC.decode()}`" in envelope and f"version {PROTOCOL_VERSION}" in envelope


def test_every_cited_repository_file_exists() -> None:
    cited = set(re.findall(r"`((?:mpc_agg|parties|fl_client|tests)/[\w/]+\.py)`", DOC.read_text(encoding="utf-8")))
    assert cited, "the doc cites no code"
    missing = sorted(path for path in cited if not (ROOT / path).is_file())
    assert not missing, f"docs/PROTOCOL.md cites files that do not exist: {missing}"
    assert "DESIGN.md" not in DOC.read_text(encoding="utf-8")


def test_every_section_the_code_cites_exists() -> None:
    titles = set(re.findall(r"^## (.+)$", DOC.read_text(encoding="utf-8"), flags=re.M))
    cited: dict[str, set[str]] = {}
    for path in (p for pkg in ("mpc_agg", "parties", "fl_client", "benchmarks", "tests", "examples")
                 for p in (ROOT / pkg).rglob("*.py")):
        for title in re.findall(r'docs/PROTOCOL\.md,\s*"([^"]+)"', path.read_text(encoding="utf-8")):
            cited.setdefault(title, set()).add(str(path.relative_to(ROOT)))
    missing = {title: sorted(paths) for title, paths in cited.items() if title not in titles}
    assert not missing, f"sections cited in code but not in docs/PROTOCOL.md: {missing}"

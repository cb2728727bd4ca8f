"""The close's first exchange and its CrypTen session, in one process (docs/PROTOCOL.md, "Close"):
the status vector carries the report ids a party holds and refuses malformed input; a session
started without PRNG seeds (as a party's close is) refuses CrypTen's generators with a typed error,
and one started with them shares values as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from mpc_agg.crypten_glue import ZmqCommunicator, activate, deactivate, import_crypten
from mpc_agg.errors import CommunicatorError, WireError
from mpc_agg.spec import RoundSpec
from mpc_agg.transport import SecureContext
from parties.agreement import CloseStatus
from parties.running_sum import HeldRound

pytestmark = pytest.mark.timeout(60)
IDS = ("00" * 16, "ab" * 16, "ff" * 15 + "7f")


def held(tmp_path: Path, *, revealed: bool) -> HeldRound:
    spec = RoundSpec.create(1, {"w": (3,)}, min_clients=1, parties=3)
    return HeldRound(spec, spec.digest(), tmp_path, np.zeros(4, dtype=np.int64),
                     reports={h: f"c{j}" for j, h in enumerate(reversed(IDS))}, revealed=revealed)


def test_the_status_carries_the_held_report_ids_sorted(tmp_path: Path) -> None:
    st = held(tmp_path, revealed=False)
    mine = CloseStatus.of(st, floor=2, dealer=True)
    wire = mine.to_tensor()
    assert wire.dtype == torch.int64 and wire.numel() == 8 + 2 * len(IDS)
    back = CloseStatus.from_tensor(wire)
    assert back == mine and back.reports == tuple(sorted(IDS)) and back.digest == st.digest and back.floor == 2


def test_a_revealed_or_absent_round_sends_no_ids(tmp_path: Path) -> None:
    revealed = CloseStatus.of(held(tmp_path, revealed=True), floor=2, dealer=False)
    assert revealed.revealed and revealed.reports == () and revealed.to_tensor().numel() == 8
    absent = CloseStatus.of(None, floor=2, dealer=False)
    assert not absent.open and CloseStatus.from_tensor(absent.to_tensor()) == absent


@pytest.mark.parametrize("bad", [
    torch.zeros(7, dtype=torch.int64),                                 # short
    torch.zeros(9, dtype=torch.int64),                                 # half a report id
    torch.tensor([2, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int64),         # open is not 0/1
    torch.tensor([1, 0, -1, 0, 0, 0, 0, 0], dtype=torch.int64),        # negative floor
    torch.zeros(8, dtype=torch.float64),                               # not int64
], ids=["short", "odd", "flag", "floor", "dtype"])
def test_a_malformed_status_is_a_wire_error(bad: torch.Tensor) -> None:
    with pytest.raises(WireError):
        CloseStatus.from_tensor(bad)


def test_a_session_without_seeds_refuses_cryptens_generators() -> None:
    crypten = import_crypten()
    pub, sec = zmq.curve_keypair()
    with SecureContext() as sctx:
        comm = ZmqCommunicator(sctx, rank=0, endpoints=["tcp://127.0.0.1:*"], public_keys=[pub.decode()],
                               secret_key=sec.decode(), timeout_s=5)
        try:
            activate(comm, None, "no-seeds", prng=False)
            with pytest.raises(CommunicatorError, match="prng=True"):
                crypten.cryptensor(torch.tensor([1.5, -2.0]))
            activate(comm, None, "seeded", prng=True)
            x = crypten.cryptensor(torch.tensor([1.5, -2.0]))  # one party: its share is the encoded value
            assert x._tensor.share.tolist() == [int(1.5 * 2**16), -2 * 2**16]
        finally:
            deactivate()

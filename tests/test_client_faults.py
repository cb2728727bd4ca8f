"""Client faults: a connection cut in the middle of a report frame leaves no half-report, and a client that
reached only some parties is left out by every party (the cohort stays consistent).  The report's dense party
(any party: it rotates with the report id) drops the unfinished upload after ``UploadLimits.idle_s`` without a
chunk (parties/uploads.py); the other clients' uploads go on in the other slots meanwhile."""

from __future__ import annotations

import dataclasses
import select
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.errors import AggregationTimeout, RoundStateError
from mpc_agg.logs import parse
from mpc_agg.transport import SecureContext
from parties import Coordinator
from parties.launcher import LocalDeployment
from parties.party import Party
from rawupload import RawUpload

pytestmark = pytest.mark.timeout(180)


class CuttingProxy:
    """A one-connection TCP proxy on loopback that forwards until ``cut_after`` client bytes, then drops both
    sides, so the party sees a frame end half-way."""

    def __init__(self, target: tuple[str, int], cut_after: int) -> None:
        self.target, self.cut_after = target, cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarded = 0
        self.cut = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.listener.settimeout(30)
        try:
            a, _ = self.listener.accept()
        except TimeoutError:  # nobody came: a party the client never sent chunks to
            return
        finally:
            self.listener.close()  # one connection only: a reconnect finds nothing
        b = socket.create_connection(self.target, timeout=30)
        try:
            for _ in range(100_000):  # bounded
                ready, _, _ = select.select([a, b], [], [], 30)
                if not ready:
                    return
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is a:
                        data = data[: self.cut_after - self.forwarded]
                        self.forwarded += len(data)
                    (b if src is a else a).sendall(data)
                    if self.forwarded >= self.cut_after:
                        return
        finally:
            self.cut.set()
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            a.close()  # RST to the client
            b.close()  # FIN to the party, after every byte forwarded so far (an RST could drop unread ones)


def test_cut_mid_frame_leaves_no_half_report_and_cohort_stays_consistent(tmp_path: Path) -> None:
    dim = Party.chunk_values + 50_000  # the dense share comes in two chunks: the cut falls inside the second
    with LocalDeployment(tmp_path / "dep", parties=3, clients=4, min_clients=3, dealer=False) as ld:
        dep = ld.deployment
        proxies = []  # one per party's bulk endpoint: the client connects only to its report's dense party's
        for p in dep.parties:
            host, port = p.bulk_endpoint.removeprefix("tcp://").rsplit(":", 1)
            proxies.append(CuttingProxy((host, int(port)), cut_after=8 * Party.chunk_values + 200_000))
        via_proxy = dataclasses.replace(dep, parties=tuple(
            dataclasses.replace(p, bulk_endpoint=f"tcp://127.0.0.1:{x.port}") for p, x in zip(dep.parties, proxies)))
        with Coordinator(dep) as coord:
            coord.open_round(1, shapes={"w": (dim,)}, min_clients=3)
            with SecureAggClient(via_proxy, "client-0", timeout_s=5) as c:
                with pytest.raises(AggregationTimeout):
                    c.submit(1, {"w": np.full(dim, 100.0)})  # seeds arrive, the dense party gets half a frame
            [dense] = [i for i, x in enumerate(proxies) if x.cut.wait(30 if x.forwarded else 0)]
            proxy = proxies[dense]
            assert 8 * Party.chunk_values < proxy.forwarded <= 8 * Party.chunk_values + 200_000
            counts = [s["rounds"]["1"]["reports"] for s in coord.status()]
            assert counts == [0 if i == dense else 1 for i in range(3)], counts  # no half-report at the dense party
            for i in (1, 2, 3):
                with SecureAggClient(dep, f"client-{i}") as c:
                    c.submit(1, {"w": np.full(dim, float(i))})
            res = coord.close_round(1, timeout_s=60)
        assert all(ld.alive().values())
        dense_log = (ld.log_dir / f"party-{dense}.log").read_text()
        # the first chunk was added to the sum, then taken back out (the average below proves it)
        [aborted] = [parse(x) for x in dense_log.splitlines() if "event=upload_aborted" in x]
        assert aborted["client"] == "client-0" and aborted["received"] == str(Party.chunk_values), aborted
    assert res.clients == ("client-1", "client-2", "client-3")  # client-0 left out by every party
    assert np.allclose(res.average["w"].numpy(), 2.0)


def test_close_during_an_upload_leaves_the_partial_report_out(tmp_path: Path) -> None:
    """A dense party adds chunks to its sum as they arrive; a close that starts mid-upload takes them back out."""
    dim = Party.chunk_values + 1000
    with LocalDeployment(tmp_path / "dep", parties=3, clients=4, min_clients=3, dealer=False) as ld:
        dep = ld.deployment
        with Coordinator(dep) as coord:
            spec = coord.open_round(1, shapes={"w": (dim,)}, min_clients=3)
            for i in range(3):
                with SecureAggClient(dep, f"client-{i}") as c:
                    c.submit(1, {"w": np.full(dim, float(i + 1))})
            with SecureContext() as sctx:  # client-3 sends the first of its two chunks, then stalls
                up = RawUpload(sctx, dep, 0, "client-3", spec)
                up.begin()
                up.chunk(0, np.full(Party.chunk_values, 1 << 40, dtype=np.int64))
                res = coord.close_round(1, timeout_s=60)
                with pytest.raises(RoundStateError):  # that upload ended with the close
                    up.chunk(Party.chunk_values, np.zeros(1001, dtype=np.int64))
    assert res.clients == ("client-0", "client-1", "client-2")
    assert np.allclose(res.average["w"].numpy(), 2.0)  # nothing of client-3's first chunk in the sum

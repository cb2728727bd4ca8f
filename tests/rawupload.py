"""A hand-driven upload to a party process, for tests of what a hostile client may send: REPORT_BEGIN
over the client's CURVE link, then chunks it seals itself (mpc_agg.bulk) to the party's bulk endpoint.  By default
the report id is drawn so that the party is the report's dense party (mpc_agg.sharing.dense_party)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import zmq

from mpc_agg.bulk import UploadSeal
from mpc_agg.config import Deployment, read_secret_key
from mpc_agg.sharing import dense_party
from mpc_agg.spec import RoundSpec
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import Message, MsgType


def report_id_for(spec: RoundSpec, parties: int, dense: int) -> str:
    """A fresh random report id (hex) whose dense party, of ``parties``, is ``dense``."""
    for _ in range(1000):  # each draw hits with probability 1/k
        rid = os.urandom(16)
        if dense_party(spec, rid, parties) == dense:
            return rid.hex()
    raise RuntimeError(f"party {dense} takes no dense share in round {spec.round_id}")


class RawUpload:
    """Client ``client``'s upload of one report to party ``party`` (its own sockets in ``sctx``)."""

    def __init__(self, sctx: SecureContext, dep: Deployment, party: int, client: str, spec: RoundSpec, *,
                 report_id: str | None = None) -> None:
        c, p = dep.client(client), dep.party(party)
        self.req = Requester(sctx.client(zmq.DEALER, p.client_endpoint, public_key=c.public_key,
                                         secret_key=read_secret_key(c.private_key_file, client),
                                         server_key=p.public_key))
        self.bulk = Requester(sctx.bulk_client(p.bulk_endpoint))
        self.client, self.spec, self.party = client, spec, party
        self.report = report_id or report_id_for(spec, len(dep.parties), party)
        self.seal: UploadSeal | None = None

    def begin(self, *, deadline_s: float = 60.0, timeout_s: float = 10.0, **meta: Any) -> Message:
        """REPORT_BEGIN (``meta`` overrides fields); keeps the key the party answers with."""
        fields = {"round": self.spec.round_id, "client": self.client, "report_id": self.report,
                  "spec_digest": self.spec.digest(), "deadline": time.time() + deadline_s, **meta}
        go = self.req.request(MsgType.REPORT_BEGIN, fields, timeout_s=timeout_s, what=f"party {self.party}")
        self.seal = UploadSeal(bytes.fromhex(go.meta["key"]), self.spec.round_id, bytes.fromhex(self.report))
        return go

    def sealed(self, offset: int, values: np.ndarray, count: int | None = None) -> bytes:
        """``values`` sealed as the chunk of ``count`` values (default: ``values.size``) at ``offset``."""
        if self.seal is None:
            raise RuntimeError("begin() first")
        return self.seal.seal_chunk(offset, values.size if count is None else count, values.data)

    def send(self, offset: int, payload: bytes, *, report_id: str | None = None,
             timeout_s: float = 10.0) -> Message:
        """One REPORT_CHUNK on the bulk endpoint; the party's answer (a refusal raises its typed error)."""
        return self.bulk.request(MsgType.REPORT_CHUNK, {"report_id": report_id or self.report, "offset": offset},
                                 [payload], timeout_s=timeout_s, what=f"party {self.party}")

    def chunk(self, offset: int, values: np.ndarray, *, timeout_s: float = 10.0) -> Message:
        """``values`` sealed and sent as the chunk at ``offset``."""
        return self.send(offset, self.sealed(offset, values), timeout_s=timeout_s)

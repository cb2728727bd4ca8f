"""The coordinator: opens rounds at every party and receives only shares of the sum.

It is untrusted for privacy: it cannot lower a party's floor, choose the cohort
or see any share in transit (SECURITY.md, "Roles and what each may learn").  It adds the k sum shares
(mod 2**32 for the update coordinates of a 32-bit round, mpc_agg.ring; else mod 2**64) and
decodes the average with mpc_agg.fixedpoint.decode_average (not CrypTen's decoder).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Mapping

import numpy as np
import torch

from mpc_agg.config import Deployment, read_secret_key
from mpc_agg.dp import PrivacyLedger, SkellamRound
from mpc_agg.errors import RefusedError, SpecMismatchError, WireError
from mpc_agg.fanout import PartyLinks
from mpc_agg.fixedpoint import MAX_REPORTS_PER_ROUND, decode_average
from mpc_agg.ring import add_sum_share
from mpc_agg.logs import event
from mpc_agg.messages import request
from mpc_agg.spec import RoundSpec
from mpc_agg.transport import SecureContext
from mpc_agg.wire import MsgType

__all__ = ["Coordinator", "RoundResult"]

log = logging.getLogger("mpc_agg.coordinator")


@dataclass(frozen=True)
class RoundResult:
    """What a closed round reveals: the weighted average and who is in it."""

    round_id: int
    average: dict[str, torch.Tensor]
    clients: tuple[str, ...]
    total_weight: float
    report_ids: tuple[str, ...]
    seconds: float
    rejected: tuple[str, ...] = ()
    """clients whose reports failed the parties' MPC checks (norm in verified rounds, else weight)"""
    epsilon: float | None = None
    """epsilon so far (the ledger's composition up to this round) at ``delta``; None when un-noised."""
    delta: float | None = None
    party_stats: tuple[dict[str, Any], ...] = ()
    """each party's own account of its close, in party order: ``close_s`` (seconds from the close
    request to the reveal) and ``peer_bytes`` (bytes it sent to other parties during the close)"""


def _close_stats(meta: dict[str, Any]) -> dict[str, Any]:
    """A party's close figures from its SUM_SHARE reply (numbers only; anything else is dropped)."""
    stats = meta.get("stats")
    if not isinstance(stats, dict):
        return {}
    return {k: v for k, v in stats.items() if k in ("close_s", "peer_bytes")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Coordinator:
    """Opens and closes rounds; a context manager that closes its sockets."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        ledger_path: str | os.PathLike[str] | None = None,
        delta: float = 1e-5,
        epsilon_budget: float | None = None,
    ) -> None:
        """``ledger_path`` keeps the privacy ledger across restarts; ``epsilon_budget`` stops noised
        rounds (BudgetExceededError at ``open_round``) once the next one would exceed it at ``delta``."""
        self.dep = deployment
        self.ledger = PrivacyLedger.open(ledger_path, delta=delta, budget=epsilon_budget)
        secret = read_secret_key(deployment.coordinator_private_key_file, "the coordinator")
        self.sctx = SecureContext()
        self._links = PartyLinks.to_parties(self.sctx, deployment.parties,
                                            public_key=deployment.coordinator_public_key, secret_key=secret)
        self.specs: dict[int, RoundSpec] = {}

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **kwargs: Any) -> "Coordinator":
        return cls(Deployment.load(path), **kwargs)

    def close(self) -> None:
        self.sctx.close()

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open_round(
        self,
        round_id: int,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        min_clients: int = 3,
        clip_norm: float | None = None,
        noise_multiplier: float = 0.0,
        frac_bits: int | None = None,
        verify_norm: bool = False,
        max_weight: float | None = None,
        min_honest: int | None = None,
        max_cohort: int | None = None,
        ring_bits: int | None = None,
        timeout_s: float = 30.0,
    ) -> RoundSpec:
        """Open ``round_id`` at every party (waits up to ``timeout_s`` for parties still starting);
        returns the round's spec, the one every client fetches and checks.

        ``verify_norm=True`` (needs ``clip_norm``, a dealer, and each party's and client's consent:
        mpc_agg.trust) makes the parties check every report's L2 norm in MPC and drop violators before
        the reveal (``RoundResult.rejected``); in other rounds the parties drop reports whose weight is
        not in (0, ``max_weight``] (default: the largest encodable), so the revealed total weight is
        always positive (both need the dealer).  Noised rounds: ``frac_bits=None`` fits the grid to the
        noise (mpc_agg.noise); ``min_honest`` clients are assumed to add their noise (default all).
        ``max_cohort``: the most reports a party accepts in the round (default: the smallest
        ``max_reports`` of the deployment's parties).  ``ring_bits=None`` shares the update in
        Z_2^32 when clip_norm, max_weight (or noise), frac_bits and max_cohort allow, else Z_2^64
        (mpc_agg.ring); 32 raises RingSizeError when they do not.
        Opening a round again with the same spec is a no-op; a revealed round raises
        AlreadyRevealedError (round ids are never reused)."""
        spec = RoundSpec.create(round_id, shapes, min_clients=min_clients, clip_norm=clip_norm,
                                noise_multiplier=noise_multiplier, frac_bits=frac_bits, verify_norm=verify_norm,
                                max_weight=max_weight, min_honest=min_honest, parties=len(self.dep.parties),
                                max_cohort=self._max_cohort(min_clients) if max_cohort is None else max_cohort,
                                ring_bits=ring_bits)
        dp_event = SkellamRound.from_spec(spec)
        if dp_event is not None:
            self.ledger.check(round_id, dp_event)
        self._links.ask_all(MsgType.OPEN_ROUND, request(MsgType.OPEN_ROUND, spec=spec.to_json()), timeout_s)
        self.specs[round_id] = spec
        event(log, "open", round=round_id, dim=spec.dim)
        return spec

    def _max_cohort(self, min_clients: int) -> int | None:
        """The smallest max_reports of the parties, at least ``min_clients`` (None: the protocol's limit)."""
        cap = min(p.max_reports for p in self.dep.parties)
        if isinstance(min_clients, int) and cap < min_clients:  # (a bad min_clients is the spec's to refuse)
            cap = min_clients
        return None if cap >= MAX_REPORTS_PER_ROUND else cap

    def close_round(self, round_id: int, *, timeout_s: float = 60.0) -> RoundResult:
        """Ask every party to agree on the cohort and reveal its sum share; return the average.

        A round opened by an earlier coordinator process (before a restart) is closed too: its spec
        is read back from the parties, which must all hold the same one."""
        t0 = time.monotonic()
        spec = self.specs.get(round_id) or self._spec_from_parties(round_id, timeout_s)
        # the parties drop a close request that reaches them after this deadline (their clocks must
        # agree with ours to well under timeout_s, as NTP gives)
        close = request(MsgType.CLOSE_ROUND, round=round_id, session=os.urandom(8).hex(),
                        deadline=time.time() + timeout_s)
        answers = self._links.ask_all(MsgType.CLOSE_ROUND, close, timeout_s)
        cohorts = {tuple(a.meta.get("cohort", ())) for a in answers}
        if len(cohorts) != 1:
            raise RefusedError("parties revealed different cohorts: result discarded")
        ring = np.zeros(spec.dim + 1, dtype=np.int64)  # the sum of the k shares, frame by frame
        for i, a in enumerate(answers):
            if a.type != MsgType.SUM_SHARE:
                raise WireError(f"party {i} sent a malformed sum share")
            add_sum_share(ring, a.payloads, spec.ring_bits, f"party {i}")
        avg, weight = decode_average(ring, spec.frac_bits, ring_bits=spec.ring_bits)
        del ring
        out, off = {}, 0
        for name, shape in spec.shapes:
            n = int(np.prod(shape, dtype=np.int64))
            out[name] = torch.from_numpy(avg[off:off + n].reshape(shape))  # views of one fresh buffer
            off += n
        clients = tuple(answers[0].meta.get("clients", ()))
        dp_event = SkellamRound.from_spec(spec)
        epsilon = None if dp_event is None else self.ledger.record(round_id, dp_event)
        event(log, "reveal", round=round_id, clients=len(clients))
        return RoundResult(round_id, out, clients, weight, tuple(next(iter(cohorts))), time.monotonic() - t0,
                           tuple(answers[0].meta.get("rejected", ())), epsilon,
                           None if dp_event is None else self.ledger.delta,
                           tuple(_close_stats(a.meta) for a in answers))

    def _spec_from_parties(self, round_id: int, timeout_s: float) -> RoundSpec:
        answers = self._links.ask_all(MsgType.GET_SPEC, request(MsgType.GET_SPEC, round=round_id), timeout_s)
        specs = {RoundSpec.from_json(a.meta.get("spec")) for a in answers}
        spec = specs.pop()
        if specs or spec.round_id != round_id:
            raise SpecMismatchError(f"parties hold different specs for round {round_id}: not closing it")
        self.specs[round_id] = spec
        return spec

    def status(self, *, timeout_s: float = 10.0) -> list[dict]:
        """Each party's health output (open rounds, report counts, floor)."""
        return [a.meta for a in self._links.ask_all(MsgType.STATUS, request(MsgType.STATUS), timeout_s)]

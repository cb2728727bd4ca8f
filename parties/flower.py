"""Flower server strategy wrapper: any Message-API strategy, aggregated by the mpc-agg parties.

``MpcAggStrategy(inner, config=...)`` wraps a ``flwr.serverapp.strategy`` strategy (FedAvg,
FedAdam, ...).  ``configure_train`` opens an mpc-agg round at every party (its id derived from
the Flower run id and server round, shapes from the global ArrayRecord) and adds the id to the
ConfigRecord that ``inner`` sends; the clients' ``fl_client.flower.MpcAggMod`` submits their
deltas to it and replies with empty arrays.  ``aggregate_train`` closes the round, puts the
revealed model (global + weighted average delta) in place of each reply's arrays and lets
``inner`` aggregate as usual, so its metrics aggregation and server optimiser (FedAdam's
pseudo-gradient is then exactly the revealed average) keep working.  Evaluation passes through.

A round the parties refuse to reveal (too few clients, a refused submit) fails with Flower's
``AggregationError``; a privacy budget the next round would exceed, with
``PrivacyBudgetExhausted``; a reply that carries a model in the clear (a client without the mod),
with ``AggregationError`` too.  README "Use with Flower".
"""

from __future__ import annotations

import hashlib
import os
from logging import INFO
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_client.flower import ROUND_KEY
from mpc_agg.errors import BudgetExceededError, ConfigError, MpcAggError

from .coordinator import Coordinator, RoundResult

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.common import log
    from flwr.serverapp.exception import AggregationError, PrivacyBudgetExhausted
    from flwr.serverapp.strategy import Strategy
except ImportError as exc:  # pragma: no cover - flwr is in requirements.txt
    raise ImportError("parties.flower needs flwr==1.42.0 (`make install` installs it)") from exc

if TYPE_CHECKING:
    from flwr.serverapp import Grid

__all__ = ["MpcAggStrategy", "round_id_for"]

MAX_SERVER_ROUND = 1 << 20


def round_id_for(run_id: int, server_round: int) -> int:
    """The mpc-agg round id of Flower round ``server_round`` of run ``run_id``: 42 bits of a hash
    of the run id, then 20 bits of server round (distinct runs on one deployment do not collide)."""
    if not 0 <= server_round < MAX_SERVER_ROUND:
        raise ConfigError(f"server round {server_round} is out of range [0, {MAX_SERVER_ROUND})")
    run_bits = int.from_bytes(hashlib.sha256(f"flwr-run:{run_id}".encode()).digest()[:8], "big") >> 22
    return run_bits * MAX_SERVER_ROUND + server_round


class MpcAggStrategy(Strategy):
    """Secure aggregation of ``inner``'s training rounds through the parties of ``config``.

    ``clip_norm``, ``noise_multiplier``, ``verify_norm``, ``min_clients`` and ``frac_bits`` go
    into every round's spec (``Coordinator.open_round``); ``ledger_path``, ``delta`` and
    ``epsilon_budget`` to the coordinator's privacy ledger.  ``coordinator`` replaces ``config``
    with an open :class:`Coordinator` (the caller then closes it).
    """

    def __init__(self, inner: Strategy, *, config: str | os.PathLike[str] | None = None,
                 coordinator: Coordinator | None = None, clip_norm: float | None = None,
                 noise_multiplier: float = 0.0, verify_norm: bool = False, min_clients: int = 3,
                 frac_bits: int | None = None, timeout_s: float = 60.0,
                 ledger_path: str | os.PathLike[str] | None = None, delta: float = 1e-5,
                 epsilon_budget: float | None = None) -> None:
        if (config is None) == (coordinator is None):
            raise ConfigError("pass exactly one of config= (a deployment.toml) or coordinator=")
        self.inner = inner
        self._own = coordinator is None
        self.coordinator = coordinator or Coordinator.from_config(config, ledger_path=ledger_path, delta=delta,
                                                                  epsilon_budget=epsilon_budget)
        self.round_kw: dict[str, Any] = {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier,
                                         "verify_norm": verify_norm, "min_clients": min_clients,
                                         "frac_bits": frac_bits}
        self.timeout_s = timeout_s
        self.results: dict[int, RoundResult] = {}
        """the parties' reveal of every server round so far (cohort, total weight, epsilon, ...)"""
        self._open: dict[int, tuple[int, ArrayRecord]] = {}

    def close(self) -> None:
        """Close the coordinator's sockets if this strategy opened them."""
        if self._own:
            self.coordinator.close()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Any:
        """``Strategy.start``, closing the coordinator afterwards (if this strategy opened it)."""
        try:
            return super().start(grid, initial_arrays, *args, **kwargs)
        finally:
            self.close()

    def summary(self) -> None:
        log(INFO, "\t├──> mpc-agg: %d parties, %s, around %s:", len(self.coordinator.dep.parties),
            ", ".join(f"{k}={v}" for k, v in self.round_kw.items()), type(self.inner).__name__)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Open the mpc-agg round, then let ``inner`` sample nodes and build the messages."""
        rid = round_id_for(grid.run.run_id, server_round)
        shapes = {name: tuple(a.shape) for name, a in arrays.items()}
        try:
            self.coordinator.open_round(rid, shapes, timeout_s=self.timeout_s, **self.round_kw)
        except BudgetExceededError as exc:
            raise PrivacyBudgetExhausted(f"mpc-agg: {exc}") from exc
        except MpcAggError as exc:
            raise AggregationError(f"mpc-agg could not open round {rid}: {type(exc).__name__}: {exc}") from exc
        self._open[server_round] = (rid, arrays)
        config[ROUND_KEY] = rid
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Close the round at the parties and hand ``inner`` the revealed model in every reply."""
        replies = list(replies)
        if server_round not in self._open:
            raise AggregationError(f"server round {server_round} was not configured by this strategy")
        rid, arrays = self._open.pop(server_round)
        for msg in replies:
            if not msg.has_error() and any(len(r) for r in msg.content.array_records.values()):
                raise AggregationError(f"node {msg.metadata.src_node_id} replied with its model in the clear "
                                       "(its ClientApp lacks fl_client.flower.MpcAggMod): round discarded")
        try:
            result = self.coordinator.close_round(rid, timeout_s=self.timeout_s)
        except MpcAggError as exc:
            errors = [m.error.reason for m in replies if m.has_error()]
            raise AggregationError(f"mpc-agg refused to reveal round {rid} (server round {server_round}): "
                                   f"{type(exc).__name__}: {exc}; client errors: {errors}") from exc
        self.results[server_round] = result
        revealed = apply_average(arrays, result)
        for msg in replies:
            if not msg.has_error():
                for key in list(msg.content.array_records):
                    msg.content[key] = revealed
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


def apply_average(arrays: ArrayRecord, result: RoundResult) -> ArrayRecord:
    """``arrays + result.average``, computed in float64 and stored in each array's own dtype."""
    out = {}
    for name, arr in arrays.items():
        old = arr.numpy()
        new = old.astype(np.float64) + result.average[name].numpy()
        if np.issubdtype(old.dtype, np.integer):
            new = np.rint(new)  # e.g. a batch-norm step counter
        out[name] = Array(new.astype(old.dtype))
    return ArrayRecord(out)

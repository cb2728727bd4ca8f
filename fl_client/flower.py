"""Flower client mod: a ClientApp's TRAIN replies go to the mpc-agg parties, secret-shared.

``MpcAggMod`` plays the part of Flower's ``secaggplus_mod`` for the Message API: it runs the
user's train function, submits ``delta = returned arrays - received arrays`` with
:class:`fl_client.SecureAggClient` to the round that ``parties.flower.MpcAggStrategy`` named in the
ConfigRecord, and replies with an empty ArrayRecord beside the train function's metrics. The
weight is the reply's ``num-examples`` metric, or 1 in rounds with noise or verified clipping
(README "Use with Flower").  A refusal (spec mismatch, a client's own noise floor, a party's
refusal) comes back as a Flower error reply naming the mpc-agg error, never a hang: every wait
is bounded by ``timeout_s``.  A TRAIN message without a round id is refused too, so a model
update never leaves in the clear because the server forgot the strategy wrapper.

Settings come from the node config (a real SuperNode's ``--node-config``), else the run config:
``mpc-agg-config`` (path of ``deployment.toml``) and ``mpc-agg-client-id`` (default
``client-<partition-id>``, the names ``mpc-agg keygen`` writes, for the simulation engine).
``mpc-agg-ledger`` (node config) keeps the client's own epsilon ledger on disk.

ClientApps are ephemeral: Flower rebuilds the ClientApp (and this mod, unpickled) for every
message — in a simulation actor that lives for the whole run, on a real SuperNode in a fresh
``flwr-clientapp`` process.  Connections are therefore kept in a per-process pool keyed by
(deployment, client id) and reused by every message the process handles; with a real SuperNode
that is one message, so a ``max_epsilon`` floor needs ``mpc-agg-ledger`` to persist.
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from mpc_agg.errors import ConfigError, MpcAggError

from .client import SecureAggClient

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Context, Message
    from flwr.clientapp.typing import ClientAppCallable

__all__ = ["MpcAggMod", "close_connections", "model_delta", "ROUND_KEY", "CONFIG_KEY", "CLIENT_ID_KEY", "LEDGER_KEY",
           "WEIGHT_KEY"]

ROUND_KEY = "mpc-agg-round"
"""ConfigRecord key of the mpc-agg round id in TRAIN messages (set by ``MpcAggStrategy``)."""
CONFIG_KEY = "mpc-agg-config"
CLIENT_ID_KEY = "mpc-agg-client-id"
LEDGER_KEY = "mpc-agg-ledger"
WEIGHT_KEY = "num-examples"


def _setting(ctxt: Context, key: str) -> Any:
    return ctxt.node_config.get(key, ctxt.run_config.get(key))


def _single_array_record(content: Any, what: str) -> tuple[str, ArrayRecord]:
    records = list(content.array_records.items())
    if len(records) != 1:
        raise ConfigError(f"{what} must carry exactly one ArrayRecord, found {len(records)}")
    return records[0]


def model_delta(received: ArrayRecord, returned: ArrayRecord) -> dict[str, np.ndarray]:
    """``returned - received`` per array (float64), or ConfigError if names or shapes differ."""
    if set(received) != set(returned):
        raise ConfigError(f"the train function returned arrays {sorted(returned)}, expected {sorted(received)}")
    delta = {}
    for name, arr in returned.items():
        new, old = arr.numpy(), received[name].numpy()
        if new.shape != old.shape:
            raise ConfigError(f"the train function returned {name!r} with shape {new.shape}, expected {old.shape}")
        delta[name] = new.astype(np.float64) - old.astype(np.float64)
    return delta


_POOL: dict[tuple[Any, ...], SecureAggClient] = {}
"""This process's open connections; the mod itself is rebuilt for every message (module docstring)."""
_POOL_LOCK = threading.Lock()


def close_connections() -> None:
    """Close every connection the mod opened in this process (also run at exit)."""
    with _POOL_LOCK:
        for c in _POOL.values():
            c.close()
        _POOL.clear()


atexit.register(close_connections)


class MpcAggMod:
    """A Flower client mod (``ClientApp(mods=[MpcAggMod()])``) that submits TRAIN updates to mpc-agg.

    ``config`` / ``client_id`` override the node and run config; ``client_kwargs`` go to
    :class:`SecureAggClient` (e.g. ``min_noise_multiplier=``, ``max_epsilon=``).
    """

    def __init__(self, *, config: str | None = None, client_id: str | None = None, timeout_s: float = 60.0,
                 **client_kwargs: Any) -> None:
        self.config = config
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.client_kwargs = client_kwargs

    def client(self, ctxt: Context) -> SecureAggClient:
        """This node's connection to the parties: from this process's pool, opened on first use."""
        path = self.config or _setting(ctxt, CONFIG_KEY)
        if not path:
            raise ConfigError(f"no deployment: set {CONFIG_KEY!r} in the node or run config")
        cid = self.client_id or _setting(ctxt, CLIENT_ID_KEY)
        if cid is None:
            if "partition-id" not in ctxt.node_config:
                raise ConfigError(f"no client id: set {CLIENT_ID_KEY!r} in the node config")
            cid = f"client-{ctxt.node_config['partition-id']}"
        ledger = ctxt.node_config.get(LEDGER_KEY)
        ledger = None if ledger is None else str(ledger)
        key = (str(path), str(cid), ledger, self.timeout_s, tuple(sorted(self.client_kwargs.items())))
        with _POOL_LOCK:
            if key not in _POOL:
                _POOL[key] = SecureAggClient.from_config(str(path), str(cid), timeout_s=self.timeout_s,
                                                         ledger_path=ledger, **self.client_kwargs)
            return _POOL[key]

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        from flwr.app import ArrayRecord, Error, Message, MessageType
        from flwr.common.constant import ErrorCode

        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        try:
            round_id = self._round_id(msg)
            client = self.client(ctxt)
            reply = call_next(msg, ctxt)
            if reply.has_error():
                return reply
            key, returned = _single_array_record(reply.content, "the train function's reply")
            _, received = _single_array_record(msg.content, "the TRAIN message")
            delta = model_delta(received, returned)
            spec = client.fetch_spec(round_id)
            unit = spec.noise_multiplier > 0 or spec.verify_norm
            weight = 1.0 if unit else self._weight(list(reply.content.metric_records.values()))
            client.submit(round_id, delta, weight=weight)
        except MpcAggError as exc:
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"mpc-agg {type(exc).__name__}: {exc}"),
                           reply_to=msg)
        reply.content[key] = ArrayRecord()  # the update went to the parties, secret-shared
        return reply

    @staticmethod
    def _round_id(msg: Message) -> int:
        for record in msg.content.config_records.values():
            if ROUND_KEY in record:
                rid = record[ROUND_KEY]
                if isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0:
                    return rid
                raise ConfigError(f"bad {ROUND_KEY!r} {rid!r} in the TRAIN message")
        raise ConfigError("the TRAIN message names no mpc-agg round (does the server run MpcAggStrategy?): "
                          "refusing to send the update in the clear")

    @staticmethod
    def _weight(metrics: list[Any]) -> float:
        if len(metrics) != 1 or WEIGHT_KEY not in metrics[0]:
            raise ConfigError(f"the train function's reply needs one MetricRecord with {WEIGHT_KEY!r}")
        w = metrics[0][WEIGHT_KEY]
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"{WEIGHT_KEY!r} must be a number, got {w!r}")
        return float(w)

"""The "Flower + mpc-agg (adapter)" row of ``benchmarks.flower_secagg``: Flower rounds aggregated by mpc-agg.

The same n clients and float32 vectors as the SecAgg+ rows, in the same simulation engine
(``run_simulation``, one CPU per ClientApp actor), but through the Message API: a ServerApp whose
strategy is ``parties.flower.MpcAggStrategy`` around ``FedAvg`` (no evaluation) and a ClientApp
whose train function returns the client's vector with ``num-examples`` 1, behind
``fl_client.flower.MpcAggMod``; k = 3 party processes (``LocalDeployment``) on loopback.  A round
is ``configure_train`` (opens the mpc-agg round) to the end of ``aggregate_train`` (closes it and
applies the revealed average): broadcast, each client's delta secret-shared to the parties, the
reveal.  Every round's global model is checked against the float64 mean of the vectors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from flwr.app import Context, Message

__all__ = ["run_adapter"]

PARTIES = 3
TOLERANCE = 1e-6  # fixed point (n·2^-24 / n) plus float32 rounding of a mean of values |x| << 1


def run_adapter(workdir: Path, data_path: Path, expected: npt.NDArray[np.float64], repeat: int,
                timeout_s: float) -> tuple[list[float], list[float]]:
    """(repeat + 1) adapter rounds in one simulation; (seconds, max |model - mean|) per round, warm-up first."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.app import Message as FlowerMessage
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from benchmarks.flower_secagg import quiet_env, simulate
    from fl_client.flower import MpcAggMod
    from parties.flower import MpcAggStrategy
    from parties.launcher import LocalDeployment

    quiet_env()
    n = int(np.load(data_path, mmap_mode="r").shape[0])
    seconds: list[float] = []
    errors: list[float] = []

    class Timed(MpcAggStrategy):
        def configure_train(self, server_round: int, *args: Any) -> Any:
            self.t0 = time.perf_counter()
            return super().configure_train(server_round, *args)

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            arrays, metrics = super().aggregate_train(server_round, replies)
            seconds.append(time.perf_counter() - self.t0)
            model = arrays.to_numpy_ndarrays()[0].astype(np.float64)
            errors.append(float(np.max(np.abs(model - expected))))
            return arrays, metrics

    with LocalDeployment(workdir, parties=PARTIES, clients=n, min_clients=min(3, n), dealer=False) as ld:
        client_app = ClientApp(mods=[MpcAggMod(config=str(ld.config), timeout_s=timeout_s)])

        @client_app.train()
        def _train(msg: Message, context: Context) -> Message:
            vector = np.array(np.load(str(data_path), mmap_mode="r")[int(context.node_config["partition-id"])])
            content = RecordDict({"arrays": ArrayRecord([vector]), "metrics": MetricRecord({"num-examples": 1})})
            return FlowerMessage(content=content, reply_to=msg)

        server_app = ServerApp()

        @server_app.main()
        def _main(grid: Grid, context: Context) -> None:
            inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
            strategy = Timed(inner, config=ld.config, min_clients=min(3, n), timeout_s=timeout_s)
            zeros = ArrayRecord([np.zeros(expected.shape[0], dtype=np.float32)])
            strategy.start(grid=grid, initial_arrays=zeros, num_rounds=repeat + 1, timeout=timeout_s)

        simulate(server_app, client_app, n, int(timeout_s * (repeat + 3)))
    if len(seconds) != repeat + 1:
        raise RuntimeError(f"the adapter ran {len(seconds)} rounds, expected {repeat + 1}")
    if max(errors) > TOLERANCE:
        raise RuntimeError(f"the adapter's model is wrong: max |model - mean| {max(errors):.3e} "
                           f"(tolerance {TOLERANCE})")
    return seconds, errors

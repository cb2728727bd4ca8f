"""ServerApp: Flower's FedAvg, wrapped in ``MpcAggStrategy`` (the one mpc-agg line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from parties.flower import MpcAggStrategy

from .task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if not cfg["mpc-agg-config"]:
        raise SystemExit("set the deployment: --run-config \"mpc-agg-config='/path/to/deployment.toml'\"")
    out_dir = Path(str(cfg["out-dir"])) if cfg["out-dir"] else None
    inner = FedAvg(fraction_evaluate=float(cfg["fraction-evaluate"]), min_train_nodes=int(cfg["min-clients"]),
                   min_available_nodes=int(cfg["min-clients"]))
    strategy = MpcAggStrategy(inner, config=str(cfg["mpc-agg-config"]),
                              clip_norm=float(cfg["clip-norm"]) or None,
                              noise_multiplier=float(cfg["noise-multiplier"]),
                              verify_norm=bool(cfg["verify-norm"]), min_clients=int(cfg["min-clients"]))

    def save(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            np.savez(out_dir / f"round-{server_round}.npz", **{k: v.numpy() for k, v in arrays.items()})
        return None

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                            num_rounds=int(cfg["num-server-rounds"]), train_config=ConfigRecord(),
                            evaluate_fn=save)
    for rnd, res in strategy.results.items():
        print(f"round {rnd}: {len(res.clients)} clients in the secure sum, total weight {res.total_weight:g}")
    print(f"final evaluation metrics: {result.evaluate_metrics_clientapp}")

"""ClientApp: ordinary Flower training code; the one mpc-agg line is ``mods=[MpcAggMod()]``."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_client.flower import MpcAggMod

from .task import Net, evaluate, load_data, train

app = ClientApp(mods=[MpcAggMod()])  # TRAIN replies go to the parties, secret-shared


def local_update(arrays: ArrayRecord, partition_id: int, server_round: int, run_config: dict) -> tuple[Net, float, int]:
    """Train the received model on this client's data; (model, mean loss, number of examples)."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    x, y = load_data(partition_id)
    loss = train(model, x, y, epochs=int(run_config["local-epochs"]), batch_size=int(run_config["batch-size"]),
                 lr=float(run_config["lr"]), seed=1000 * server_round + partition_id)
    return model, loss, len(x)


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    model, loss, n = local_update(msg.content["arrays"], int(context.node_config["partition-id"]), server_round,
                                  context.run_config)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train-loss": loss, "num-examples": n})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, acc = evaluate(model, *load_data(int(context.node_config["partition-id"]), test=True))
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": acc, "num-examples": 16})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

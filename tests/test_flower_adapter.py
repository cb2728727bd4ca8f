"""The Flower adapter end to end: examples/flower in Flower's simulation engine, 3 party processes.

The example runs 2 rounds with 5 simulated SuperNodes (``parties.flower_sim.simulate_app``: the
engine and app loading of ``flwr run``) and saves the global model after each round.  Each round
is then checked against plain Flower FedAvg (``aggregate_arrayrecords``, what ``FedAvg`` calls) of
the same client updates, recomputed here by the example's deterministic local training from the
same global model.  A client whose own noise floor refuses the round's spec makes the round fail
with Flower's ``AggregationError``, quickly, naming both refusals.  Without the engine: the mod
refuses a TRAIN message that names no round, and uses weight 1 in noised rounds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import pytest

from mpc_agg.fixedpoint import DEFAULT_FRAC_BITS
from parties import Coordinator
from parties.launcher import LocalDeployment

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "flower"
CLIENTS, ROUNDS = 5, 2
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def flower_dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    ld = LocalDeployment(tmp_path_factory.mktemp("flower"), parties=3, clients=CLIENTS, min_clients=3, dealer=False)
    ld.start()
    try:
        with Coordinator.from_config(ld.config) as coord:
            coord.status(timeout_s=60)  # every party is up (a party stopped while starting exits non-zero)
        yield ld
    finally:
        assert set(ld.stop().values()) <= {0}


def _example_client() -> ModuleType:
    """The example's ``mpcagg_flower.client_app`` module (its local training is what the clients ran)."""
    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))
    from mpcagg_flower import client_app

    return client_app


def test_example_matches_plain_fedavg(flower_dep: LocalDeployment, tmp_path: Path) -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from parties.flower_sim import simulate_app

    client_app = _example_client()
    overrides = {"mpc-agg-config": str(flower_dep.config), "num-server-rounds": ROUNDS, "out-dir": str(tmp_path)}
    simulate_app(APP, num_supernodes=CLIENTS, run_config=overrides)
    run_config = get_fused_config_from_dir(APP, overrides)
    models = [dict(np.load(tmp_path / f"round-{r}.npz")) for r in range(ROUNDS + 1)]
    for rnd in range(1, ROUNDS + 1):
        start = ArrayRecord({k: Array(v) for k, v in models[rnd - 1].items()})
        replies = []
        for pid in range(CLIENTS):
            model, _, n = client_app.local_update(start, pid, rnd, run_config)
            replies.append(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "metrics": MetricRecord({"num-examples": n})}))
        plain = aggregate_arrayrecords(replies, "num-examples")
        secure = models[rnd]
        assert set(secure) == set(plain)
        biggest = max(float(np.max(np.abs(v))) for v in secure.values())
        # fixed point (README: n·2^-frac_bits) plus float32 rounding of FedAvg's sum and of the model
        bound = CLIENTS * 2.0**-DEFAULT_FRAC_BITS + 2 * (CLIENTS + 1) * 2.0**-24 * biggest
        diff = max(float(np.max(np.abs(secure[k].astype(np.float64) - plain[k].numpy()))) for k in secure)
        moved = max(float(np.max(np.abs(secure[k] - models[rnd - 1][k]))) for k in secure)
        assert diff <= bound, f"round {rnd}: secure vs plain FedAvg differ by {diff:.3e} > {bound:.3e}"
        assert moved > 1000 * bound, f"round {rnd}: the model hardly moved ({moved:.3e}): nothing was checked"


def test_refused_submit_fails_the_round(flower_dep: LocalDeployment) -> None:
    """Every client's own floor (min_noise_multiplier 1) refuses the un-noised round: Flower error, no hang."""
    from flwr.serverapp.exception import AggregationError

    from parties.flower_sim import simulate_app

    text = flower_dep.config.read_text()
    floored = flower_dep.config.with_name("deployment-floor.toml")
    floored.write_text(text.replace("[[clients]]\n", "[[clients]]\nmin_noise_multiplier = 1.0\n"))
    assert floored.read_text().count("min_noise_multiplier") == CLIENTS
    t0 = time.monotonic()
    with pytest.raises(AggregationError) as err:
        simulate_app(APP, num_supernodes=CLIENTS, run_config={"mpc-agg-config": str(floored), "num-server-rounds": 1})
    assert time.monotonic() - t0 < 120
    reason = str(err.value)
    assert "CohortTooSmallError" in reason, reason
    assert reason.count("mpc-agg NoiseFloorError") == CLIENTS, reason


def test_mod_refuses_train_without_round(flower_dep: LocalDeployment) -> None:
    """A TRAIN message that names no mpc-agg round (a server without MpcAggStrategy) is refused before
    the train function runs: the update is never sent in the clear."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.flower import MpcAggMod

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # what Flower's runtime sets
    msg = Message(RecordDict({"arrays": ArrayRecord([np.zeros(3, np.float32)]), "config": ConfigRecord({})}),
                  dst_node_id=1, message_type=MessageType.TRAIN)
    ctxt = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config={"mpc-agg-config": str(flower_dep.config)})
    called = []
    reply = MpcAggMod()(msg, ctxt, lambda m, c: called.append(m) or m)
    assert reply.has_error() and not called
    assert "mpc-agg ConfigError" in reply.error.reason and "in the clear" in reply.error.reason


def test_mod_submits_delta_with_weight_one_in_noised_rounds(flower_dep: LocalDeployment, round_id: int) -> None:
    """In a noised round the mod submits returned - received with weight 1 (not num-examples) and
    replies with an empty ArrayRecord; the parties' sum holds exactly one unit of weight per client."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.flower import ROUND_KEY, MpcAggMod

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    start, step = np.full(4, 0.5, np.float32), np.array([0.1, -0.1, 0.0, 0.05], np.float32)

    def train(msg: Message, ctxt: Context) -> Message:
        content = RecordDict({"arrays": ArrayRecord([start + step]), "metrics": MetricRecord({"num-examples": 40})})
        return Message(content, reply_to=msg)

    with Coordinator.from_config(flower_dep.config) as coord:
        coord.open_round(round_id, {"0": (4,)}, min_clients=3, clip_norm=1.0, noise_multiplier=0.5)
        for pid in range(3):
            msg = Message(RecordDict({"arrays": ArrayRecord([start]), "config": ConfigRecord({ROUND_KEY: round_id})}),
                          dst_node_id=pid + 1, message_type=MessageType.TRAIN)
            ctxt = Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid}, state=RecordDict(),
                           run_config={"mpc-agg-config": str(flower_dep.config)})
            reply = MpcAggMod()(msg, ctxt, train)
            assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
            assert len(reply.content["arrays"]) == 0 and reply.content["metrics"]["num-examples"] == 40
        result = coord.close_round(round_id)
    assert result.total_weight == 3.0 and len(result.clients) == 3
    assert result.epsilon is not None and result.epsilon > 0

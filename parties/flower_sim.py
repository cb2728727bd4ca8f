"""Run a Flower app folder in Flower's simulation engine inside this process (tests, benchmarks).

``flwr run APP`` builds a FAB, starts a local SuperLink and hands the app to a ``flwr-simulation``
process, which loads the app's components from ``[tool.flwr.app.components]``, fuses
``[tool.flwr.app.config]`` with ``--run-config`` overrides and calls the simulation engine.
:func:`simulate_app` does that last step in this process — same engine (Ray backend), same
run-config fusion, same app loading — without the SuperLink, so a test can run the example in
seconds, see the ServerApp's exceptions and leave no daemon behind.  It uses Flower's internal
``_run_simulation`` as ``flwr-simulation`` does, so it is tied to the pinned flwr==1.42.0.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["simulate_app"]


def simulate_app(app_dir: str | os.PathLike[str], *, num_supernodes: int,
                 run_config: dict[str, Any] | None = None, num_cpus: int | None = None) -> Any:
    """Run the Flower app in ``app_dir`` with ``num_supernodes`` simulated SuperNodes.

    ``run_config`` overrides ``[tool.flwr.app.config]`` like ``flwr run --run-config``.  Returns
    the ServerApp's final Context; an exception the ServerApp raised is raised here.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir, get_project_config
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    app = Path(app_dir).resolve()
    components = get_project_config(app)["tool"]["flwr"]["app"]["components"]
    run = Run.create_empty(run_id=secrets.randbits(63))
    run.override_config = dict(run_config or {})
    run.primary_task_id = secrets.randbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                      run_config=get_fused_config_from_dir(app, run.override_config))
    cpus = num_cpus or os.cpu_count() or 1
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "logging_level": "ERROR"}}
    result = _run_simulation(num_supernodes=num_supernodes, exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
                             server_app_attr=components["serverapp"], client_app_attr=components["clientapp"],
                             backend_config=backend, app_dir=str(app), run=run, server_app_context=context,
                             is_app=True)
    return result.context

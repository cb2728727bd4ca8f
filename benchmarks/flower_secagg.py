"""Flower's SecAgg+ round beside mpc-agg's secure round: same n clients, same d float32 values, one run.

Run from the repository root in the project's ``.venv`` (``make install`` puts flwr 1.42.0 with Ray
there; ``make bench-flower`` runs this)::

    python -m benchmarks.flower_secagg --clients 10 --dim 1000000 --repeat 5 --json out.json

Flower side: SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020) as Flower ships it, the
``SecAggPlusWorkflow`` (``flwr.server.workflow``) as the fit workflow of a ``DefaultWorkflow``
ServerApp and ``secaggplus_mod`` (``flwr.client.mod``) on the ClientApp, run by Flower's
Simulation Engine (``flwr.simulation.run_simulation``, Ray backend) with n virtual SuperNodes,
one CPU per ClientApp actor (so as many actors as CPUs).  Each client returns its fixed float32
vector with weight 1; the workflow uses Flower's defaults (clipping range 8, quantization range 2**22, masks mod 2**32)
except ``max_weight=1`` (so the weight costs no precision), with ``--num-shares`` /
``--threshold`` 3 / 2 as in Flower's secure-aggregation example.  Rounds alternate SecAgg+ /
plain FedAvg (``default_fit_workflow``), the first of each is a warm-up; a round is the
fit workflow's wall time (the server's broadcast of the d-vector model, the clients' fit and,
for SecAgg+, its four stages: setup, share keys, collect masked vectors, unmask), with no
evaluation.  Every Flower aggregate is checked against the float64 mean of the client vectors
(SecAgg+: within one quantization step 2·8/2**22 plus float32 rounding; plain: 1e-6), the
global model being reset to zeros before each round so that a halted workflow cannot pass.
Flower's times include its Simulation Engine's message polling (``InMemoryGrid.pull_interval``
and the SuperNodes' queue, 0.1 s each): roughly 0.1-0.2 s per message exchange, 4 exchanges per
SecAgg+ round and 1 per plain round, whatever d is.  ``run_simulation`` (which Flower now marks
deprecated in favour of ``flwr run``) is used because it is the in-process API of the same engine:
the ServerApp runs in a thread of this process, so its rounds can be timed and checked here.

Flower + mpc-agg (adapter): :func:`benchmarks.flower_adapter.run_adapter`, the same vectors and
engine through ``parties.flower.MpcAggStrategy`` and ``fl_client.flower.MpcAggMod`` (Message API),
k=3 party processes, one warm-up round then ``--repeat`` rounds.

mpc-agg side: :func:`benchmarks.rounds.run_main` on the same vectors (k=3 parties, CURVE
ZeroMQ on loopback), after the Flower run has ended; it alternates secure / plaintext (float32 FedAvg) rounds
after one warm-up of each and checks both averages itself.

Reported: the median of ``--repeat`` rounds of each kind and the ratios Flower SecAgg+ /
mpc-agg secure and Flower SecAgg+ / Flower + mpc-agg (adapter).  If flwr (with Ray) is not
importable this prints how to install it and exits 0 with status "skipped".
``benchmarks.rounds`` (mpc_agg, torch) is imported only in the driver, so that the Ray actors,
which load this module's client code, stay small.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import numpy.typing as npt

from .common import check_repo, positive_int, write_json

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.client import Client
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.serverapp import Grid

__all__ = ["main", "run"]

MODULE = "benchmarks.flower_secagg"
INSTALL_HINT = "run it in the project's .venv (`make install` installs flwr[simulation]==1.42.0 there)"
PARTIES = 3
CLIPPING_RANGE = 8.0  # Flower's defaults, except max_weight
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
MAX_WEIGHT = 1.0  # each client sends weight (num_examples) 1
SECAGG_TOLERANCE = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE + CLIPPING_RANGE * 2.0**-23
"""One quantization step, plus the float32 rounding of ``x + clipping_range`` in Flower's quantize."""
PLAIN_TOLERANCE = 1e-6  # float32 FedAvg of n values |x| << 1


def flower_missing() -> str | None:
    """Why Flower's simulation engine cannot run here, or None."""
    for mod, what in (("flwr", "flwr"), ("ray", "ray (flwr's [simulation] extra)")):
        if importlib.util.find_spec(mod) is None:
            return f"{what} is not importable"
    return None


# --- client side (runs in the Ray actors: numpy and flwr only) ---------------------------------

@dataclass(frozen=True)
class VectorClientFn:
    """``client_fn``: client ``partition-id`` holds row ``partition-id`` of the (n, d) float32 .npy file."""

    data_path: str

    def __call__(self, context: Context) -> Client:
        from flwr.client import NumPyClient

        row = int(context.node_config["partition-id"])
        vector = np.array(np.load(self.data_path, mmap_mode="r")[row])

        class VectorClient(NumPyClient):
            def get_parameters(self, config: dict[str, Any]) -> list[npt.NDArray[np.float32]]:
                return [vector]

            def fit(self, parameters: list[npt.NDArray[Any]], config: dict[str, Any]
                    ) -> tuple[list[npt.NDArray[np.float32]], int, dict[str, Any]]:
                return [vector], 1, {}

        return VectorClient().to_client()


def secaggplus_if_configured(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """``secaggplus_mod`` for SecAgg+ messages; plain FedAvg fit messages go straight to the client."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


# --- server side (a thread of this process) ------------------------------------------------------

@dataclass
class FlowerRounds:
    """Per kind ("secagg", "plain"): each round's seconds and max |aggregate - mean|, warm-up included."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {"secagg": [], "plain": []})
    errors: dict[str, list[float]] = field(default_factory=lambda: {"secagg": [], "plain": []})


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Timeout()


def quiet_env() -> None:
    """No telemetry from Flower or Ray; no accelerator FutureWarning (no GPUs used)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def simulate(server_app: Any, client_app: Any, supernodes: int, total_s: int) -> None:
    """``run_simulation`` with one CPU per ClientApp actor, bounded by ``total_s`` (SIGALRM)."""
    import ray
    from flwr.simulation import run_simulation

    backend: dict[str, dict[str, Any]] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},  # an actor per CPU
                                          "init_args": {"num_cpus": os.cpu_count() or 1, "logging_level": "ERROR"}}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(total_s)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=supernodes,
                       backend_config=backend)
    except _Timeout:
        raise TimeoutError(f"the Flower simulation did not finish in {total_s} s") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if ray.is_initialized():
            ray.shutdown()


def run_flower(data_path: Path, expected: npt.NDArray[np.float64], repeat: int, num_shares: int,
               threshold: int, timeout_s: float) -> FlowerRounds:
    """(repeat + 1) SecAgg+ rounds alternating with as many plain FedAvg rounds in one simulation."""
    quiet_env()
    from flwr.app import ArrayRecord
    from flwr.client import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
    from flwr.server.workflow.default_workflows import default_fit_workflow

    n = int(np.load(data_path, mmap_mode="r").shape[0])
    zeros = [np.zeros(expected.shape[0], dtype=np.float32)]
    secagg = SecAggPlusWorkflow(num_shares, threshold, max_weight=MAX_WEIGHT, clipping_range=CLIPPING_RANGE,
                                quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE,
                                timeout=timeout_s)
    rounds = FlowerRounds()

    def fit(grid: Grid, context: Context) -> None:
        kind = "secagg" if sum(map(len, rounds.seconds.values())) % 2 == 0 else "plain"
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(zeros)  # a halted round fails the check
        t0 = time.perf_counter()
        (secagg if kind == "secagg" else default_fit_workflow)(grid, context)
        seconds = time.perf_counter() - t0
        aggregate = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
        rounds.seconds[kind].append(seconds)
        rounds.errors[kind].append(float(np.max(np.abs(aggregate.astype(np.float64) - expected))))

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                          initial_parameters=ndarrays_to_parameters(zeros), fit_metrics_aggregation_fn=lambda m: {})
        legacy = LegacyContext(context=context, strategy=strategy,
                               config=ServerConfig(num_rounds=2 * (repeat + 1), round_timeout=timeout_s))
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    client_app = ClientApp(client_fn=VectorClientFn(str(data_path)), mods=[secaggplus_if_configured])
    simulate(server_app, client_app, n, int(timeout_s * (4 * 2 * (repeat + 1) + 2)))  # every stage, + start-up
    done = {k: len(v) for k, v in rounds.seconds.items()}
    if done != {"secagg": repeat + 1, "plain": repeat + 1}:
        raise RuntimeError(f"Flower ran {done} rounds, expected {repeat + 1} of each")
    tolerance = {"secagg": SECAGG_TOLERANCE, "plain": PLAIN_TOLERANCE}
    for kind, errs in rounds.errors.items():
        if max(errs) > tolerance[kind]:
            raise RuntimeError(f"Flower {kind} aggregate is wrong: max |aggregate - mean| {max(errs):.3e} "
                               f"(tolerance {tolerance[kind]:.1e})")
    return rounds


# --- the run ---------------------------------------------------------------------------------------

def run(clients: int, dim: int, repeat: int, num_shares: int, threshold: int, timeout_s: float) -> dict[str, Any]:
    """Flower SecAgg+ and plain rounds, then mpc-agg secure and plaintext rounds; the JSON report."""
    import flwr
    import ray

    from benchmarks.flower_adapter import run_adapter
    from benchmarks.rounds import make_updates, run_main

    updates32 = make_updates(clients, dim, seed=0)  # float32, as every row of this comparison sends
    expected = updates32.mean(axis=0, dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-flower-") as tmp:
        data_path = Path(tmp) / "updates.npy"
        np.save(data_path, updates32)
        print(f"Flower {flwr.__version__} simulation (Ray {ray.__version__}): {clients} clients, d={dim:,}, "
              f"{repeat} repeats + 1 warm-up, SecAgg+ num_shares={num_shares} threshold={threshold}", flush=True)
        flower = run_flower(data_path, expected, repeat, num_shares, threshold, timeout_s)
        print(f"Flower + mpc-agg adapter: {clients} clients, {PARTIES} parties, {repeat} repeats + 1 warm-up",
              flush=True)
        adapter_s, adapter_err = run_adapter(Path(tmp) / "adapter", data_path, expected, repeat, timeout_s)
        print(f"mpc-agg: {clients} clients, {PARTIES} parties, d={dim:,}, {repeat} repeats + 1 warm-up", flush=True)
        ours = run_main(Path(tmp) / "mpc-agg", updates32, PARTIES, repeat, timeout_s)
    samples = {
        "flower_secagg_round_s": flower.seconds["secagg"][1:],
        "flower_plain_round_s": flower.seconds["plain"][1:],
        "flower_mpc_agg_adapter_round_s": adapter_s[1:],
        "mpc_agg_secure_round_s": [t.total_s for t in ours.secure],
        "mpc_agg_plaintext_round_s": [t.total_s for t in ours.plaintext],
    }
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "status": "ok",
        **med,
        "ratio_flower_secagg_over_mpc_agg_secure": med["flower_secagg_round_s"] / med["mpc_agg_secure_round_s"],
        "ratio_flower_secagg_over_adapter": med["flower_secagg_round_s"] / med["flower_mpc_agg_adapter_round_s"],
        "max_abs_error": {"flower_secagg": max(flower.errors["secagg"]), "flower_plain": max(flower.errors["plain"]),
                          "flower_mpc_agg_adapter": max(adapter_err),
                          "mpc_agg_secure": ours.max_abs_error["secure"],
                          "mpc_agg_plaintext": ours.max_abs_error["plaintext"]},
        "samples": samples,
        "warmup_s": {"flower_secagg": flower.seconds["secagg"][0], "flower_plain": flower.seconds["plain"][0],
                     "flower_mpc_agg_adapter": adapter_s[0]},
        "params": {"clients": clients, "dim": dim, "repeat": repeat, "parties": PARTIES, "dtype": "float32",
                   "flwr": flwr.__version__, "ray": ray.__version__, "engine": "flwr.simulation.run_simulation (ray)",
                   "client_actor_cpus": 1, "cpus": os.cpu_count(), "num_shares": num_shares,
                   "reconstruction_threshold": threshold, "clipping_range": CLIPPING_RANGE,
                   "quantization_range": QUANTIZATION_RANGE, "modulus_range": MODULUS_RANGE,
                   "max_weight": MAX_WEIGHT},
    }


def print_report(rep: dict[str, Any]) -> None:
    p, s = rep["params"], rep["samples"]
    print(f"\nn={p['clients']} clients, d={p['dim']:,} float32, {p['repeat']} repeats (median, min, max in s); "
          f"Flower {p['flwr']} SecAgg+ num_shares={p['num_shares']} threshold={p['reconstruction_threshold']}, "
          f"mpc-agg k={p['parties']}")
    labels = {"flower_secagg_round_s": "Flower SecAgg+", "flower_plain_round_s": "Flower plain FedAvg",
              "flower_mpc_agg_adapter_round_s": "Flower + mpc-agg (adapter)",
              "mpc_agg_secure_round_s": f"mpc-agg secure (k={p['parties']})",
              "mpc_agg_plaintext_round_s": "mpc-agg plaintext (float32)"}
    print(f"{'':28s}{'median':>10s}{'min':>10s}{'max':>10s}")
    for key, label in labels.items():
        print(f"{label:28s}{statistics.median(s[key]):10.3f}{min(s[key]):10.3f}{max(s[key]):10.3f}")
    print(f"ratio Flower SecAgg+ / mpc-agg secure: {rep['ratio_flower_secagg_over_mpc_agg_secure']:.2f}; "
          f"Flower SecAgg+ / Flower + mpc-agg (adapter): {rep['ratio_flower_secagg_over_adapter']:.2f}")
    print("max |aggregate - mean|: " + ", ".join(f"{k} {v:.2e}" for k, v in rep["max_abs_error"].items()))


def main(argv: list[str] | None = None, *, missing_reason: Callable[[], str | None] = flower_missing) -> int:
    """The command line; ``missing_reason`` says why Flower cannot run here (None: it can)."""
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=positive_int, default=10)
    p.add_argument("--dim", type=positive_int, default=1_000_000, help="float32 values per client")
    p.add_argument("--repeat", type=positive_int, default=5, help="timed rounds of each kind (after 1 warm-up)")
    p.add_argument("--num-shares", type=int, default=3, help="SecAgg+ neighbourhood size (Flower: > 2)")
    p.add_argument("--threshold", type=int, default=2, help="SecAgg+ reconstruction threshold (< num-shares)")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on every wait, in seconds")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    if not 3 <= args.clients < MODULUS_RANGE // QUANTIZATION_RANGE:
        p.error(f"--clients must be in [3, {MODULUS_RANGE // QUANTIZATION_RANGE - 1}] (SecAgg+ sums mod 2**32)")
    if not 2 < args.num_shares <= args.clients or not 1 < args.threshold < args.num_shares:
        p.error("need 2 < --num-shares <= --clients and 1 < --threshold < --num-shares")
    check_repo(MODULE)
    params = {"clients": args.clients, "dim": args.dim, "repeat": args.repeat}
    missing = missing_reason()
    if missing is not None:
        print(f"{MODULE}: skipped: {missing}; {INSTALL_HINT}", flush=True)
        write_json(args.json, {"status": "skipped", "reason": f"{missing}; {INSTALL_HINT}", "params": params})
        return 0
    rep = run(args.clients, args.dim, args.repeat, args.num_shares, args.threshold, args.timeout)
    print_report(rep)
    write_json(args.json, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

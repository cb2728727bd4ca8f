"""``mpc-agg selftest``: one secure round checked against plaintext FedAvg, on a throwaway deployment
(``run_selftest``) or on a running one (``check_deployment``, which only reads its config and keys)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from fl_client import SecureAggClient
from mpc_agg.config import Deployment
from mpc_agg.errors import AggregationTimeout, ConfigError
from mpc_agg.sharing import dense_party

from .coordinator import Coordinator
from .launcher import LocalDeployment

__all__ = ["run_selftest", "check_deployment"]


def _step(msg: str) -> None:
    print(f"  • {msg}", flush=True)


def _check_round(config: str | os.PathLike[str], round_id: int, clients: list[str], dim: int,
                 min_clients: int) -> bool:
    """Open ``round_id``, submit one random update per client, close it and compare with plaintext FedAvg.

    With a dealer in the deployment, and every party's consent to verified rounds (``allow_verify_norm``),
    the round is opened with ``verify_norm`` (weights are then 1, and the selftest's clients, whose data is
    random, consent too), so the dealer and the parties' norm check are exercised as well."""
    t0 = time.monotonic()
    dep = Deployment.load(config)
    verify = dep.dealer_endpoint is not None and all(p.allow_verify_norm for p in dep.parties)
    rng = np.random.default_rng()
    shapes = {"layer.weight": (dim // 10, 10), "layer.bias": (dim - (dim // 10) * 10 or 1,)}
    with Coordinator.from_config(config) as coord:
        clip = 2 * 0.01 * dim**0.5 + 1  # well above the norm of these updates, well inside the ring
        spec = coord.open_round(round_id, shapes=shapes, min_clients=min_clients,
                                clip_norm=clip if verify else None, verify_norm=verify)
        _step(f"coordinator opened round {round_id} at every party ({time.monotonic() - t0:.1f} s)"
              f"{', norms verified in MPC (dealer)' if verify else ''}")
        updates, weights = [], []
        for cid in clients:
            upd = {n: rng.normal(0, 0.01, size=s) for n, s in shapes.items()}
            w = 1.0 if verify else float(rng.integers(10, 100))
            with SecureAggClient.from_config(config, cid, min_colluders=spec.colluders) as c:
                rid = c.submit(round_id, upd, weight=w)
            updates.append(upd)
            weights.append(w)
            dense = dense_party(spec, bytes.fromhex(rid), len(dep.parties))
            _step(f"{cid} (weight {w:.0f}) sent an int64 share to party {dense} and a 32-byte seed to each other "
                  f"party; report {rid[:8]}…")
        t1 = time.monotonic()
        result = coord.close_round(round_id, timeout_s=60)
        _step(f"parties agreed on a cohort of {len(result.clients)} over their CrypTen ZeroMQ communicator "
              f"and revealed only their sum shares ({time.monotonic() - t1:.2f} s)")
    wsum = sum(weights)
    worst = 0.0
    for n in shapes:
        plain = sum(w * u[n] for w, u in zip(weights, updates)) / wsum
        worst = max(worst, float(np.max(np.abs(result.average[n].numpy() - plain))))
    bound = len(clients) * 2.0 ** -spec.frac_bits
    ok = worst <= bound and abs(result.total_weight - wsum) < 1e-3 and not result.rejected
    _step(f"coordinator decoded the weighted average (total weight {result.total_weight:.0f})")
    print(f"check: max |secure - plaintext FedAvg| = {worst:.3e} (bound n·2^-{spec.frac_bits} = "
          f"{bound:.3e}) → {'PASSED' if ok else 'FAILED'}")
    return ok


def run_selftest(*, parties: int = 3, clients: int = 5, dim: int = 100_000, workdir: str | None = None) -> int:
    """Run k party processes + dealer in a new deployment, n clients, one round; return 0 if the check passes.

    ``workdir`` must not hold a deployment already (ConfigError: it is never overwritten)."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mpc-agg-selftest-")
        workdir = tmp.name
    print(f"mpc-agg selftest: {parties} parties, {clients} clients, {dim:,} parameters, all on loopback")
    try:
        t0 = time.monotonic()
        with LocalDeployment(workdir, parties=parties, clients=clients, min_clients=min(3, clients),
                             allow_verify_norm=True) as ld:
            _step(f"generated CURVE keys and {ld.config} (private keys mode 0600)")
            _step(f"started {parties} party processes and a dealer (logs in {ld.log_dir})")
            ok = _check_round(ld.config, 1, [f"client-{i}" for i in range(clients)], dim, min(3, clients))
            codes = ld.stop()
            _step(f"parties stopped cleanly on SIGTERM: exit codes {sorted(set(codes.values()))}")
        print(f"done in {time.monotonic() - t0:.1f} s")
        return 0 if ok and set(codes.values()) == {0} else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


def check_deployment(config: str | os.PathLike[str], *, dim: int = 100_000) -> int:
    """One round through the running parties of ``config`` as its coordinator and clients; 0 if it passes.

    Needs the coordinator's and enough clients' key files (as ``keygen`` writes them).  The config and
    keys are only read; the parties record the round like any other, under a fresh random id (printed)."""
    dep = Deployment.load(config)
    floor = max(p.min_clients for p in dep.parties)
    clients = [c.id for c in dep.clients][:max(floor, 5)]
    if len(clients) < floor:
        raise ConfigError(f"{config}: {len(clients)} clients listed, the parties' floor is {floor}")
    round_id = (1 << 61) | (int.from_bytes(os.urandom(8), "big") >> 3)  # never one an operator would pick
    print(f"mpc-agg selftest: the running deployment {config} ({len(dep.parties)} parties, "
          f"{len(clients)} of its clients, {dim:,} parameters)")
    t0 = time.monotonic()
    with Coordinator.from_config(config) as coord:
        try:
            coord.status(timeout_s=10)
        except AggregationTimeout as exc:
            raise AggregationTimeout(f"{exc}: is every `mpc-agg party --config {config} --id I` running?") from None
    _step(f"all {len(dep.parties)} parties answered ({time.monotonic() - t0:.1f} s)")
    ok = _check_round(config, round_id, clients, dim, floor)
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1

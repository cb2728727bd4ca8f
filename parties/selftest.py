"""``mpc-agg selftest``: one secure round on loopback, checked against plaintext FedAvg."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from fl_client import SecureAggClient
from mpc_agg.fixedpoint import DEFAULT_FRAC_BITS

from .coordinator import Coordinator
from .launcher import LocalDeployment

__all__ = ["run_selftest"]


def _step(msg: str) -> None:
    print(f"  • {msg}", flush=True)


def run_selftest(*, parties: int = 3, clients: int = 5, dim: int = 100_000, workdir: str | None = None) -> int:
    """Run k party processes + dealer, n clients, one round; return 0 if the check passes."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mpc-agg-selftest-")
        workdir = tmp.name
    print(f"mpc-agg selftest: {parties} parties, {clients} clients, {dim:,} parameters, all on loopback")
    try:
        t0 = time.monotonic()
        with LocalDeployment(workdir, parties=parties, clients=clients, min_clients=min(3, clients)) as ld:
            _step(f"generated CURVE keys and {ld.config} (private keys mode 0600)")
            _step(f"started {parties} party processes and a dealer (logs in {ld.log_dir})")
            rng = np.random.default_rng()
            shapes = {"layer.weight": (dim // 10, 10), "layer.bias": (dim - (dim // 10) * 10 or 1,)}
            with Coordinator.from_config(ld.config) as coord:
                coord.open_round(1, shapes=shapes, min_clients=min(3, clients), clip_norm=None)
                _step(f"coordinator opened round 1 at every party ({time.monotonic() - t0:.1f} s incl. start-up)")
                updates, weights = [], []
                for i in range(clients):
                    upd = {n: rng.normal(0, 0.01, size=s) for n, s in shapes.items()}
                    w = float(rng.integers(10, 100))
                    with SecureAggClient.from_config(ld.config, f"client-{i}") as c:
                        rid = c.submit(1, upd, weight=w)
                    updates.append(upd)
                    weights.append(w)
                    _step(f"client-{i} (weight {w:.0f}) sent an int64 share to party 0 and a 32-byte seed to each "
                          f"helper; report {rid[:8]}…")
                t1 = time.monotonic()
                result = coord.close_round(1, timeout_s=60)
                _step(f"parties agreed on a cohort of {len(result.clients)} over their CrypTen ZeroMQ communicator "
                      f"and revealed only their sum shares ({time.monotonic() - t1:.2f} s)")
            wsum = sum(weights)
            worst = 0.0
            for n in shapes:
                plain = sum(w * u[n] for w, u in zip(weights, updates)) / wsum
                worst = max(worst, float(np.max(np.abs(result.average[n].numpy() - plain))))
            bound = clients * 2.0 ** -DEFAULT_FRAC_BITS
            ok = worst <= bound and abs(result.total_weight - wsum) < 1e-3
            _step(f"coordinator decoded the weighted average (total weight {result.total_weight:.0f})")
            print(f"check: max |secure - plaintext FedAvg| = {worst:.3e} (bound n·2^-{DEFAULT_FRAC_BITS} = "
                  f"{bound:.3e}) → {'PASSED' if ok else 'FAILED'}")
            codes = ld.stop()
            _step(f"parties stopped cleanly on SIGTERM: exit codes {sorted(set(codes.values()))}")
        print(f"done in {time.monotonic() - t0:.1f} s")
        return 0 if ok and set(codes.values()) == {0} else 1
    finally:
        if tmp is not None:
            tmp.cleanup()

"""``mpc-agg`` command line: keygen, party, dealer, status, demo."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from mpc_agg.errors import MpcAggError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpc-agg", description="Secure aggregation for federated learning.")
    sub = p.add_subparsers(dest="cmd", required=True)

    k = sub.add_parser("keygen", help="write deployment.toml and CURVE key files for a deployment")
    k.add_argument("--out", required=True, help="directory to write deployment.toml and keys/ into")
    k.add_argument("--parties", type=int, default=3)
    k.add_argument("--clients", type=int, default=3)
    k.add_argument("--min-clients", type=int, default=3, help="each party's cohort floor")
    k.add_argument("--hosts", default=None, help="comma-separated host per party (default: 127.0.0.1)")
    k.add_argument("--base-port", type=int, default=None, help="first port (default: free ports)")
    k.add_argument("--no-dealer", action="store_true", help="omit the dealer (no MPC multiplication)")

    a = sub.add_parser("party", help="run one aggregator party until SIGTERM")
    a.add_argument("--config", required=True)
    a.add_argument("--id", type=int, required=True)

    d = sub.add_parser("dealer", help="run the correlated-randomness dealer until SIGTERM")
    d.add_argument("--config", required=True)

    s = sub.add_parser("status", help="print every party's health as JSON (uses the coordinator key)")
    s.add_argument("--config", required=True)
    s.add_argument("--timeout", type=float, default=10.0)

    m = sub.add_parser("demo", help="run a secure round on loopback and check it against plaintext FedAvg")
    m.add_argument("--parties", type=int, default=3)
    m.add_argument("--clients", type=int, default=5)
    m.add_argument("--dim", type=int, default=100_000)
    m.add_argument("--workdir", default=None, help="where to write keys and state (default: a temp dir)")
    for q in (k, a, d, s, m):
        q.add_argument("-v", "--verbose", action="store_true", help="log every event")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.cmd in ("party", "dealer") else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.cmd in ("party", "dealer"):
        # SIGTERM while still starting up (imports take seconds): exit cleanly at once.
        # The serving loop replaces this with a handler that drains the current request.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.cmd == "keygen":
            from mpc_agg.config import generate_deployment

            hosts = args.hosts.split(",") if args.hosts else None
            path = generate_deployment(args.out, parties=args.parties, clients=args.clients,
                                       min_clients=args.min_clients, hosts=hosts, base_port=args.base_port,
                                       with_dealer=not args.no_dealer)
            print(path)
            return 0
        if args.cmd == "party":
            from parties.party import run_party

            return run_party(args.config, args.id)
        if args.cmd == "dealer":
            from parties.dealer import run_dealer

            return run_dealer(args.config)
        if args.cmd == "status":
            from parties.coordinator import Coordinator

            with Coordinator.from_config(args.config) as c:
                print(json.dumps(c.status(timeout_s=args.timeout), indent=2))
            return 0
        if args.cmd == "demo":
            from parties.demo import run_demo

            return run_demo(parties=args.parties, clients=args.clients, dim=args.dim, workdir=args.workdir)
    except MpcAggError as exc:
        print(f"mpc-agg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

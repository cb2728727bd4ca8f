"""``mpc-agg`` command line: keygen, party, dealer, status, selftest, demo, experiments."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from mpc_agg.errors import MpcAggError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    """Every subcommand and option, one add_argument each (long, and flat on purpose: it reads as the --help)."""
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
    k.add_argument("--force", action="store_true",
                   help="replace a deployment already in --out (deletes its keys and party state)")

    a = sub.add_parser("party", help="run one aggregator party until SIGTERM")
    a.add_argument("--config", required=True)
    a.add_argument("--id", type=int, required=True)

    d = sub.add_parser("dealer", help="run the correlated-randomness dealer until SIGTERM")
    d.add_argument("--config", required=True)

    s = sub.add_parser("status", help="print every party's health as JSON (uses the coordinator key)")
    s.add_argument("--config", required=True)
    s.add_argument("--timeout", type=float, default=10.0)

    t = sub.add_parser("selftest", help="run one secure round and check it against plaintext FedAvg")
    t.add_argument("--config", default=None,
                   help="check this running deployment (its parties must be up; its config and keys are "
                        "only read) instead of a throwaway one on loopback")
    t.add_argument("--parties", type=int, default=3, help="throwaway deployment: parties")
    t.add_argument("--clients", type=int, default=5, help="throwaway deployment: clients")
    t.add_argument("--dim", type=int, default=100_000)
    t.add_argument("--workdir", default=None,
                   help="throwaway deployment: a new directory for its keys and state (default: a temp dir)")

    m = sub.add_parser("demo", help="federated fine-tuning of a DeepSeek-architecture LM through the secure aggregator")
    m.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    m.add_argument("--parties", type=int, default=3, help="aggregator party processes (default 3)")
    m.add_argument("--rounds", type=int, default=8)
    m.add_argument("--local-steps", type=int, default=20, help="AdamW steps per client per round")
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--lr", type=float, default=1e-3, help="client learning rate")
    m.add_argument("--max-length", type=int, default=64, help="tokens per example (padding/truncation)")
    m.add_argument("--lora", action="store_true", help="train LoRA adapters only (peft); only they travel")
    m.add_argument("--lora-rank", type=int, default=8)
    m.add_argument("--model", default=None, help="a save_pretrained directory (default: tiny DeepSeek-V3)")
    m.add_argument("--data", default=None, help="directory with one sub-folder or .txt file per client")
    m.add_argument("--tokenizer", choices=["auto", "bert", "byt5"], default="auto")
    m.add_argument("--noise-multiplier", type=float, default=0.0, help="z: sum noise std = z * clip norm")
    m.add_argument("--clip-norm", type=float, default=None, help="L2 bound C per client update")
    m.add_argument("--delta", type=float, default=1e-5, help="delta of the reported (epsilon, delta)")
    m.add_argument("--frac-bits", type=int, default=None)
    m.add_argument("--server-opt", choices=["fedavg", "fedadam"], default="fedavg")
    m.add_argument("--server-lr", type=float, default=1.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--workdir", default="demo-out/run",
                   help="new, empty or an earlier demo's directory: deployment, scratch files, saved models "
                        "(default demo-out/run)")
    m.add_argument("--report", default="demo-out/report.json", help="JSON report; the PNG plot goes beside it")
    x = sub.add_parser("experiments", help="centralised vs local vs federated (plain, secure, DP): perplexity, "
                       "unseen data, attacks; offline, on the shipped corpus by default")
    x.add_argument("--quick", action="store_true",
                   help="one seed, 6 rounds (about 6 min on 2 cores; the full run about 17)")
    x.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the test suite's tiny run
    x.add_argument("--out", default="experiments-out", help="where to write the JSON, table and plots")
    x.add_argument("--data", default=None, help="one sub-folder or .txt per topic; the last is the unseen one")
    x.add_argument("--model", default=None, help="a save_pretrained directory (default: tiny DeepSeek-V3)")
    x.add_argument("--seeds", type=int, default=None, help="seeds (default 3; 1 with --quick)")
    for q in (k, a, d, s, t, m, x):
        q.add_argument("-v", "--verbose", action="store_true", help="log every event")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from mpc_agg.logs import configure

    configure(logging.INFO if args.verbose or args.cmd in ("party", "dealer") else logging.WARNING)
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
                                       with_dealer=not args.no_dealer, force=args.force)
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
        if args.cmd == "selftest":
            from parties.selftest import check_deployment, run_selftest

            if args.config is not None:
                return check_deployment(args.config, dim=args.dim)
            return run_selftest(parties=args.parties, clients=args.clients, dim=args.dim, workdir=args.workdir)
        if args.cmd == "demo":
            return _demo(args)
        if args.cmd == "experiments":
            from parties.experiments.runner import run_from_args

            return run_from_args(args)
    except MpcAggError as exc:
        print(f"mpc-agg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _demo(args: argparse.Namespace) -> int:
    import math
    import os
    from pathlib import Path

    # the demo shows its own progress; transformers' per-load bars (from every client process) would
    # only interleave with the table.  Set before transformers is imported here or in the children.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    from mpc_agg.fixedpoint import DEFAULT_FRAC_BITS
    from parties.demo.federated import FedConfig, run_federated

    cfg = FedConfig(workdir=args.workdir, clients=args.clients, parties=args.parties, rounds=args.rounds,
                    local_steps=args.local_steps, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                    lora=args.lora, lora_rank=args.lora_rank, model=args.model, data=args.data,
                    tokenizer=args.tokenizer, noise_multiplier=args.noise_multiplier, clip_norm=args.clip_norm,
                    delta=args.delta, frac_bits=args.frac_bits, server_opt=args.server_opt,
                    server_lr=args.server_lr, seed=args.seed, report=args.report)
    report = run_federated(cfg)
    rows = report["rounds"]
    first, last = report["initial"]["eval_perplexity"], rows[-1]["eval_perplexity"]
    print(f"held-out perplexity {first:,.1f} → {last:,.1f} after {len(rows)} rounds "
          f"({100 * (1 - last / first):.1f}% lower); report {args.report}, plot "
          f"{Path(args.report).with_suffix('.png')}, model {report.get('model_dir')}")
    diffs = [r["max_abs_diff_vs_plaintext"] for r in rows if r["max_abs_diff_vs_plaintext"] is not None]
    noised = args.noise_multiplier > 0
    # noise may outweigh a few clients' updates: explained below, not a failure
    ok = math.isfinite(last) and (last < first or noised)
    if diffs:
        frac_bits = args.frac_bits if args.frac_bits is not None else DEFAULT_FRAC_BITS
        bound = args.clients * 2.0**-frac_bits
        ok = ok and max(diffs) <= bound
        what = "clipped deltas (as submitted)" if args.clip_norm is not None else "the same deltas"
        print(f"secure average vs plaintext FedAvg of {what}: max |difference| {max(diffs):.2e} over all rounds "
              f"(bound n·2^-{frac_bits} = {bound:.2e})")
    if noised:
        print(f"noised run: the average carries DP noise of std >= z·C/n = "
              f"{args.noise_multiplier * args.clip_norm / args.clients:.2e} per coordinate, so it is not compared "
              "with plaintext" + ("" if last < first else "; here the noise outweighed the clients' updates and "
                                  "perplexity rose (more clients, a smaller z or a larger C help)"))
    print(f"check: {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

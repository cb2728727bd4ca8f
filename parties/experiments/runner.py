"""``mpc-agg experiments``: centralised vs local-only vs FedAvg (plain, secure) vs secure + DP, per seed.

Every seed trains each setting from the same starting model, then measures held-out perplexity on the seen
topics and on the unseen one, rounds and seconds to reach 1.1× the centralised perplexity, membership inference
against the final model and the token-set attack on what the server sees (README.md, "What the experiments
show").  Secure rounds go through real party processes (``parties.launcher.LocalDeployment``) and the client API.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from fl_client.training import evaluate
from mpc_agg.errors import ConfigError

from ..demo.federated import ServerOptimizer
from ..launcher import LocalDeployment
from . import attacks
from .measure import make_row, mean_membership, membership, reference_losses
from .sim import PlainAggregator, SecureAggregator, Trace, pool, run_centralised, run_fedavg, run_local_only
from .workload import Workload, dp_model, prepare, split_clients

__all__ = ["ExperimentConfig", "PRESETS", "run_experiments"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of one run; ``PRESETS`` holds the full run, ``--quick`` and the test suite's smoke run."""

    seeds: int = 3
    rounds: int = 8
    local_steps: int = 10
    batch_size: int = 8
    lr: float = 2e-3
    max_length: int = 64
    eval_fraction: float = 0.2
    parties: int = 3
    threads: int = 2
    tokenizer: str = "auto"
    data: str | None = None
    model: str | None = None
    reference_models: bool = True
    # secure + DP (README.md, "What the experiments show"): many small clients (each topic split 32 ways) with
    # one local SGD step each, a rank-1 LoRA on the output head plus the final norm, tight clipping, FedAdam
    dp_noise_multipliers: tuple[float, ...] = (1.0, 2.0)
    dp_clients_per_topic: int = 32
    dp_rounds: int = 12
    dp_local_steps: int = 1
    dp_batch_size: int = 4
    dp_local_opt: str = "sgd"
    dp_lr: float = 1.0
    dp_clip_norm: float = 0.1
    dp_rank: int = 1
    dp_server_opt: str = "fedadam"
    dp_server_lr: float = 0.1
    delta: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("seeds", "threads", "rounds", "local_steps", "batch_size", "max_length", "dp_clients_per_topic",
                     "dp_rounds", "dp_local_steps", "dp_batch_size", "dp_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.parties < 2:
            raise ConfigError("parties must be >= 2")
        if not self.dp_noise_multipliers or min(self.dp_noise_multipliers) <= 0:
            raise ConfigError("secure-dp needs noise multipliers > 0")
        if self.dp_local_opt not in ("sgd", "adamw") or self.dp_server_opt not in ("fedavg", "fedadam"):
            raise ConfigError("dp_local_opt is sgd or adamw; dp_server_opt is fedavg or fedadam")


PRESETS: dict[str, ExperimentConfig] = {
    "full": ExperimentConfig(),
    "quick": ExperimentConfig(seeds=1, rounds=6),
    # the test suite's run: byte tokenizer, a few steps; it checks structure and secure == plain, not findings
    "smoke": ExperimentConfig(seeds=1, rounds=2, local_steps=2, batch_size=4, max_length=32, tokenizer="byt5",
                              dp_clients_per_topic=2, dp_rounds=2, dp_batch_size=4, threads=1),
}


def _local_only_row(seed: int, traces: list[Trace], wl: Workload, target: float,
                    ref: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """Mean over clients (worst client alongside); each model attacked on its own topic's chunks."""
    sizes = [c["input_ids"].shape[0] for c in wl.clients]
    held = [h["input_ids"].shape[0] for h in wl.held_out]
    mias = []
    for i, t in enumerate(traces):
        r = None if ref is None else (ref[0][_span(sizes, i)], ref[1][_span(held, i)])
        mias.append(membership(t.model, wl.clients[i], wl.held_out[i], r))
    mean = Trace(None, [float(x) for x in np.mean([t.ppl for t in traces], axis=0)],
                 [float(x) for x in np.mean([t.seconds for t in traces], axis=0)])
    unseen = [evaluate(t.model, wl.unseen)[1] for t in traces]
    return make_row("local-only", seed, mean, wl, target, mean_membership(mias), ppl_unseen=float(np.mean(unseen)),
                    ppl_seen_worst=max(t.ppl[-1] for t in traces), ppl_unseen_worst=max(unseen))


def _span(sizes: list[int], i: int) -> slice:
    return slice(sum(sizes[:i]), sum(sizes[:i + 1]))


def _noised_token_attack(config: str, wl: Workload, deltas: list[dict[str, torch.Tensor]], z: float,
                         first_round: int, delta: float) -> dict[str, Any]:
    """Round 1's full-model client deltas through one secure round with distributed DP at noise ``z`` (clip:
    their median norm); the attacker keeps the embedding rows whose norm beats the noise
    (attacks.noise_row_threshold)."""
    n = len(deltas)
    clip = float(np.median([float(torch.sqrt(sum((v.double() ** 2).sum() for v in d.values()))) for d in deltas]))
    with SecureAggregator(config, [f"client-{i}" for i in range(n)], min_clients=n, clip_norm=clip,
                          noise_multiplier=z, delta=delta, first_round=first_round) as agg:
        avg = agg(1, deltas, [1.0] * n)
    rows = avg[wl.embed_name].numpy()
    guess = attacks.touched_rows(rows, attacks.noise_row_threshold(z * clip / n, rows.shape[1], rows.shape[0]))
    p, r = attacks.mean_precision_recall([guess] * n, wl.token_sets)
    return {"token_precision": p, "token_recall": r, "token_attack_clip_norm": clip,
            "token_attack_epsilon": agg.epsilon}


def _seed_rows(wl: Workload, cfg: ExperimentConfig, seed: int, config: str, round_ids: Iterator[int],
               ref: tuple[np.ndarray, np.ndarray] | None, say: Say) -> Iterator[dict[str, Any]]:
    common = dict(rounds=cfg.rounds, local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                  say=say)
    n, members = len(wl.clients), pool(wl.clients)
    ids = [f"client-{i}" for i in range(n)]
    cen = run_centralised(wl.init, wl.clients, wl.seen_eval, **common)
    target = 1.1 * cen.ppl[-1]
    yield make_row("centralised", seed, cen, wl, target, membership(cen.model, members, wl.seen_eval, ref))
    yield _local_only_row(seed, run_local_only(wl.init, wl.clients, wl.seen_eval, **common), wl, target, ref)
    plain = run_fedavg(wl.init, wl.clients, wl.seen_eval, PlainAggregator(), name="fedavg-plain",
                       embed_name=wl.embed_name, **common)
    p, r = attacks.mean_precision_recall(plain.rows_seen, wl.token_sets)
    yield make_row("fedavg-plain", seed, plain, wl, target, membership(plain.model, members, wl.seen_eval, ref),
                   token_precision=p, token_recall=r)
    with SecureAggregator(config, ids, min_clients=n, first_round=next(round_ids)) as agg:
        sec = run_fedavg(wl.init, wl.clients, wl.seen_eval, agg, name="fedavg-secure", embed_name=wl.embed_name,
                         keep_first=True, **common)
    p, r = attacks.mean_precision_recall(sec.rows_seen, wl.token_sets)
    yield make_row("fedavg-secure", seed, sec, wl, target, membership(sec.model, members, wl.seen_eval, ref),
                   token_precision=p, token_recall=r,
                   ppl_rel_diff_vs_plain=abs(sec.ppl[-1] - plain.ppl[-1]) / plain.ppl[-1])
    dp_clients = split_clients(wl.clients, cfg.dp_clients_per_topic)
    dp_init = dp_model(wl.init, rank=cfg.dp_rank)
    local_opt = ((lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=cfg.dp_lr))
                 if cfg.dp_local_opt == "sgd" else None)
    for z in cfg.dp_noise_multipliers:
        tokens = _noised_token_attack(config, wl, sec.first_deltas, z, next(round_ids), cfg.delta)
        with SecureAggregator(config, [f"client-{i}" for i in range(len(dp_clients))], min_clients=len(dp_clients),
                              clip_norm=cfg.dp_clip_norm, noise_multiplier=z, delta=cfg.delta,
                              first_round=next(round_ids)) as agg:
            dp = run_fedavg(dp_init, dp_clients, wl.seen_eval, agg, rounds=cfg.dp_rounds,
                            local_steps=cfg.dp_local_steps, batch_size=cfg.dp_batch_size, lr=cfg.dp_lr, seed=seed,
                            say=say, name=f"secure-dp z={z:g}", optimizer=local_opt,
                            server=ServerOptimizer(cfg.dp_server_opt, cfg.dp_server_lr))
        yield make_row("secure-dp", seed, dp, wl, target, membership(dp.model, members, wl.seen_eval, ref),
                       epsilon=dp.epsilon, delta=cfg.delta, noise_multiplier=z, clip_norm=cfg.dp_clip_norm,
                       dp_clients=len(dp_clients), **tokens)


def run_experiments(cfg: ExperimentConfig, out: str | Path, *, say: Say = print) -> dict[str, Any]:
    """Run every setting for every seed; write ``experiments.json``, ``experiments.md`` and the plots."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, Path(out), say)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: ExperimentConfig, out: Path, say: Say) -> dict[str, Any]:
    from .report import check_out_dir, write_outputs

    t_start = time.perf_counter()
    check_out_dir(out)
    wl = prepare(data=cfg.data, model=cfg.model, tokenizer=cfg.tokenizer, max_length=cfg.max_length,
                 eval_fraction=cfg.eval_fraction)
    n, m = len(wl.clients), len(wl.clients) * cfg.dp_clients_per_topic
    say(f"clients: {', '.join(wl.names[:-1])}; unseen topic: {wl.names[-1]}; "
        f"{sum(p.numel() for p in wl.init.parameters()):,} parameters, embeddings {'tied' if wl.tied else 'untied'}")
    ref = None
    if cfg.reference_models:
        ref = reference_losses(wl, rounds=cfg.rounds, local_steps=cfg.local_steps, batch_size=cfg.batch_size * n,
                               lr=cfg.lr, say=say)
    # the attacks on the untrained model are the baseline: what the split alone gives away (ideally AUC 0.5)
    initial = {"ppl_seen": evaluate(wl.init, wl.seen_eval)[1], "ppl_unseen": evaluate(wl.init, wl.unseen)[1],
               **membership(wl.init, pool(wl.clients), wl.seen_eval, ref)}
    say(f"initial model: perplexity {initial['ppl_seen']:,.1f} on seen topics, {initial['ppl_unseen']:,.1f} unseen; "
        f"membership AUC of the better attack {initial['mia_auc']:.3f}")
    report: dict[str, Any] = {
        "config": {**asdict(cfg), "topics": wl.names[:-1], "unseen_topic": wl.names[-1], "embeddings_tied": wl.tied,
                   "parameters": sum(p.numel() for p in wl.init.parameters()), "seeds_done": 0},
        "initial": initial, "rows": []}
    with tempfile.TemporaryDirectory(prefix="mpc-agg-experiments-") as tmp, \
            LocalDeployment(Path(tmp) / "deployment", parties=cfg.parties, clients=max(n, m),
                            min_clients=min(3, n), dealer=False) as ld:
        round_ids = itertools.count(1, 1000)
        for seed in range(cfg.seeds):
            say(f"seed {seed + 1}/{cfg.seeds}")
            for row in _seed_rows(wl, cfg, seed, str(ld.config), round_ids, ref, say):
                report["rows"].append(row)
                say(f"  {row['setting']:<13} seen {row['ppl_seen']:>10,.1f}  unseen {row['ppl_unseen']:>10,.1f}  "
                    f"MIA AUC {row['mia_auc']:.3f}" + ("" if row["epsilon"] is None else f"  ε {row['epsilon']:.2f}"))
            report["config"].update(seeds_done=seed + 1, wall_seconds=time.perf_counter() - t_start)
            write_outputs(report, out)  # after every seed, so a long run interrupted keeps what it finished
    say(f"done in {report['config']['wall_seconds'] / 60:.1f} min: {Path(out) / 'experiments.json'}, "
        f"{Path(out) / 'experiments.md'}")
    return report


def run_from_args(args: Any) -> int:
    """``mpc-agg experiments``: pick the preset, apply --data/--model/--seeds, run."""
    from dataclasses import replace

    cfg = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    cfg = replace(cfg, data=args.data, model=args.model, seeds=cfg.seeds if args.seeds is None else args.seeds)
    run_experiments(cfg, args.out, say=lambda s: print(s, flush=True))
    return 0

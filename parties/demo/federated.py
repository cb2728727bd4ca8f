"""Federated fine-tuning through the secure aggregator: the job behind ``mpc-agg demo``.

Per round (McMahan et al. 2017, FedAvg; FedAdam from Reddi et al. 2021,
"Adaptive Federated Optimization", Algorithm 2): the coordinator writes the
global trainable weights, opens the round with their shapes as the spec, every
client process trains locally and submits its delta secret-shared to the
parties, the coordinator closes the round, applies the revealed weighted
average with the server optimiser, and evaluates perplexity on held-out text.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_client.training import encode_texts, evaluate
from fl_client.training.corpus import Shards, load_shards
from fl_client.training.model import (apply_lora, build_model, check_model_dir, load_tokenizer, load_trainable,
                                      trainable_state)
from fl_client.training.worker import WorkerConfig, client_worker
from mpc_agg import errors
from mpc_agg.errors import ConfigError, MpcAggError
from mpc_agg.logs import event

from ..coordinator import Coordinator
from ..launcher import LocalDeployment
from .workdir import check_report_path, claim_workdir, next_model_dir

__all__ = ["FedConfig", "run_federated", "ServerOptimizer", "dp_noise_ratio"]

log = logging.getLogger("mpc_agg.federated")


@dataclass(frozen=True)
class FedConfig:
    """Everything a federated run needs; validated on construction."""

    workdir: str
    clients: int = 4
    parties: int = 3
    rounds: int = 8
    local_steps: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    max_length: int = 64
    lora: bool = False
    lora_rank: int = 8
    model: str | None = None
    data: str | None = None
    tokenizer: str = "auto"
    noise_multiplier: float = 0.0
    clip_norm: float | None = None
    delta: float = 1e-5
    frac_bits: int | None = None
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    seed: int = 0
    report: str | None = None
    save_model: bool = True
    plaintext_check: bool = True

    def __post_init__(self) -> None:
        for name in ("clients", "parties", "rounds", "local_steps", "batch_size", "max_length", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.parties < 2:
            raise ConfigError("--parties must be >= 2")
        if self.noise_multiplier < 0 or (self.noise_multiplier > 0 and self.clip_norm is None):
            raise ConfigError("--noise-multiplier > 0 needs --clip-norm")
        if self.server_opt not in ("fedavg", "fedadam"):
            raise ConfigError("--server-opt must be fedavg or fedadam")
        if not (self.lr > 0 and self.server_lr > 0):
            raise ConfigError("learning rates must be > 0")


class ServerOptimizer:
    """FedAvg (theta += lr * avg) or FedAdam (Reddi et al. 2021, Alg. 2; beta1=0.9, beta2=0.99, tau=1e-3)."""

    def __init__(self, kind: str, lr: float) -> None:
        self.kind, self.lr = kind, lr
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def step(self, state: dict[str, torch.Tensor], avg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, theta in state.items():
            d = avg[k].to(theta.dtype)
            if self.kind == "fedavg":
                out[k] = theta + self.lr * d
                continue
            m = self.m.get(k, torch.zeros_like(d)) * 0.9 + 0.1 * d
            v = self.v.get(k, torch.zeros_like(d)) * 0.99 + 0.01 * d * d
            self.m[k], self.v[k] = m, v
            out[k] = theta + self.lr * m / (v.sqrt() + 1e-3)
        return out


def dp_noise_ratio(noise_multiplier: float, dim: int, clients: int) -> float:
    """Norm of the DP noise on the averaged update over the largest signal it can carry (C, the clip norm):
    the noise on the sum has std z·C per coordinate, so z·C·sqrt(d)/n on the average of n clients."""
    return noise_multiplier * math.sqrt(dim) / clients


def _plot(initial_ppl: float, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    rounds = [0] + [r["round"] for r in rows]
    ax.plot(rounds, [initial_ppl] + [r["eval_perplexity"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel("held-out perplexity", color="tab:blue")
    ax.set_yscale("log")
    eps = [(r["round"], r["epsilon"]) for r in rows if r["epsilon"] is not None]
    if eps:
        ax2 = ax.twinx()
        ax2.plot(*zip(*eps), "s--", color="tab:red")
        ax2.set_ylabel(f"epsilon (delta={rows[-1]['delta']:g})", color="tab:red")
    ax.set_title("Federated fine-tuning through mpc-agg")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _max_diff_vs_plaintext(plain_dir: Path, round_id: int, avg: dict[str, torch.Tensor]) -> float:
    """Largest |secure - plaintext| over the weighted average of exactly what was submitted (the clients'
    deltas as they clipped them); the round's delta files are deleted once read."""
    from safetensors import safe_open

    total: dict[str, torch.Tensor] = {}
    wsum = 0.0
    for f in sorted(plain_dir.glob(f"r{round_id}-*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata()
            w, scale = float(meta["weight"]), float(meta.get("clip_scale", "1.0"))
            for k in sf.keys():
                total[k] = total.get(k, 0) + w * (scale * sf.get_tensor(k).double())
        wsum += w
        f.unlink()
    return max(float((avg[k].double() - total[k] / wsum).abs().max()) for k in avg)


def run_federated(cfg: FedConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run R secure FedAvg rounds with real party and client processes; returns the report.

    ``cfg.workdir`` must be new, empty or an earlier run's (parties.demo.workdir); the final model goes to
    its first free ``global-final*`` directory (``report["model_dir"]``).  ``progress`` prints the
    table, and progress bars too when stdout and stderr are terminals."""
    if cfg.model is not None:
        check_model_dir(cfg.model)  # every input is checked before anything is written
    shards = load_shards(cfg.clients, cfg.data)
    if cfg.report:
        check_report_path(cfg.report)
    work = claim_workdir(cfg.workdir, reads=(cfg.model, cfg.data))
    scratch = work / "scratch"
    try:
        return _run(cfg, work, scratch, shards, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # ours: made by this run inside the marked work dir


def _run(cfg: FedConfig, work: Path, scratch: Path, shards: Shards, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    scratch.mkdir()
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(cfg.tokenizer)
    base = build_model(cfg.model, len(tok), seed=cfg.seed)
    base.save_pretrained(scratch / "global-init")  # every client starts from exactly this model
    model = apply_lora(base, rank=cfg.lora_rank) if cfg.lora else base
    eval_data = encode_texts(tok, shards.eval, cfg.max_length)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    dim = sum(math.prod(s) for s in shapes.values())
    plain_dir = scratch / "plaintext-check" if cfg.plaintext_check and cfg.noise_multiplier == 0 else None
    if plain_dir:
        plain_dir.mkdir()
    report: dict[str, Any] = {"config": {**asdict(cfg), "trainable_parameters": dim,
                                         "tokenizer_vocab": len(tok), "client_sources": list(shards.sources),
                                         "sampling_rate": 1.0}, "rounds": []}
    say = tqdm.write if progress else (lambda s: None)
    bars = progress and sys.stdout.isatty() and sys.stderr.isatty()  # never interleaved with a piped table
    say(f"model: {type(base).__name__}, {sum(p.numel() for p in base.parameters()):,} parameters, "
        f"{dim:,} trainable{' (LoRA)' if cfg.lora else ''}; tokenizer vocab {len(tok):,}; "
        f"clients' data: {', '.join(shards.sources)}")
    ratio = dp_noise_ratio(cfg.noise_multiplier, dim, cfg.clients)
    if ratio > math.sqrt(cfg.rounds):  # signal adds up over rounds (×R), independent noise only by √R
        say(f"warning: the DP noise will swamp the updates: on the average of {cfg.clients} clients it has norm "
            f"z·C·sqrt(d)/n = {ratio:,.1f}·C per round against at most C of signal, more than sqrt(rounds) times "
            "that; train far fewer parameters, use many more clients or less noise (README.md, 'What the "
            "experiments show', has a setting that learns)")
    server = ServerOptimizer(cfg.server_opt, cfg.server_lr)
    loss0, ppl0 = evaluate(model, eval_data)
    say(f"round 0 (initial model): eval loss {loss0:.3f}, perplexity {ppl0:,.1f}")
    say(f"{'round':>5} {'train loss':>10} {'eval loss':>9} {'perplexity':>11} {'epsilon':>8} "
        f"{'agg s':>6} {'train s':>7} {'|secure-plain|':>14}")
    with LocalDeployment(work / "deployment", parties=cfg.parties, clients=cfg.clients,
                         min_clients=min(3, cfg.clients), dealer=False) as ld, \
            Coordinator.from_config(ld.config, delta=cfg.delta,
                                    ledger_path=scratch / "privacy-ledger.json") as coord:
        procs, conns = _start_clients(cfg, ld.config, shards, scratch, plain_dir)
        try:
            for r in tqdm(range(1, cfg.rounds + 1), desc="rounds", unit="round", disable=not bars):
                row = _one_round(cfg, r, coord, conns, model, server, shapes, eval_data, scratch, plain_dir, bars)
                report["rounds"].append(row)
                eps_s = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
                diff = row["max_abs_diff_vs_plaintext"]
                say(f"{r:>5} {row['train_loss']:>10.3f} {row['eval_loss']:>9.3f} {row['eval_perplexity']:>11,.1f} "
                    f"{eps_s:>8} {row['agg_seconds']:>6.2f} {row['train_seconds']:>7.2f} "
                    f"{'-' if diff is None else f'{diff:.2e}':>14}")
            for c in conns:
                c.send(("stop",))
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
    report["initial"] = {"eval_loss": loss0, "eval_perplexity": ppl0}
    _save(cfg, work, model, tok, report, ppl0)
    return report


def _start_clients(cfg: FedConfig, config: Path, shards: Shards, scratch: Path,
                   plain_dir: Path | None) -> tuple[list[Any], list[Any]]:
    """One client process per client (spawned), each ready to train: (processes, pipes)."""
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    for i in range(cfg.clients):
        parent, child = ctx.Pipe()
        wc = WorkerConfig(str(config), f"client-{i}", shards.train[i], str(scratch / "global-init"),
                          cfg.tokenizer, cfg.lora_rank if cfg.lora else None, cfg.max_length,
                          cfg.local_steps, cfg.batch_size, cfg.lr, cfg.seed * 1000 + i,
                          str(plain_dir) if plain_dir else None)
        p = ctx.Process(target=client_worker, args=(child, wc), name=f"client-{i}", daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    for c in conns:
        _expect(c, "ready", 300)
    return procs, conns


def _one_round(cfg: FedConfig, r: int, coord: Coordinator, conns: list[Any], model: Any, server: ServerOptimizer,
               shapes: dict[str, tuple[int, ...]], eval_data: Any, scratch: Path, plain_dir: Path | None,
               bars: bool) -> dict[str, Any]:
    """Round ``r``: publish the global weights, open, let every client train and submit, close, step."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    t_round = time.perf_counter()
    weights_path = scratch / f"global-r{r}.safetensors"
    state = trainable_state(model)
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights_path))
    coord.open_round(r, shapes=shapes, min_clients=min(3, cfg.clients), clip_norm=cfg.clip_norm,
                     noise_multiplier=cfg.noise_multiplier, frac_bits=cfg.frac_bits)
    for c in conns:
        c.send(("train", r, str(weights_path)))
    results = []
    with tqdm(total=cfg.clients, desc=f"round {r} local training", unit="client", leave=False,
              disable=not bars) as bar:
        for c in conns:
            results.append(_expect(c, "done", 600))
            bar.update(1)
    t_close = time.perf_counter()
    res = coord.close_round(r, timeout_s=120)
    close_s = time.perf_counter() - t_close
    diff = _max_diff_vs_plaintext(plain_dir, r, res.average) if plain_dir else None
    load_trainable(model, server.step(state, res.average))
    eval_loss, ppl = evaluate(model, eval_data)
    weights_path.unlink()
    return {"round": r, "train_loss": float(np.mean([x[1] for x in results])), "eval_loss": eval_loss,
            "eval_perplexity": ppl, "epsilon": res.epsilon, "delta": res.delta,
            "agg_seconds": max(x[3] for x in results) + close_s, "train_seconds": max(x[2] for x in results),
            "round_seconds": time.perf_counter() - t_round, "clients": list(res.clients),
            "max_abs_diff_vs_plaintext": diff}


def _save(cfg: FedConfig, work: Path, model: Any, tok: Any, report: dict[str, Any], ppl0: float) -> None:
    """The final model (if asked) in the work dir's next free ``global-final*``; the report and its plot."""
    if cfg.save_model:
        final = model.merge_and_unload() if cfg.lora else model
        out = next_model_dir(work)
        final.save_pretrained(out)
        tok.save_pretrained(out)
        report["model_dir"] = str(out)
    if cfg.report:
        rp = Path(cfg.report)
        rp.parent.mkdir(parents=True, exist_ok=True)
        rp.write_text(json.dumps(report, indent=2))
        _plot(ppl0, report["rounds"], rp.with_suffix(".png"))


def _expect(conn: Any, what: str, timeout_s: float) -> tuple[Any, ...]:
    if not conn.poll(timeout_s):
        raise MpcAggError(f"a client process did not answer ({what}) within {timeout_s:.0f} s")
    try:
        msg = conn.recv()
    except EOFError:
        raise MpcAggError("a client process died") from None
    if msg[0] == "error":  # one line for the user; the client's traceback goes to the verbose log
        event(log, "client_failed", error=msg[1], reason=msg[2], traceback=msg[3])
        typed = getattr(errors, msg[1], None)
        raise (typed if isinstance(typed, type) and issubclass(typed, MpcAggError) else MpcAggError)(
            f"client process failed: {msg[1]}: {msg[2]}")
    if msg[0] != what:
        raise MpcAggError(f"client process sent {msg[0]!r}, expected {what!r}")
    return tuple(msg)

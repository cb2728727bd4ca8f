"""The training settings compared by ``mpc-agg experiments``, simulated in one process.

Clients train one after another in this process (``fl_client.training.train_locally``), so every setting's
seconds are compute on the same machine, not the wall time of a parallel deployment. What differs between
settings is only the data a model sees and how updates are combined:

* centralised: all clients' data pooled, one AdamW, ``local_steps`` steps of ``clients × batch_size`` examples
  per round (the same examples per round as the federation);
* local-only: each client alone, one AdamW, ``local_steps`` steps of ``batch_size`` per round;
* FedAvg (McMahan et al. 2017, Algorithm 1): each client starts from the global weights with a fresh AdamW and
  the server averages the deltas weighted by example counts, in plaintext (:class:`PlainAggregator`) or through
  real mpc-agg party processes (:class:`SecureAggregator`, the client API of README.md "Python API").
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from fl_client.client import SecureAggClient
from fl_client.training.model import load_trainable, trainable_state
from fl_client.training import evaluate, train_locally

from ..coordinator import Coordinator
from ..demo.federated import ServerOptimizer
from .attacks import touched_rows
from .workload import Data

__all__ = ["Trace", "Aggregator", "PlainAggregator", "SecureAggregator", "adamw_no_embedding_decay",
           "run_centralised", "run_local_only", "run_fedavg", "pool"]

Say = Callable[[str], None]


@dataclass
class Trace:
    """A trained model, its held-out perplexity on seen topics after every round, and compute seconds so far."""

    model: Any
    ppl: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rows_seen: list[set[int]] = field(default_factory=list)  # per client: embedding rows the server saw move
    first_deltas: list[dict[str, torch.Tensor]] = field(default_factory=list)  # round 1's client deltas
    epsilon: float | None = None


def adamw_no_embedding_decay(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    """AdamW (weight decay 0.01) with no decay on the input embedding, so unused rows stay exactly unchanged."""

    def make(model: Any) -> torch.optim.Optimizer:
        emb = model.get_input_embeddings().weight
        rest = [p for p in model.parameters() if p.requires_grad and p is not emb]
        groups = [{"params": rest, "weight_decay": 0.01}]
        if emb.requires_grad:
            groups.append({"params": [emb], "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=lr)

    return make


def pool(parts: list[Data]) -> Data:
    """Concatenate encoded datasets."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _eval(trace: Trace, data: Data | None, elapsed: float) -> None:
    trace.ppl.append(math.nan if data is None else evaluate(trace.model, data)[1])
    trace.seconds.append(elapsed)


def run_centralised(init: Any, clients: list[Data], eval_data: Data | None, *, rounds: int, local_steps: int,
                    batch_size: int, lr: float, seed: int, say: Say) -> Trace:
    """One trainer on the pooled data with the federation's examples per round."""
    trace = Trace(copy.deepcopy(init))
    data, gen = pool(clients), torch.Generator().manual_seed(seed)
    opt = adamw_no_embedding_decay(lr)(trace.model)
    elapsed = 0.0
    for r in range(1, rounds + 1):
        res = train_locally(trace.model, data, steps=local_steps, batch_size=batch_size * len(clients), lr=lr,
                            generator=gen, optimizer=lambda _: opt)
        elapsed += res.seconds
        _eval(trace, eval_data, elapsed)
        say(f"  centralised round {r}: perplexity {trace.ppl[-1]:,.1f}")
    return trace


def run_local_only(init: Any, clients: list[Data], eval_data: Data, *, rounds: int, local_steps: int,
                   batch_size: int, lr: float, seed: int, say: Say) -> list[Trace]:
    """Every client trains alone for the same number of rounds; one trace per client."""
    traces = []
    for i, data in enumerate(clients):
        trace, gen = Trace(copy.deepcopy(init)), torch.Generator().manual_seed(seed * 1000 + i)
        opt = adamw_no_embedding_decay(lr)(trace.model)
        elapsed = 0.0
        for _ in range(rounds):
            res = train_locally(trace.model, data, steps=local_steps, batch_size=batch_size, lr=lr,
                                generator=gen, optimizer=lambda _: opt)
            elapsed += res.seconds
            _eval(trace, eval_data, elapsed)
        say(f"  local-only client {i}: perplexity {trace.ppl[-1]:,.1f}")
        traces.append(trace)
    return traces


class Aggregator(Protocol):
    """Round id, the clients' deltas and weights → the mean the server applies; ``epsilon`` so far (or None)."""

    epsilon: float | None

    def __call__(self, round_id: int, deltas: list[dict[str, torch.Tensor]],
                 weights: list[float]) -> dict[str, torch.Tensor]: ...


class PlainAggregator:
    """A plaintext FedAvg server: it sees every client's delta and returns their weighted mean (float64)."""

    epsilon: float | None = None

    def __call__(self, round_id: int, deltas: list[dict[str, torch.Tensor]],
                 weights: list[float]) -> dict[str, torch.Tensor]:
        total = sum(weights)
        return {k: sum(w * d[k].double() for w, d in zip(weights, deltas)) / total for k in deltas[0]}


class SecureAggregator:
    """Each round: open it at every party, submit every client's delta secret-shared, close, return the mean.

    A context manager holding one coordinator and one client connection per client id. ``noise_multiplier > 0``
    (with ``clip_norm``) makes every round a distributed-DP round (``mpc_agg.dp``; weights are then 1); ε so
    far at ``delta`` comes from this coordinator's own ledger. ``first_round`` offsets round ids so that one
    deployment serves many runs."""

    def __init__(self, config: str, client_ids: list[str], *, min_clients: int, clip_norm: float | None = None,
                 noise_multiplier: float = 0.0, delta: float = 1e-5, first_round: int = 1) -> None:
        self.coord = Coordinator.from_config(config, delta=delta)
        self.clients = [SecureAggClient.from_config(config, cid, timeout_s=120) for cid in client_ids]
        self.min_clients, self.clip_norm, self.noise_multiplier = min_clients, clip_norm, noise_multiplier
        self.offset = first_round - 1
        self.epsilon: float | None = None
        self.delta = delta

    def __enter__(self) -> "SecureAggregator":
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.clients:
            c.close()
        self.coord.close()

    def __call__(self, round_id: int, deltas: list[dict[str, torch.Tensor]],
                 weights: list[float]) -> dict[str, torch.Tensor]:
        rid = self.offset + round_id
        # 40 fractional bits without noise (README "Python API": for small LLM deltas), so the secure
        # trajectory stays within float rounding of the plaintext one; noised rounds fit the grid to the noise
        self.coord.open_round(rid, shapes={k: tuple(v.shape) for k, v in deltas[0].items()},
                              min_clients=self.min_clients, clip_norm=self.clip_norm,
                              noise_multiplier=self.noise_multiplier,
                              frac_bits=None if self.noise_multiplier > 0 else 40)
        for client, delta, w in zip(self.clients, deltas, weights):
            client.submit(rid, delta, weight=1.0 if self.noise_multiplier > 0 else w)
        res = self.coord.close_round(rid, timeout_s=120)
        self.epsilon = res.epsilon
        return {k: v.to(torch.float64) for k, v in res.average.items()}


def run_fedavg(init: Any, clients: list[Data], eval_data: Data, aggregate: Aggregator, *, rounds: int,
               local_steps: int, batch_size: int, lr: float, seed: int, say: Say, name: str,
               optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
               server: ServerOptimizer | None = None, embed_name: str | None = None,
               keep_first: bool = False) -> Trace:
    """FedAvg rounds; records which embedding rows the server saw move (its own view of each client)."""
    trace = Trace(copy.deepcopy(init))
    server = server or ServerOptimizer("fedavg", 1.0)
    gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(clients))]
    weights = [float(c["input_ids"].shape[0]) for c in clients]
    trace.rows_seen = [set() for _ in clients]
    elapsed = 0.0
    for r in range(1, rounds + 1):
        state = trainable_state(trace.model)
        deltas = []
        for data, gen in zip(clients, gens):
            load_trainable(trace.model, state)
            res = train_locally(trace.model, data, steps=local_steps, batch_size=batch_size, lr=lr, generator=gen,
                                optimizer=optimizer or adamw_no_embedding_decay(lr))
            deltas.append(res.delta)
            elapsed += res.seconds
        t0 = time.perf_counter()
        avg = aggregate(r, deltas, weights)
        new = server.step({k: v.double() for k, v in state.items()}, avg)
        load_trainable(trace.model, {k: v.to(state[k].dtype) for k, v in new.items()})
        elapsed += time.perf_counter() - t0
        if embed_name is not None and isinstance(aggregate, PlainAggregator):  # the server sees every delta
            for rows, d in zip(trace.rows_seen, deltas):
                rows |= touched_rows(d[embed_name].numpy())
        elif embed_name is not None:  # it sees only the aggregate: the same guess for every client
            moved = touched_rows(avg[embed_name].numpy())
            for rows in trace.rows_seen:
                rows |= moved
        if keep_first and r == 1:
            trace.first_deltas = deltas
        _eval(trace, eval_data, elapsed)
        eps = "" if aggregate.epsilon is None else f", epsilon {aggregate.epsilon:.2f}"
        say(f"  {name} round {r}: perplexity {trace.ppl[-1]:,.1f}{eps}")
    trace.epsilon = aggregate.epsilon
    return trace

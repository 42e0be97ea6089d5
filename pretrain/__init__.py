"""Supervised pre-training from game records (``keisei-pretrain``): a start for
self-play (``keisei-learner --init-from``). It builds on the ``keisei`` library alone."""

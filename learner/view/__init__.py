"""The views of a run: everything that only reads a run directory (and, inside a
learner, the game being played). The metric fields they chart, with their labels and
units, are ``learner.fields``.

- ``address``: ``[HOST:]PORT`` as ``--web`` and ``keisei-web`` take it;
- ``games``: games as the board shows them (``keisei.shogi`` replays them);
- ``run_files``: what the page shows of one run, read from its files;
- ``server``: the HTTP server and its JSON API (``WebView``);
- ``web``: the ``keisei-web`` command; ``plot``: ``keisei-plot``; ``status``: ``keisei-learner
  --status``.
"""

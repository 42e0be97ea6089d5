"""Tree search over the policy/value network and Keisei's rules, many trees at once.

``Search(evaluate, config)`` searches a list of games together: each pass picks a leaf in
every tree that still has budget, sends all the leaves through the network in **one**
call (``evaluate``), and backs their values up (dlshogi's self-play layout: one leaf
per tree per pass, no virtual loss needed). A single game gathers up to
``search.leaf_batch`` leaves per call instead, each path held apart by a virtual loss.

* **PUCT** (AlphaZero): a move's score is ``Q + c_puct · P · sqrt(N) / (1 + n)``; an
  unvisited move below the root is valued at the parent's value minus
  ``fpu_reduction · sqrt(prior mass already visited)`` (first-play urgency).
* **Gumbel** (Danihelka et al. 2022) for budgets of at most ``search.gumbel_visits`` (0 by
  default: PUCT played better at small budgets; self-play's target search always uses it): at
  the root, the ``gumbel_actions`` moves with the highest ``logit + g`` (g Gumbel noise
  in self-play, 0 when evaluating) are searched by sequential halving; the move kept is
  the best by ``logit + g + sigma(Q)``, and the improved policy is
  ``softmax(logits + sigma(completed Q))``.
* **Rules**: a position is terminal when Keisei's referee (``keisei.shogi.Game``) says
  so: no legal move, fourfold repetition, perpetual check, an entering-king
  declaration, the ply limit. A position whose side to move mates in one
  (``mate_move_in_1ply``) is a proven win, not sent to the network; at the root, a
  mate in one, or one cshogi's mate search finds (``search.root_mate_plies``), is
  played at once.
* **Cache**: network outputs are kept by position (Zobrist hash and repetition count),
  so transpositions and the next move's search reuse them.

Values are from the side to move's view, in [-1, 1]. The module is pure: a network
(through ``evaluate``), positions in; visit counts, values and a chosen move out.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from keisei.config import SearchConfig
from keisei.encoding import OBSERVATION_SHAPE, fill_observation, legal_actions
from keisei.model import PolicyValueNet, autocast
from keisei.shogi import Game, mating_move

UNBOUNDED = 2**62
"""A visit budget no search reaches: search until told to stop (or out of time)."""

Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Observations ``(N, *OBSERVATION_SHAPE)`` float32 → (logits ``(N, NUM_ACTIONS)``,
values ``(N,)`` in [-1, 1], the side to move's)."""


def network_evaluator(model: nn.Module, device: str | torch.device = "cpu",
                      autocast_dtype: torch.dtype | None = None) -> Evaluate:
    """``evaluate`` for ``model`` (put in eval mode): one forward pass per call. A network
    with a prior head (``model.prior_head``) gives the search that head's logits."""
    model.eval()
    target = torch.device(device)
    outputs = model.search_outputs if isinstance(model, PolicyValueNet) else model

    def evaluate(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), autocast(target, autocast_dtype):
            logits, values = outputs(torch.from_numpy(observations).to(target))
        return logits.float().cpu().numpy(), values.float().cpu().numpy()

    return evaluate


@dataclass
class SearchResult:
    """What a search of one position found (moves are cshogi move ints)."""

    move: int
    """The move to play: the most visited (PUCT), the halving's winner (Gumbel), or a
    forced mate found at the root."""
    moves: list[int]
    """The root's legal moves."""
    visits: np.ndarray
    """Visits of each root move; they sum to the visits spent."""
    policy: np.ndarray
    """The improved policy over ``moves``: the visit distribution (PUCT) or the completed-Q
    policy (Gumbel); a forced mate puts all of it on the mating move."""
    value: float
    """The root's value for the side to move (-1 lost ... 1 won)."""
    principal_variation: list[int]
    depth: int
    """The deepest ply a visit reached."""
    mate: bool = False
    """True when the move is a forced mate (found at the root or proven by the search)."""
    mate_plies: int | None = None
    """Plies to the mate when known (1 for a mate in one)."""
    lines: list[tuple[int, float, list[int]]] = field(default_factory=list)
    """The most visited root moves, best first (``Search.lines`` of them): visits, value
    for the side to move, principal variation (for USI ``MultiPV``)."""

    @property
    def nodes(self) -> int:
        return int(self.visits.sum())


class Node:
    """One position in a tree: its legal moves and, per move, prior, visits and value sum
    from this node's side to move's view."""

    __slots__ = ("moves", "priors", "logits", "visits", "value_sums", "children", "terminal",
                 "value_sum", "count", "q_values", "unvisited", "total", "visited_mass")

    def __init__(self) -> None:
        self.moves: list[int] = []
        self.priors = np.zeros(0)
        self.logits = np.zeros(0)
        self.visits = np.zeros(0)
        self.value_sums = np.zeros(0)
        self.children: list[Node | None] = []
        self.terminal: float | None = None  # the exact value, when decided
        self.value_sum = 0.0  # of every visit through this node, its side to move's view
        self.count = 0
        # kept up to date by ``add``, so that choosing a move is a few array operations:
        self.q_values = np.zeros(0)  # value_sums / visits where visited, else 0
        self.unvisited = np.zeros(0, dtype=bool)
        self.total = 0.0  # visits.sum()
        self.visited_mass = 0.0  # priors of the visited moves, summed

    @property
    def expanded(self) -> bool:
        return self.terminal is not None or len(self.moves) > 0

    def q(self) -> float:
        return self.value_sum / self.count if self.count else 0.0

    def expand(self, moves: list[int], logits: np.ndarray, temperature: float = 1.0) -> None:
        self.moves = moves
        self.logits = logits.astype(np.float64)
        self.priors = _softmax(self.logits / temperature if temperature != 1.0 else self.logits)
        self.visits = np.zeros(len(moves))
        self.value_sums = np.zeros(len(moves))
        self.children = [None] * len(moves)
        self.q_values = np.zeros(len(moves))
        self.unvisited = np.ones(len(moves), dtype=bool)
        self.total = 0.0
        self.visited_mass = 0.0

    def add(self, index: int, visits: float, value: float) -> None:
        """Add ``visits`` and ``value`` to move ``index`` (negative: a virtual loss taken back)."""
        before = self.visits[index]
        after = before + visits
        self.visits[index] = after
        self.value_sums[index] += value
        self.total += visits
        if after > 0:
            self.q_values[index] = self.value_sums[index] / after
            if before <= 0:
                self.unvisited[index] = False
                self.visited_mass += self.priors[index]
        elif before > 0:
            self.q_values[index] = 0.0
            self.unvisited[index] = True
            self.visited_mass -= self.priors[index]


class _Tree:
    """One game's search: its root, its own copy of the game, and its budget."""

    def __init__(self, game: Game, budget: int, gumbel: bool) -> None:
        self.game = game.copy()  # its own, to push and pop moves on
        self.root = Node()
        self.budget = budget
        self.spent = 0
        self.gumbel = gumbel
        self.gumbel_noise = np.zeros(0)
        self.network_value = 0.0  # the network's value of the root
        self.candidates: list[int] = []  # Gumbel: root moves still in the halving
        self.schedule: list[int] = []  # Gumbel: root moves to visit next, in order
        self.rounds = 1
        self.depth = 0
        self.mate_move: int | None = None

    @property
    def done(self) -> bool:
        return self.mate_move is not None or self.spent >= self.budget


@dataclass
class _Leaf:
    tree: _Tree
    path: list[tuple[Node, int]]  # (node, index of the move taken there)
    node: Node
    slot: int  # row of the network batch, or -1 when the value is known
    value: float = 0.0
    moves: list[int] | None = None  # to expand the node with, once evaluated
    actions: np.ndarray | None = None  # the action index of each of ``moves``
    logits: np.ndarray | None = None  # the network's, for ``moves``
    key: tuple[int, int] | None = None  # the position's cache key


class Search:
    """Batched PUCT and Gumbel search (see the module docstring).

    ``noise`` adds exploration at the root (Dirichlet for PUCT, Gumbel noise for the
    Gumbel root) for self-play; leave it off to evaluate or play.
    """

    def __init__(self, evaluate: Evaluate, config: SearchConfig | None = None, *,
                 noise: bool = False, seed: int | None = None) -> None:
        self.evaluate = evaluate
        self.config = config if config is not None else SearchConfig()
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.cache: OrderedDict[tuple[int, int], tuple[np.ndarray, float]] = OrderedDict()
        self.network_positions = 0  # positions sent to the network (cache misses)
        self._planes = np.zeros((0, *OBSERVATION_SHAPE), dtype=np.float32)
        self._staged = 0  # rows of ``_planes`` waiting for the next network call
        self.lines = 1  # root moves each result describes (``SearchResult.lines``)

    # --- the public entry points -------------------------------------------------------
    def search(self, games: Sequence[Game], visits: int | None = None,
               seconds: float | None = None, *, stop: threading.Event | None = None,
               progress: Callable[[list[SearchResult], float], None] | None = None,
               progress_every: float = 1.0) -> list[SearchResult]:
        """Search every game's position and return one result each.

        The budget is ``visits`` per game (default ``search.visits``), or, with
        ``seconds``, as many as fit in that time (at least one pass; ``visits`` then caps
        it if given). ``stop`` ends the search early (it still returns its best so far);
        ``progress`` is called every ``progress_every`` seconds with the results so far
        and the seconds spent (for USI ``info`` lines).

        :raises ValueError: if a game is over (there is nothing to search).
        """
        for game in games:
            if game.is_over:
                raise ValueError(f"cannot search a finished game ({game.outcome})")
        if seconds is None:
            budget = visits if visits is not None else self.config.visits
        else:
            budget = visits if visits is not None else UNBOUNDED
        if budget < 1:
            raise ValueError(f"visits={budget} must be at least 1")
        gumbel = seconds is None and 0 < budget <= self.config.gumbel_visits
        started = time.monotonic()
        deadline = None if seconds is None else started + seconds
        next_progress = started + progress_every
        trees = [_Tree(game, budget, gumbel) for game in games]
        self._start(trees)
        while True:
            active = [tree for tree in trees if not tree.done]
            now = time.monotonic()
            if not active or (stop is not None and stop.is_set()) or (
                    deadline is not None and now >= deadline
                    and all(tree.spent or tree.done for tree in trees)):
                break
            if progress is not None and now >= next_progress:
                next_progress = now + progress_every
                progress([self._result(tree) for tree in trees], now - started)
            per_tree = self.config.leaf_batch if len(active) == 1 and not gumbel else 1
            self._pass(active, per_tree)
        return [self._result(tree) for tree in trees]

    # --- one pass ----------------------------------------------------------------------
    def _start(self, trees: list[_Tree]) -> None:
        """Mates at the roots, then every root expanded in one network call."""
        for tree in trees:
            mate = mating_move(tree.game, max(1, self.config.root_mate_plies))
            if mate is not None:
                tree.mate_move = mate
        leaves = []
        for tree in trees:
            if tree.mate_move is None:
                game = tree.game
                moves = game.legal_moves()
                leaves.append(_Leaf(tree, [], tree.root, self._stage(game), moves=moves,
                                    actions=legal_actions(game.board, moves)))
        self._evaluate(leaves)
        for leaf in leaves:
            self._expand(leaf)
            tree = leaf.tree
            tree.network_value = tree.root.value_sum = leaf.value
            tree.root.count = 1
            self._prepare_root(tree)

    def _prepare_root(self, tree: _Tree) -> None:
        root, config = tree.root, self.config
        if root.terminal is not None:
            return
        if tree.gumbel:
            noise = self.rng.gumbel(size=len(root.moves)) if self.noise else np.zeros(len(root.moves))
            tree.gumbel_noise = noise
            count = min(config.gumbel_actions, len(root.moves), tree.budget)
            tree.candidates = list(np.argsort(-(root.logits + noise), kind="stable")[:count])
            tree.rounds = max(1, math.ceil(math.log2(max(count, 2))))
            self._schedule_round(tree)
        elif self.noise and config.dirichlet_fraction > 0 and len(root.moves) > 1:
            dirichlet = self.rng.dirichlet([config.dirichlet_alpha] * len(root.moves))
            root.priors = (1 - config.dirichlet_fraction) * root.priors \
                + config.dirichlet_fraction * dirichlet

    def _pass(self, trees: list[_Tree], per_tree: int) -> None:
        virtual = per_tree > 1
        leaves: list[_Leaf] = []
        for tree in trees:
            for _ in range(min(per_tree, tree.budget - tree.spent)):
                leaf = self._select(tree, virtual)
                if leaf is None:
                    break  # a path met one already waiting for the network: next pass
                leaves.append(leaf)
                tree.spent += 1
        self._evaluate(leaves)
        for leaf in leaves:
            self._expand(leaf)
            self._backup(leaf, virtual)

    def _select(self, tree: _Tree, virtual: bool) -> _Leaf | None:
        """Walk from the root to a new or terminal node, then put the game back. None
        when the walk meets a node still waiting for its evaluation (the walk is undone)."""
        game, node = tree.game, tree.root
        path: list[tuple[Node, int]] = []
        loss = self.config.virtual_loss if virtual else 0.0
        leaf: _Leaf | None = None
        while node.terminal is None:
            if not node.expanded:  # staged by an earlier walk of this pass
                for parent, index in path:
                    parent.add(index, -loss, loss)
                break
            if node is tree.root and tree.gumbel:
                index = self._next_gumbel_move(tree)
            else:
                index = self._puct(node, at_root=node is tree.root)
            path.append((node, index))
            if loss:
                node.add(index, loss, -loss)
            child = node.children[index]
            # down a move walked before, to a position adjudicated then (same history):
            # neither the move nor the result needs checking again
            game.push_known(node.moves[index], adjudicate=child is None)
            if child is None:
                child = node.children[index] = Node()
                leaf = self._new_leaf(tree, path, child)
                break
            node = child
        else:
            leaf = _Leaf(tree, path, node, -1, node.terminal)
        if leaf is not None:
            tree.depth = max(tree.depth, len(path))
        for _ in path:
            game.pop()
        return leaf

    def _new_leaf(self, tree: _Tree, path: list[tuple[Node, int]], node: Node) -> _Leaf:
        """A node just reached: decided by the rules, a mate in one, or for the network."""
        game = tree.game
        if game.outcome is not None:
            winner = game.outcome.winner
            node.terminal = 0.0 if winner is None else (1.0 if winner is game.side_to_move else -1.0)
            return _Leaf(tree, path, node, -1, node.terminal)
        if game.board.mate_move_in_1ply():
            node.terminal = 1.0
            return _Leaf(tree, path, node, -1, 1.0)
        moves = game.legal_moves()
        key = (game.board.zobrist_hash(), game.repetitions)
        cached = self.cache.get(key)
        if cached is not None:
            self.cache.move_to_end(key)
            node.expand(moves, cached[0], self.config.policy_temperature)
            return _Leaf(tree, path, node, -1, cached[1])
        return _Leaf(tree, path, node, self._stage(game), moves=moves,
                     actions=legal_actions(game.board, moves), key=key)

    def _stage(self, game: Game) -> int:
        """Write ``game``'s observation into the next row of the batch; return the row."""
        row = self._staged
        if row >= len(self._planes):
            grown = np.zeros((max(2 * len(self._planes), 16), *OBSERVATION_SHAPE), dtype=np.float32)
            grown[:row] = self._planes[:row]
            self._planes = grown
        fill_observation(self._planes, row, game.board, game.repetitions)
        self._staged += 1
        return row

    def _evaluate(self, leaves: list[_Leaf]) -> None:
        """The network's logits and value for every staged leaf, in one call."""
        if not self._staged:
            return
        count, self._staged = self._staged, 0
        logits, values = self.evaluate(self._planes[:count])
        self.network_positions += count
        for leaf in leaves:
            if leaf.slot >= 0 and leaf.actions is not None:
                leaf.value = float(np.clip(values[leaf.slot], -1.0, 1.0))
                leaf.logits = np.asarray(logits[leaf.slot, leaf.actions], dtype=np.float64)

    def _expand(self, leaf: _Leaf) -> None:
        """Give a newly evaluated node its moves and priors, and remember them."""
        if leaf.moves is None or leaf.logits is None:
            return
        leaf.node.expand(leaf.moves, leaf.logits, self.config.policy_temperature)
        if self.config.cache_positions and leaf.key is not None:
            self.cache[leaf.key] = (leaf.logits, leaf.value)
            while len(self.cache) > self.config.cache_positions:
                self.cache.popitem(last=False)

    def _backup(self, leaf: _Leaf, virtual: bool) -> None:
        """Add the leaf's value to every node on its path, each from its mover's view."""
        value = leaf.value  # the leaf's side to move's
        leaf.node.value_sum += value
        leaf.node.count += 1
        loss = self.config.virtual_loss if virtual else 0.0
        for node, index in reversed(leaf.path):
            value = -value  # the parent's side to move is the other player
            node.add(index, 1 - loss, value + loss)
            node.value_sum += value
            node.count += 1
            child = node.children[index]
            if child is not None and child.terminal == -1.0 and node is not leaf.tree.root:
                node.terminal = 1.0  # a move to a lost position: this one is won

    # --- choosing ----------------------------------------------------------------------
    def _puct(self, node: Node, at_root: bool) -> int:
        config = self.config
        fpu = node.q()
        if not at_root:
            fpu -= config.fpu_reduction * math.sqrt(max(node.visited_mass, 0.0))
        q = np.where(node.unvisited, fpu, node.q_values)
        u = node.priors * (config.c_puct * math.sqrt(max(node.total, 1.0)) / (node.visits + 1.0))
        return int((q + u).argmax())

    def _sigma(self, node: Node, q: np.ndarray) -> np.ndarray:
        config = self.config
        return (config.gumbel_c_visit + float(node.visits.max(initial=0))) * config.gumbel_c_scale * q

    def _completed_q(self, node: Node, network_value: float) -> np.ndarray:
        """Each root move's Q, and for unvisited moves the value estimate mixed from the
        network's value and the visited moves' Q by their priors (Danihelka et al.)."""
        visited = node.visits > 0
        q = np.divide(node.value_sums, node.visits, out=np.zeros_like(node.value_sums),
                      where=visited)
        if visited.any():
            mass = node.priors[visited].sum()
            weighted = float((node.priors[visited] * q[visited]).sum() / max(mass, 1e-12))
            total = node.visits.sum()
            mixed = (network_value + total * weighted) / (1 + total)
        else:
            mixed = network_value
        return np.where(visited, q, mixed)

    def _next_gumbel_move(self, tree: _Tree) -> int:
        if not tree.schedule:
            self._halve(tree)
            self._schedule_round(tree)
        return tree.schedule.pop(0)

    def _schedule_round(self, tree: _Tree) -> None:
        left = tree.budget - tree.spent
        per_move = max(1, tree.budget // (tree.rounds * len(tree.candidates)))
        if len(tree.candidates) == 1:
            per_move = left
        tree.schedule = [index for _ in range(per_move) for index in tree.candidates][:left]

    def _halve(self, tree: _Tree) -> None:
        if len(tree.candidates) <= 1:
            return
        scores = self._gumbel_scores(tree)
        ranked = sorted(tree.candidates, key=lambda index: -scores[index])
        tree.candidates = ranked[:max(1, math.ceil(len(ranked) / 2))]

    def _gumbel_scores(self, tree: _Tree) -> np.ndarray:
        root = tree.root
        completed = self._completed_q(root, tree.network_value)
        scores: np.ndarray = root.logits + tree.gumbel_noise + self._sigma(root, completed)
        return scores

    # --- results -----------------------------------------------------------------------
    def _result(self, tree: _Tree) -> SearchResult:
        root = tree.root
        if tree.mate_move is not None:
            moves = tree.game.legal_moves()
            visits = np.zeros(len(moves))
            index = moves.index(tree.mate_move)
            visits[index] = tree.budget if tree.budget < UNBOUNDED else 1
            policy = visits / visits.sum()
            plies = 1 if tree.game.board.mate_move_in_1ply() else None
            return SearchResult(tree.mate_move, moves, visits, policy, 1.0, [tree.mate_move], 1,
                                mate=True, mate_plies=plies,
                                lines=[(int(visits[index]), 1.0, [tree.mate_move])])
        winning = [index for index, child in enumerate(root.children)
                   if child is not None and child.terminal == -1.0]
        if tree.gumbel and len(root.moves) > 1:
            scores = self._gumbel_scores(tree)
            best = max(tree.candidates, key=lambda index: scores[index])
            completed = self._completed_q(root, tree.network_value)
            policy = _softmax(root.logits + self._sigma(root, completed))
        elif root.visits.sum() == 0:  # stopped before any visit: the network's choice
            best = int(np.argmax(root.priors))
            policy = root.priors.copy()
        else:
            q = np.divide(root.value_sums, root.visits, out=np.full(len(root.moves), -2.0),
                          where=root.visits > 0)
            best = int(np.lexsort((q, root.visits))[-1])  # most visits, then best Q
            policy = root.visits / root.visits.sum()
        if winning and best not in winning:  # a move the search proved wins
            best = max(winning, key=lambda index: root.visits[index])
        order = [best] + [int(index) for index in np.argsort(-root.visits, kind="stable")
                          if index != best and root.visits[index] > 0][:self.lines - 1]
        lines = [(int(root.visits[index]),
                  float(root.value_sums[index] / root.visits[index]) if root.visits[index] else root.q(),
                  self._principal_variation(root, index)) for index in order]
        return SearchResult(root.moves[best], list(root.moves), root.visits.copy(), policy,
                            root.q(), lines[0][2], tree.depth, mate=bool(winning), lines=lines)

    @staticmethod
    def _principal_variation(root: Node, first: int) -> list[int]:
        line, node, index = [], root, first
        while True:
            line.append(node.moves[index])
            child = node.children[index]
            if child is None or not len(child.moves) or child.visits.sum() == 0:
                return line
            node, index = child, int(np.argmax(child.visits))


def _softmax(logits: np.ndarray) -> np.ndarray:
    if not len(logits):
        return logits
    shifted = np.exp(logits - logits.max())
    result: np.ndarray = shifted / shifted.sum()
    return result

"""Tree search on hand-made positions with a stub network: uniform priors, material value."""

from __future__ import annotations

import math
import time
from typing import Any

import cshogi
import numpy as np
import pytest

from keisei.config import SearchConfig
from keisei.encoding import NUM_ACTIONS, material_balance
from keisei.records import pack_observations
from keisei.search import Node, Search
from keisei.shogi import Color, Game, Termination

MATE_IN_ONE = "8k/9/8P/9/9/9/9/9/4K4 b G 1"  # G*1b
MATE_IN_THREE = "8k/9/8n/8L/9/9/9/9/4K4 b GB 1"  # no mate in one; mate in three (cshogi)
ROOK_ATTACKED = "4k4/9/9/4p4/4R4/9/9/9/4K4 b - 1"  # the white pawn on 5d attacks the rook


class MaterialNetwork:
    """Uniform logits; the value is the mover's material balance, squashed to (-1, 1).
    Counts its calls and the positions of each."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(observations))
        balance = material_balance(pack_observations(observations))
        return np.zeros((len(observations), NUM_ACTIONS), np.float32), np.tanh(balance / 10)


def config(**changes: object) -> SearchConfig:
    # gumbel_visits 32: budgets up to 32 take the Gumbel root, larger ones PUCT
    return SearchConfig(**{"root_mate_plies": 0, "gumbel_visits": 32, **changes})  # type: ignore[arg-type]


def test_a_mate_in_one_at_the_root_is_played_at_once() -> None:
    game = Game(MATE_IN_ONE)
    for visits in (8, 200):  # Gumbel root, then PUCT
        network = MaterialNetwork()
        result = Search(network, config()).search([game], visits=visits)[0]
        assert cshogi.move_to_usi(result.move) == "G*1b" and result.mate, visits
        assert network.batches == [] and result.visits.sum() == visits


def test_the_root_mate_search_plays_a_mate_in_three_at_once() -> None:
    network = MaterialNetwork()
    result = Search(network, config(root_mate_plies=3)).search([Game(MATE_IN_THREE)], visits=64)[0]
    assert result.mate and result.value == 1.0 and network.batches == []  # no network call
    assert is_mate_in_three_first_move(MATE_IN_THREE, result.move)
    assert result.visits.sum() == 64 and result.policy[result.moves.index(result.move)] == 1.0


def test_search_alone_finds_a_mate_in_three() -> None:
    result = Search(MaterialNetwork(), config()).search([Game(MATE_IN_THREE)], visits=3000)[0]
    assert is_mate_in_three_first_move(MATE_IN_THREE, result.move), cshogi.move_to_usi(result.move)


def is_mate_in_three_first_move(sfen: str, move: int) -> bool:
    """After ``move``, every reply allows a mate in one."""
    board = cshogi.Board(sfen)
    board.push(move)
    replies = list(board.legal_moves)
    for reply in replies:
        board.push(reply)
        mated = bool(board.mate_move_in_1ply())
        board.pop()
        if not mated:
            return False
    return True


def test_does_not_hang_a_piece_a_one_ply_search_would_save() -> None:
    game = Game(ROOK_ATTACKED)
    result = Search(MaterialNetwork(), config()).search([game], visits=400)[0]
    board = cshogi.Board(ROOK_ATTACKED)
    board.push(result.move)
    rook_lost = any(board.piece(cshogi.move_to(reply)) == cshogi.BROOK
                    for reply in board.legal_moves)
    assert not rook_lost, cshogi.move_to_usi(result.move)


def cycling(sfen: str, first: str, cycle: list[str]) -> Game:
    """``first`` (a move never undone), then ``cycle`` twice and all but its last move:
    the cycle's first position has occurred three times, and the side to move (the
    one that played ``first``) completes the fourth with the cycle's last move."""
    game = Game(sfen)
    for usi in [first, *cycle, *cycle, *cycle[:-1]]:
        game.push_usi(usi)
    return game


def test_fourfold_repetition_is_a_draw_the_losing_side_takes() -> None:
    # Black is a rook down and its king shuffles; the move completing the fourth
    # occurrence is a draw (0), better for Black than any line keeping the deficit (< 0).
    game = cycling("4k4/9/8r/9/9/9/9/K8/9 b - 1", "9h9i", ["5a4a", "9i8i", "4a5a", "8i9i"])
    result = Search(MaterialNetwork(), config()).search([game], visits=300)[0]
    assert cshogi.move_to_usi(result.move) == "8i9i"
    game.push(result.move)
    assert game.outcome is not None and game.outcome.reason is Termination.REPETITION
    assert game.outcome.winner is None


def test_perpetual_check_loses_so_the_winning_side_avoids_it() -> None:
    # Black, a rook up, has checked on every move of the cycle; completing the fourth
    # occurrence would lose by perpetual check, so the search plays something else.
    game = cycling("k8/9/9/9/9/9/9/9/2R1K4 b - 1", "7i9i", ["9a8a", "9i8i", "8a9a", "8i9i"])
    losing = game.board.move_from_usi("8i9i")
    game.push(losing)
    assert game.outcome is not None and game.outcome.winner is Color.WHITE  # as the rules say
    game.pop()
    result = Search(MaterialNetwork(), config()).search([game], visits=300)[0]
    assert result.move != losing
    game.push(result.move)
    assert game.outcome is None or game.outcome.winner is Color.BLACK  # (it finds a mate)


def test_visit_budgets_are_spent_exactly_and_batched_across_games() -> None:
    network = MaterialNetwork()
    games = [Game(), Game(ROOK_ATTACKED), Game(MATE_IN_THREE)]
    for visits in (16, 100):  # Gumbel, then PUCT
        network.batches.clear()
        results = Search(network, config(cache_positions=0)).search(games, visits=visits)
        assert [int(result.visits.sum()) for result in results] == [visits] * 3
        assert max(network.batches) == 3 and len(network.batches) <= visits + 1
        for result in results:
            assert math.isclose(float(result.policy.sum()), 1.0, abs_tol=1e-9)
            assert result.move in result.moves and result.principal_variation[0] == result.move


def test_one_game_batches_leaves_with_virtual_loss() -> None:
    network = MaterialNetwork()
    result = Search(network, config(leaf_batch=8, cache_positions=0)).search([Game()], visits=200)[0]
    assert int(result.visits.sum()) <= 200 and max(network.batches) > 1
    assert len(network.batches) < 100  # several leaves per network call


def test_a_time_budget_is_respected() -> None:
    started = time.perf_counter()
    result = Search(MaterialNetwork(), config()).search([Game()], seconds=0.3)[0]
    assert time.perf_counter() - started < 1.5 and result.visits.sum() > 0


def test_a_time_budget_ends_even_when_a_game_is_decided_by_a_root_mate() -> None:
    started = time.perf_counter()
    results = Search(MaterialNetwork(), config()).search([Game(MATE_IN_ONE), Game()], seconds=0.3)
    assert time.perf_counter() - started < 1.5
    assert results[0].mate and results[1].visits.sum() > 0


def test_the_cache_serves_positions_seen_before() -> None:
    network = MaterialNetwork()
    search = Search(network, config())
    search.search([Game()], visits=100)
    first = search.network_positions
    search.search([Game()], visits=100)
    assert search.network_positions < first + 10  # nearly all from the cache


def test_gumbel_completed_q_policy_matches_hand_values() -> None:
    search = Search(MaterialNetwork(), config(gumbel_c_visit=50.0, gumbel_c_scale=0.1))
    node = Node()
    node.expand([11, 22, 33], np.array([0.0, 1.0, -1.0]))
    node.visits = np.array([2.0, 1.0, 0.0])
    node.value_sums = np.array([1.0, -0.5, 0.0])  # Q = 0.5, -0.5, unvisited
    network_value = 0.2
    priors = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    visited_q = (priors[0] * 0.5 + priors[1] * -0.5) / (priors[0] + priors[1])
    mixed = (network_value + 3 * visited_q) / (1 + 3)
    completed = search._completed_q(node, network_value)
    assert completed == pytest.approx([0.5, -0.5, mixed])
    sigma = (50.0 + 2.0) * 0.1 * completed
    expected = np.exp(np.array([0.0, 1.0, -1.0]) + sigma)
    assert search._sigma(node, completed) == pytest.approx(sigma)
    assert expected / expected.sum() == pytest.approx(
        np.exp(node.logits + sigma) / np.exp(node.logits + sigma).sum())


def test_a_finished_game_cannot_be_searched() -> None:
    game = Game(MATE_IN_ONE)
    game.push_usi("G*1b")
    with pytest.raises(ValueError, match="finished game"):
        Search(MaterialNetwork(), config()).search([game], visits=4)


def walk(node: Node) -> list[Node]:
    nodes, stack = [], [node]
    while stack:
        current = stack.pop()
        if len(current.moves):
            nodes.append(current)
            stack.extend(child for child in current.children if child is not None)
    return nodes


@pytest.mark.parametrize("games, leaf_batch", [(3, 16), (1, 8)])  # one leaf a tree; virtual loss
def test_the_statistics_puct_reads_agree_with_the_visit_counts(games: int, leaf_batch: int) -> None:
    search = Search(MaterialNetwork(), config(leaf_batch=leaf_batch, cache_positions=0))
    roots: list[Node] = []
    original = search._result

    def keep_root(tree: Any) -> Any:
        roots.append(tree.root)
        return original(tree)

    search._result = keep_root  # type: ignore[method-assign]
    search.search([Game(), Game(ROOK_ATTACKED), Game()][:games], visits=300)
    nodes = [node for root in roots for node in walk(root)]
    assert len(nodes) > 50
    for node in nodes:
        visited = node.visits > 0
        assert node.total == pytest.approx(node.visits.sum())
        assert node.visits.min() >= 0  # every virtual loss was taken back
        assert list(node.unvisited) == list(~visited)
        assert node.visited_mass == pytest.approx(node.priors[visited].sum())
        assert node.q_values[visited] == pytest.approx(node.value_sums[visited] / node.visits[visited])
        assert not node.q_values[~visited].any()


def test_puct_matches_hand_values() -> None:
    search = Search(MaterialNetwork(), config(c_puct=1.5, fpu_reduction=0.2))
    node = Node()
    node.expand([11, 22, 33], np.log(np.array([0.5, 0.3, 0.2])))
    node.add(0, 1.0, 0.1)
    node.add(0, 1.0, -0.1)  # Q 0 over 2 visits
    node.add(1, 1.0, -0.5)  # Q -0.5
    node.value_sum, node.count = 0.1, 4
    parent_q = 0.1 / 4
    fpu = parent_q - 0.2 * math.sqrt(0.5 + 0.3)
    scores = [0.0 + 1.5 * 0.5 * math.sqrt(3) / 3, -0.5 + 1.5 * 0.3 * math.sqrt(3) / 2,
              fpu + 1.5 * 0.2 * math.sqrt(3) / 1]
    assert search._puct(node, at_root=False) == int(np.argmax(scores)) == 0
    # at the root an unvisited move is valued at the parent's value itself
    root_scores = scores[:2] + [parent_q + 1.5 * 0.2 * math.sqrt(3)]
    assert search._puct(node, at_root=True) == int(np.argmax(root_scores)) == 2


def test_a_policy_temperature_flattens_the_priors() -> None:
    logits = np.array([2.0, 0.0, -1.0])
    cold, warm = Node(), Node()
    cold.expand([1, 2, 3], logits)
    warm.expand([1, 2, 3], logits, temperature=2.0)
    assert warm.priors == pytest.approx(np.exp(logits / 2) / np.exp(logits / 2).sum())
    assert warm.priors.max() < cold.priors.max() and warm.logits == pytest.approx(logits)
    search = Search(MaterialNetwork(), config(policy_temperature=2.0))
    assert search.search([Game()], visits=64)[0].visits.sum() == 64

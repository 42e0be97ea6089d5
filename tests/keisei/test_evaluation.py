"""Match bookkeeping, Elo arithmetic, the opening set and in-process players."""

from __future__ import annotations

import math
import random

import pytest
import torch

from keisei.checkpoint import CheckpointError, save_checkpoint, save_policy
from keisei.config import build_config
from keisei.elo import elo_of_score, fit_ratings
from keisei.encoding import NUM_ACTIONS, move_to_action
from keisei.errors import IllegalMoveError
from keisei.evaluation import (
    GreedyPlayer,
    MatchResult,
    Pairing,
    PolicyPlayer,
    RandomPlayer,
    SearchPlayer,
    Special,
    load_openings,
    load_policy,
    play_match,
    tally,
)
from keisei.model import PRESETS, PolicyValue, build_model
from keisei.shogi import STARTING_SFEN, Color, Game, Outcome, Termination


def test_score_and_elo_arithmetic() -> None:
    even = MatchResult(wins=10, draws=0, losses=10)
    assert even.score == 0.5 and even.elo()[0] == pytest.approx(0.0)
    better = MatchResult(wins=75, draws=0, losses=25)
    assert better.elo()[0] == pytest.approx(190.848, abs=1e-3)  # -400 log10(1/0.75 - 1)
    # by hand, Wilson: centre (.75 + z²/200) / (1 + z²/100) = .7408, half-width
    # z sqrt(.001875 + z²/40000) / (1 + z²/100) = .0838: [.6570, .8246] -> Elo [112.9, 268.8],
    # half-width 78.0 (the one interval logs and tables show)
    assert better.elo_interval() == pytest.approx((112.9, 268.8), abs=0.1)
    assert better.elo()[1] == pytest.approx(78.0, abs=0.1)
    assert MatchResult(1, 2, 1).score == 0.5
    assert elo_of_score(10 / 11) == pytest.approx(400.0)  # 10:1 odds is 400 Elo
    # the interval shrinks with more games at the same score
    assert MatchResult(300, 0, 100).elo()[1] < better.elo()[1]
    assert MatchResult(3000, 0, 1000).elo()[1] < MatchResult(300, 0, 100).elo()[1]
    assert MatchResult(5, 0, 0).elo() == (math.inf, math.inf)
    assert MatchResult(0, 0, 5).elo()[0] == -math.inf
    assert str(better) == "+75 =0 -25 (score 0.750, Elo +191 [+113, +269])"
    # Wilson interval: holds the estimate, shrinks with games, is one-sided at a perfect score
    low, high = better.elo_interval()
    assert low < better.elo()[0] < high and 100 < low and high < 300
    assert MatchResult(300, 0, 100).elo_interval()[0] > low
    perfect_low, perfect_high = MatchResult(4, 0, 0).elo_interval()
    assert 0 < perfect_low < MatchResult(40, 0, 0).elo_interval()[0] and perfect_high == math.inf
    assert MatchResult(1, 2, 3) + MatchResult(4, 5, 6) == MatchResult(5, 7, 9)


def test_fit_ratings_matches_hand_values() -> None:
    # One pairing: the fitted difference is the match's own Elo (with the prior draw
    # added: 75 + 2 × 0.5 = 76 points of 102 games).
    ratings = fit_ratings([Pairing("a", "random", MatchResult(75, 1, 25))], prior_draws=1.0)
    assert ratings["random"] == 0.0
    assert ratings["a"] == pytest.approx(elo_of_score(76 / 102), abs=0.01)
    # A chain a > b > random with consistent odds: 3:1 each step adds 190.8 Elo.
    chain = [Pairing("b", "random", MatchResult(300, 0, 100)),
             Pairing("a", "b", MatchResult(300, 0, 100)),
             Pairing("a", "random", MatchResult(900, 0, 100))]
    ratings = fit_ratings(chain, prior_draws=0.0)
    assert ratings["b"] == pytest.approx(190.85, abs=0.1)
    assert ratings["a"] == pytest.approx(381.7, abs=0.1)
    # a perfect score stays finite thanks to the prior
    assert math.isfinite(fit_ratings([Pairing("a", "random", MatchResult(10, 0, 0))])["a"])
    with pytest.raises(ValueError, match="anchor"):
        fit_ratings([Pairing("a", "b", MatchResult(1, 0, 1))])
    with pytest.raises(ValueError, match="no chain"):
        fit_ratings([Pairing("a", "random", MatchResult(1, 0, 1)), Pairing("c", "d", MatchResult(1, 0, 1))])
    assert Pairing.from_dict(chain[0].to_dict()) == chain[0]


def test_shipped_openings_are_legal_varied_and_distinct() -> None:
    openings = load_openings()
    assert len(openings) >= 16
    assert len(set(openings)) == len(openings)
    assert len({moves[0] for moves in openings}) >= 3  # not all the same first move
    with pytest.raises(IllegalMoveError, match="opening line 2"):
        load_openings("7g7f 3c3d\n7g7f 7g7f\n")
    assert load_openings("# comment\n\n7g7f 3c3d  # a line\n") == [("7g7f", "3c3d")]


def test_greedy_beats_random_clearly() -> None:
    # Measured: 200 games from the shipped openings, +163 =37 -0 (Elo +397 ± 57).
    played = play_match(GreedyPlayer(), RandomPlayer(), load_openings(), range(50), seed=0,
                        max_plies=320)
    result = tally(played)
    assert result.games == 100
    assert result.score >= 0.8, result
    assert result.elo()[0] - result.elo()[1] > 150, result


def test_greedy_takes_the_most_valuable_piece() -> None:
    # Black's rook on 5e can take a pawn on 5c or the gold on 8e: it takes the gold.
    game = Game("4k4/9/4p4/9/1g2R4/9/9/9/4K4 b - 1")
    [move] = GreedyPlayer().choose([game], [random.Random(0)])
    game.push(int(move))
    assert game.moves and game.to_position().endswith("5e8e")


def test_match_plays_colour_swapped_pairs_from_openings() -> None:
    openings = [("7g7f", "3c3d"), ("2g2f",)]
    played = play_match(RandomPlayer("a"), GreedyPlayer("b"), openings, range(3), seed=5, max_plies=40)
    assert [item.index for item in played] == list(range(6))
    assert [item.first_color for item in played] == [Color.BLACK, Color.WHITE] * 3
    assert [item.opening for item in played] == [0, 0, 1, 1, 0, 0]
    assert played[0].names == ("a", "b") and played[1].names == ("b", "a")
    for item in played:
        assert item.game.is_over and item.game.start_sfen == STARTING_SFEN
        assert item.game.to_position().startswith("startpos moves " + " ".join(openings[item.opening]))
    # the same seed plays the same games, however the pairs are split
    again = (play_match(RandomPlayer("a"), GreedyPlayer("b"), openings, [0, 2], seed=5, max_plies=40)
             + play_match(RandomPlayer("a"), GreedyPlayer("b"), openings, [1], seed=5, max_plies=40))
    by_index = {item.index: item.game.moves for item in again}
    assert all(by_index[item.index] == item.game.moves for item in played)


def test_resign_and_forfeit_decisions_end_games() -> None:
    class Quitter:
        name = "quitter"

        def __init__(self, decision: Special) -> None:
            self.decision = decision

        def choose(self, games: object, rngs: list[random.Random]) -> list[Special]:
            return [self.decision] * len(rngs)

        def close(self) -> None:
            pass

    for decision, reason in ((Special.RESIGN, Termination.RESIGNATION), (Special.FORFEIT, Termination.FORFEIT)):
        played = play_match(RandomPlayer(), Quitter(decision), [("7g7f",)], range(1))
        assert tally(played) == MatchResult(2, 0, 0)
        assert {item.game.outcome.reason for item in played if item.game.outcome} == {reason}


def test_policy_player_and_match_against_random_are_reproducible() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    def against_random() -> MatchResult:
        policy = PolicyPlayer(model, "policy")
        return tally(play_match(policy, RandomPlayer(), load_openings(), range(3), seed=1,
                                max_plies=60))

    result = against_random()
    assert result.games == 6
    assert against_random() == result
    sampled = PolicyPlayer(model, "sampled", temperature=1.0)
    games = [Game() for _ in range(3)]
    first = sampled.choose(games, [random.Random(index) for index in range(3)])
    assert first == sampled.choose(games, [random.Random(index) for index in range(3)])
    assert all(move in game.legal_moves() for move, game in zip(first, games, strict=True))


class FixedPolicy(torch.nn.Module):
    """Logits and a value that do not depend on the position."""

    def __init__(self, logits: torch.Tensor, value: float) -> None:
        super().__init__()
        self.logits, self.value = logits, value

    def forward(self, observations: torch.Tensor) -> PolicyValue:
        count = observations.shape[0]
        return PolicyValue(self.logits.expand(count, -1).clone(), torch.full((count,), self.value))


def test_a_policy_that_is_ahead_does_not_walk_into_a_repetition_draw() -> None:
    cycle = ["2h3h", "8b7b", "3h2h", "7b8b"]
    game = Game()
    for usi in cycle * 2 + cycle[:3]:
        game.push_usi(usi)
    assert game.side_to_move == Color.WHITE
    repeat, other = (game.board.move_from_usi(usi) for usi in ("7b8b", "3c3d"))
    logits = torch.zeros(NUM_ACTIONS)
    logits[move_to_action(game.board, repeat)] = 10.0  # the policy's favourite repeats
    logits[move_to_action(game.board, other)] = 5.0
    for value, temperature, expected in ((0.4, 0.0, other), (-0.4, 0.0, repeat),
                                         (0.4, 0.01, other)):
        player = PolicyPlayer(FixedPolicy(logits, value), "fixed", temperature=temperature)
        assert player.choose([game], [random.Random(0)]) == [expected], (value, temperature)
        assert not game.is_over and game.ply == 11  # looking ahead left the game as it was
    plain = PolicyPlayer(FixedPolicy(logits, 0.4), "plain", avoid_sennichite=False)
    assert plain.choose([game], [random.Random(0)]) == [repeat]
    game.push(repeat)
    assert game.outcome is not None and game.outcome.reason == Termination.REPETITION
    # Ahead, it does not wait for the fourth time: a first return is already avoided.
    early = Game()
    for usi in cycle[:3]:
        early.push_usi(usi)
    player = PolicyPlayer(FixedPolicy(logits, 0.4), "fixed")
    assert player.choose([early], [random.Random(0)]) == [other]
    assert PolicyPlayer(FixedPolicy(logits, -0.4), "fixed").choose([early], [random.Random(0)]) == [repeat]


def test_a_policy_does_not_give_perpetual_check_even_when_behind() -> None:
    game = Game("4k4/9/R8/9/9/9/9/9/4K4 b - 1")  # the rook checks on ranks a and b
    for usi in ["9c9a", "5a5b", "9a9b", "5b5a"] + ["9b9a", "5a5b", "9a9b", "5b5a"] * 2:
        game.push_usi(usi)
    check, other = (game.board.move_from_usi(usi) for usi in ("9b9a", "9b9c"))
    logits = torch.zeros(NUM_ACTIONS)
    logits[move_to_action(game.board, check)] = 10.0
    logits[move_to_action(game.board, other)] = 5.0
    player = PolicyPlayer(FixedPolicy(logits, -0.4), "fixed")
    assert player.choose([game], [random.Random(0)]) == [other]
    plain = PolicyPlayer(FixedPolicy(logits, -0.4), "plain", avoid_sennichite=False)
    assert plain.choose([game], [random.Random(0)]) == [check]
    game.push(check)
    assert game.outcome == Outcome(Color.WHITE, Termination.PERPETUAL_CHECK)


def test_a_policy_player_plays_a_forced_mate_unless_told_not_to() -> None:
    game = Game("4k4/9/4P4/9/9/9/9/9/4K4 b G 1")  # G*5b, guarded by the pawn, mates
    stroll, mate = (game.board.move_from_usi(usi) for usi in ("5i5h", "G*5b"))
    logits = torch.zeros(NUM_ACTIONS)
    logits[move_to_action(game.board, stroll)] = 10.0
    assert PolicyPlayer(FixedPolicy(logits, 0.0), "mates").choose([game], [random.Random(0)]) == [mate]
    alone = PolicyPlayer(FixedPolicy(logits, 0.0), "alone", mate_plies=0, avoid_sennichite=False)
    assert alone.choose([game], [random.Random(0)]) == [stroll]
    game.push(mate)
    assert game.outcome == Outcome(Color.BLACK, Termination.CHECKMATE)


def test_load_policy_reads_checkpoints_and_policy_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = build_config([{"model": {"blocks": 1, "channels": 16, "value_hidden": 16}}])
    state = {"model": build_model(config.model).state_dict(), "config": config.to_dict(),
             "counters": {"step": 10, "policy_version": 4}, "optimizer": {"big": torch.zeros(1000)}}
    full = save_checkpoint(tmp_path / "run", 10, state, keep=1)
    small = save_policy(tmp_path / "pool" / "step-10.pt", state)
    assert small.stat().st_size < full.stat().st_size
    for path in (full, small):
        model, version = load_policy(path)
        assert version == 4 and not model.training
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_policy(tmp_path / "junk.pt")


def test_a_movetime_gives_each_game_its_own_time_and_visits_search_games_together() -> None:
    games = [Game() for _ in range(3)]
    for game, usi in zip(games, ("7g7f", "2g2f", "5g5f"), strict=True):
        game.push_usi(usi)
    rngs = [random.Random(index) for index in range(3)]
    for player, calls in ((SearchPlayer(build_model(PRESETS["tiny"]), "timed", movetime=0.05),
                           [(1, None, 0.05)] * 3),
                          (SearchPlayer(build_model(PRESETS["tiny"]), "counted", visits=12),
                           [(3, 12, None)])):
        seen: list[tuple[int, int | None, float | None]] = []
        inner = player.search.search

        def recorded(searched, visits=None, seconds=None, inner=inner, seen=seen):  # type: ignore[no-untyped-def]
            seen.append((len(searched), visits, seconds))
            return inner(searched, visits, seconds)

        player.search.search = recorded  # type: ignore[method-assign]
        moves = player.choose(games, rngs)
        assert seen == calls, player.name
        assert all(game.is_legal(move) for game, move in zip(games, moves, strict=True))

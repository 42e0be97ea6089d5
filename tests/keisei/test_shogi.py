"""Rules pinned by published perft counts and hand-made positions for every ending."""

from __future__ import annotations

import logging
import random

import pytest

from keisei.errors import GameOverError, IllegalMoveError, InvalidSfenError, RecordError
from keisei.kifu import read_csa, read_kif, to_csa, to_kif
from keisei.rules import main as shogi_main
from keisei.rules import perft
from keisei.shogi import (
    STARTING_SFEN,
    Color,
    Game,
    Outcome,
    Termination,
    normalize_sfen,
    play_random_game,
)

MATSURI = "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w GR5pnsg 1"
MAX_MOVES = "R8/2K1S1SSk/4B4/9/9/9/9/9/1L1L1L3 b RBGSNLP3g3n17p 1"


# --- perft (qiita.com/ak11 "将棋でPerftしてみたまとめ"; TalkChess "Shogi Perft numbers") -----
@pytest.mark.parametrize(("sfen", "depth", "nodes"), [
    (STARTING_SFEN, 1, 30), (STARTING_SFEN, 2, 900), (STARTING_SFEN, 3, 25_470),
    (STARTING_SFEN, 4, 719_731),
    (MATSURI, 1, 207), (MATSURI, 2, 28_684), (MATSURI, 3, 4_809_015),
    (MAX_MOVES, 1, 593), (MAX_MOVES, 2, 105_677),
])
def test_perft_matches_published_counts(sfen: str, depth: int, nodes: int) -> None:
    assert perft(sfen, depth) == nodes


@pytest.mark.slow
def test_perft_start_depth_5() -> None:
    assert perft("startpos", 5) == 19_861_490


def test_perft_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert shogi_main(["perft", "startpos", "3"]) == 0
    assert "perft(3) = 25470" in capsys.readouterr().out


# --- the endings ----------------------------------------------------------------------
def play(game: Game, *usi_moves: str) -> Game:
    for usi in usi_moves:
        game.push_usi(usi)
    return game


def test_checkmate_ends_the_game_for_the_mated_side() -> None:
    game = Game("4k4/9/4P4/9/9/9/9/9/4K4 b G 1")
    play(game, "G*5b")
    assert game.outcome == Outcome(Color.BLACK, Termination.CHECKMATE)
    assert game.outcome.winner == "black" and game.outcome.reason == "checkmate"
    assert game.legal_moves() == []
    with pytest.raises(GameOverError):
        game.push_usi("5a4a")


def test_pawn_drop_mate_is_not_legal_but_other_drop_mate_is() -> None:
    # White king in the corner; knight on 3c covers 2a, gold on 1c covers 2b and 1b.
    pawn = Game("8k/9/6N1G/9/9/9/9/9/4K4 b P 1")
    assert pawn.board.move_from_usi("P*1b") not in pawn.legal_moves()
    with pytest.raises(IllegalMoveError, match="P\\*1b"):
        pawn.push_usi("P*1b")
    assert pawn.ply == 0 and not pawn.is_over
    gold = play(Game("8k/9/6N1G/9/9/9/9/9/4K4 b G 1"), "G*1b")
    assert gold.outcome == Outcome(Color.BLACK, Termination.CHECKMATE)


def test_second_unpromoted_pawn_on_a_file_is_not_legal() -> None:
    game = Game("4k4/9/9/9/9/9/4P4/9/4K4 b P 1")
    with pytest.raises(IllegalMoveError):
        game.push_usi("P*5e")
    play(game, "P*4e")
    assert game.ply == 1


KING_SHUFFLE = ("5i4h", "5a4b", "4h5i", "4b5a")


def test_fourth_occurrence_is_a_repetition_draw() -> None:
    game = Game()
    for _ in range(2):
        play(game, *KING_SHUFFLE)
    play(game, *KING_SHUFFLE[:3])
    assert game.outcome is None and game.repetitions == 2
    play(game, KING_SHUFFLE[3])  # the start position for the fourth time
    assert game.ply == 12
    assert game.outcome == Outcome(None, Termination.REPETITION)
    assert game.outcome.is_draw


def test_third_occurrence_does_not_end_the_game() -> None:
    game = play(Game(), *KING_SHUFFLE, *KING_SHUFFLE)
    assert game.repetitions == 2 and game.outcome is None


def test_perpetual_check_loses_for_the_checking_side() -> None:
    # Black's rook checks on every move while the white king steps 5a-4a-5a.
    game = Game("4k4/9/9/9/9/9/9/9/K4R3 b - 1")
    cycle = ("4i5i", "5a4a", "5i4i", "4a5a")
    for _ in range(3):
        play(game, *cycle)
    assert game.outcome == Outcome(Color.WHITE, Termination.PERPETUAL_CHECK)


def test_perpetual_check_by_white_loses_for_white() -> None:
    game = Game("k4r3/9/9/9/9/9/9/9/4K4 w - 1")
    cycle = ("4a5a", "5i4i", "5a4a", "4i5i")
    for _ in range(3):
        play(game, *cycle)
    assert game.outcome == Outcome(Color.BLACK, Termination.PERPETUAL_CHECK)


def test_max_plies_is_a_draw() -> None:
    game = Game(max_plies=6)
    play(game, *KING_SHUFFLE, "5i4h")
    assert game.outcome is None
    play(game, "5a4b")
    assert game.outcome == Outcome(None, Termination.MAX_PLIES)


ENTERING = "+P+P+P+P+P4/+P+P+P+P+P4/9/4K4/9/9/9/9/4k4 b 2R2B4G4S4N4L8p 1"


def test_entering_king_declaration_wins_when_enabled() -> None:
    game = play(Game(ENTERING), "5d5c")
    assert game.outcome is None  # white to move; black declares on its own turn
    play(game, "5i5h")
    assert game.outcome == Outcome(Color.BLACK, Termination.ENTERING_KING)
    off = play(Game(ENTERING, entering_king=False), "5d5c", "5i5h")
    assert off.outcome is None


def test_illegal_move_loses_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    game = Game()
    before = game.sfen()
    with caplog.at_level(logging.ERROR, logger="keisei.shogi"):
        game.push(12345)
    assert game.outcome == Outcome(Color.WHITE, Termination.ILLEGAL_MOVE)
    assert game.sfen() == before
    assert "illegal move" in caplog.text and "black" in caplog.text
    assert game.pop() == 12345 and game.outcome is None


def test_move_with_wrong_piece_bits_is_illegal() -> None:
    # cshogi's Board.is_legal accepts this (the piece-type bits are wrong); Game must not.
    game = Game()
    move = game.board.move_from_usi("7g7f")
    game.push(move ^ (3 << 16))
    assert game.outcome is not None and game.outcome.reason == Termination.ILLEGAL_MOVE


def test_pop_restores_position_counts_and_outcome() -> None:
    game = play(Game("4k4/9/4P4/9/9/9/9/9/4K4 b G 1"), "G*5b")
    assert game.is_over
    game.pop()
    assert not game.is_over and game.ply == 0 and game.repetitions == 0
    with pytest.raises(IndexError):
        game.pop()


def test_push_known_keeps_counts_and_adjudicates_only_when_asked() -> None:
    # the moves a search walks down again: the same positions, counts and results as push
    rng = random.Random(7)
    checked, known = Game(), Game()
    while not checked.is_over:
        move = rng.choice(checked.legal_moves())
        checked.push(move)
        known.push_known(move)
        assert known.outcome == checked.outcome and known.repetitions == checked.repetitions
        assert known.legal_moves() == checked.legal_moves()
    # unadjudicated: the result reads None, the legal moves are made on first use, and a
    # push after it still checks and adjudicates
    game = Game("4k4/9/4P4/9/9/9/9/9/4K4 b G 1")
    mate = game.board.move_from_usi("G*5b")
    game.push_known(mate, adjudicate=False)
    assert game.outcome is None and game.legal_moves() == []
    game.pop()
    game.push_known(mate)
    assert game.outcome == Outcome(Color.BLACK, Termination.CHECKMATE)
    shuffle = Game()
    for usi in KING_SHUFFLE * 2 + KING_SHUFFLE[:3]:
        shuffle.push_known(shuffle.board.move_from_usi(usi), adjudicate=False)
    assert shuffle.repetitions == 2
    play(shuffle, KING_SHUFFLE[3])
    assert shuffle.outcome == Outcome(None, Termination.REPETITION)


def test_resign_gives_the_win_to_the_opponent() -> None:
    game = play(Game(), "7g7f")
    assert game.resign() == Outcome(Color.BLACK, Termination.RESIGNATION)


def test_forfeit_gives_the_win_to_the_opponent_and_records_read_it_as_a_loss() -> None:
    game = play(Game(), "7g7f", "3c3d")
    assert game.forfeit() == Outcome(Color.WHITE, Termination.FORFEIT)
    with pytest.raises(GameOverError):
        game.forfeit()
    for back in (read_csa(to_csa(game)), read_kif(to_kif(game))):
        assert back.moves == game.moves
        assert back.outcome == Outcome(Color.WHITE, Termination.RESIGNATION)  # as a loss on time


# --- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(("sfen", "names"), [
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1 b - 1", "8 ranks"),
    ("lnsgkgsnl/1r5b1/pppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1", "rank c"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL x - 1", "side to move"),
    ("lnsgkgsnl/1r5b1/ppppxpppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1", "unknown piece 'x'"),
    ("lnsgkgsnl/1r5b1/pppp+gpppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1", "cannot promote"),
    ("lnsg1gsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1", "kings"),
    ("4k4/9/9/9/9/9/4P4/4P4/4K4 b - 1", "nifu"),
    ("P3k4/9/9/9/9/9/9/9/4K4 b - 1", "never move"),
    ("4k4/9/9/9/9/9/9/9/4K4 b 19P 1", "pieces of kind 'p'"),
    ("4k4/4R4/9/9/9/9/9/9/4K4 b - 1", "not to move is in check"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - zero", "move number"),
])
def test_bad_sfen_is_rejected_naming_the_problem(sfen: str, names: str) -> None:
    with pytest.raises(InvalidSfenError, match=names):
        Game(sfen)
    with pytest.raises(ValueError):  # a plain ValueError to callers that know no better
        normalize_sfen(sfen)


@pytest.mark.parametrize("usi", ["7g7e", "hello", "", "7g7f+", "P*5e", "9z9y"])
def test_illegal_usi_text_raises_value_error_naming_it(usi: str) -> None:
    game = Game()
    with pytest.raises(ValueError, match=repr(usi).replace("*", "\\*").replace("+", "\\+")):
        game.push_usi(usi)
    assert game.ply == 0 and not game.is_over


def test_max_plies_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_plies"):
        Game(max_plies=0)


# --- records --------------------------------------------------------------------------
def finished_games() -> list[Game]:
    games = [play_random_game(seed, max_plies=400) for seed in range(12)]
    games.append(play_random_game(3, max_plies=30))
    games.append(play_random_game(4, max_plies=200, sfen=MATSURI))
    games.append(play(Game("4k4/9/9/9/9/9/9/9/K4R3 b - 1"), *(("4i5i", "5a4a", "5i4i", "4a5a") * 3)))
    games.append(play(Game(), *(KING_SHUFFLE * 3)))
    games.append(play(Game(ENTERING), "5d5c", "5i5h"))
    resigned = play(Game(), "7g7f")
    resigned.resign()
    games.append(resigned)
    return games


def test_csa_round_trip_keeps_moves_start_and_outcome() -> None:
    reasons = set()
    for game in finished_games():
        back = read_csa(to_csa(game))
        assert back.moves == game.moves
        assert back.start_sfen == game.start_sfen
        assert back.outcome == game.outcome, to_csa(game)
        reasons.add(game.outcome.reason if game.outcome else None)
    assert {Termination.CHECKMATE, Termination.MAX_PLIES, Termination.PERPETUAL_CHECK,
            Termination.REPETITION, Termination.ENTERING_KING, Termination.RESIGNATION} <= reasons


def test_kif_round_trip_of_even_games() -> None:
    for game in finished_games():
        if game.start_sfen != STARTING_SFEN:
            continue
        text = to_kif(game)
        assert text.encode("cp932")  # a .kif file is cp932
        back = read_kif(text)
        assert back.moves == game.moves
        assert back.outcome == game.outcome, text[-200:]


def test_kif_with_board_diagram_start_is_refused_clearly() -> None:
    text = to_kif(play_random_game(1, max_plies=10, sfen=MATSURI))
    assert "後手の持駒" in text  # written with a board diagram for GUIs
    with pytest.raises(RecordError, match="board diagram"):
        read_kif(text)


def test_usi_position_round_trip() -> None:
    game = play_random_game(7, max_plies=80)
    back = Game.from_position("position " + game.to_position())
    assert back.moves == game.moves and back.outcome is None  # the ply limit is not in the text
    assert Game.from_position(game.to_position(), max_plies=80).outcome == game.outcome


def test_bad_records_raise_record_error() -> None:
    with pytest.raises(RecordError):
        read_csa("V2.2\nPI\n+\n+7775FU\n")
    with pytest.raises(IllegalMoveError, match="move 2"):
        Game.from_position("startpos moves 7g7f 7g7f")
    with pytest.raises(InvalidSfenError):
        Game.from_position("sfen nonsense moves 7g7f")


def test_random_games_end_and_keep_the_board_consistent() -> None:
    rng = random.Random(5)
    for _ in range(20):
        game = Game(max_plies=300)
        while not game.is_over:
            game.push(rng.choice(game.legal_moves()))
        assert game.board.is_ok()
        assert game.ply <= 300


def test_a_copy_has_the_same_history_and_is_independent() -> None:
    game = Game(max_plies=50)
    for usi in ("5i4h", "5a4b", "4h5i", "4b5a"):
        game.push_usi(usi)
    copy = game.copy()
    assert copy.sfen() == game.sfen() and copy.repetitions == game.repetitions == 1
    assert copy.moves == game.moves and copy.max_plies == 50
    copy.push_usi("7g7f")
    assert game.ply == 4 and copy.ply == 5

"""Record readers: CSA, KIF and USI lines, folders and archives, bad records skipped and counted."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from keisei.kifu import ReadStats, parse_records, read_csa, read_games, to_csa, to_kif
from keisei.shogi import Color, Game, Termination, play_random_game

GOOD_CSA = """V2.2
N+a
N-b
PI
+
+7776FU
-3334FU
+8822UM
-3122GI
%TORYO
"""
# Black's bishop cannot reach 2b through its own pawn on 7g (move 1 is illegal).
ILLEGAL_CSA = GOOD_CSA.replace("+7776FU\n-3334FU\n+8822UM", "+8822UM")
# Sennichite claimed after four moves: no position occurred four times.
FALSE_SENNICHITE_CSA = GOOD_CSA.replace("%TORYO", "%SENNICHITE")
# Fool's mate for White ("-2288HI" style games are long); a short mate from a set position:
MATE_USI = "sfen 4k4/9/4G4/9/9/9/9/9/4K4 b G2r2b2g4s4n4l18p 1 moves G*5b"


def csa_file(*games: str) -> bytes:
    return "/\n".join(games).encode()


def test_csa_file_of_many_games_keeps_the_good_ones_and_names_the_bad() -> None:
    stats = ReadStats()
    data = csa_file(GOOD_CSA, ILLEGAL_CSA, "this is not CSA\n", FALSE_SENNICHITE_CSA, GOOD_CSA)
    games = list(parse_records("games.csa", data, stats))
    assert [item.origin for item in games] == ["games.csa#1", "games.csa#5"]
    first = games[0].game
    assert first.ply == 4 and first.outcome is not None
    assert first.outcome.winner is Color.WHITE and games[0].result_known  # Black resigned
    assert stats.games == 2 and stats.skipped == 3
    assert stats.skipped_reasons["illegal move"] == 1
    assert stats.skipped_reasons["false result"] == 1
    assert sum(stats.skipped_reasons.values()) == 3


def test_skipped_records_are_logged_with_file_game_and_ply(caplog: pytest.LogCaptureFixture) -> None:
    list(parse_records("bad.csa", csa_file(GOOD_CSA, ILLEGAL_CSA)))
    messages = [record.getMessage() for record in caplog.records]
    assert any("bad.csa#2" in message and "move 1" in message for message in messages)


def test_kif_reads_and_a_result_line_that_contradicts_the_resignation_is_false() -> None:
    game = read_csa(GOOD_CSA)
    kif = to_kif(game)
    stats = ReadStats()
    assert len(list(parse_records("a.kif", kif.encode("cp932"), stats))) == 1
    lie = kif.replace("後手の勝ち", "先手の勝ち")  # Black resigned, yet "Black wins"
    assert lie != kif
    assert not list(parse_records("b.kifu", lie.encode("utf-8"), stats))
    assert stats.skipped_reasons == {"false result": 1}


def test_csa_claiming_a_draw_where_the_rules_see_mate_is_false() -> None:
    mated = Game.from_position(MATE_USI)
    assert mated.outcome is not None and mated.outcome.reason is Termination.CHECKMATE
    text = to_csa(mated).replace("%TORYO", "%MAX_MOVES")
    stats = ReadStats()
    assert not list(parse_records("m.csa", text.encode(), stats))
    assert stats.skipped_reasons == {"false result": 1}


def test_usi_lines_with_and_without_results() -> None:
    lines = "\n".join([
        "startpos moves 7g7f 3c3d result white",  # stated result
        "position startpos moves 7g7f 3c3d",  # no result: moves only
        MATE_USI,  # decided by the rules
        MATE_USI + " result white",  # contradicts the mate
        "startpos moves 7g7f 7g7f",  # illegal second move
        "startpos moves 7g7f result nobody",
        "# a comment line",
        "",
    ])
    stats = ReadStats()
    games = list(parse_records("lines.usi", lines.encode(), stats))
    assert [item.origin for item in games] == ["lines.usi#1", "lines.usi#2", "lines.usi#3"]
    assert games[0].result_known and games[0].game.outcome is not None
    assert games[0].game.outcome.winner is Color.WHITE
    assert not games[1].result_known and games[1].game.outcome is None
    assert games[2].result_known
    assert stats.unknown_results == 1
    assert stats.skipped == 3
    assert stats.skipped_reasons["false result"] == 1
    assert stats.skipped_reasons["illegal move"] == 1


def test_folders_zip_and_tar_archives_are_walked(tmp_path: Path) -> None:
    records = tmp_path / "records"
    (records / "deep" / "er").mkdir(parents=True)
    (records / "one.csa").write_bytes(csa_file(GOOD_CSA))
    (records / "deep" / "er" / "two.kif").write_text(to_kif(read_csa(GOOD_CSA)),
                                                    encoding="cp932")
    (records / "notes.txt").write_text("not a record")
    zipped = tmp_path / "games.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("in/zip.csa", csa_file(GOOD_CSA, GOOD_CSA))
        archive.writestr("in/readme.md", "ignored")
    tarred = tmp_path / "games.tar.gz"
    with tarfile.open(tarred, "w:gz") as archive:
        data = ("\n".join(play_random_game(seed=seed, max_plies=40).to_position()
                          for seed in range(3)) + "\n").encode()
        info = tarfile.TarInfo("lines.usi")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    stats = ReadStats()
    games = list(read_games([records, zipped, tarred, broken], stats))
    assert len(games) == 1 + 1 + 2 + 3
    assert any(item.origin.endswith("games.zip:in/zip.csa#2") for item in games)
    assert stats.files == {"csa": 2, "kif": 1, "usi": 1}
    assert stats.ignored_files == 2
    assert stats.skipped_reasons == {"unreadable archive": 1}


def test_a_missing_path_fails_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(read_games([tmp_path / "nowhere"]))


def test_long_decided_records_are_not_cut_to_a_draw() -> None:
    game = play_random_game(seed=3, max_plies=600)
    while game.is_over:
        game.pop()
    for _ in range(600 - game.ply):
        if game.is_over:
            break
        game.push(game.legal_moves()[0])
    if game.is_over:
        game.pop()
    game.resign()
    assert game.ply > 512
    again = read_csa(to_csa(game))
    assert again.outcome == game.outcome


def test_a_player_may_play_on_where_declaring_would_win() -> None:
    # Black's king and twelve pieces (28 points) are in White's camp: Black may declare,
    # but a record may show it playing on; only a %KACHI end is checked for the 27-point rule.
    sfen = "RRBBGGGGS/SSS1K4/9/9/9/9/9/9/4k4 b 18p4l4n 1"
    assert Game(sfen).outcome is not None  # a live game declares at once
    played = Game(sfen, entering_king=False)
    for usi in ("1a2b", "5i5h", "2b1a", "5h5i"):
        played.push_usi(usi)
    text = to_csa(played)
    declared = read_csa(text.replace("%CHUDAN", "%KACHI"))
    assert declared.outcome is not None and declared.outcome.reason is Termination.ENTERING_KING
    resigned = read_csa(text.replace("%CHUDAN", "%TORYO"))
    assert resigned.ply == 4 and resigned.outcome is not None
    assert resigned.outcome.winner is Color.WHITE
    false = Game(max_plies=10)
    false.push_usi("7g7f")
    stats = ReadStats()
    assert not list(parse_records("k.csa", to_csa(false).replace("%CHUDAN", "%KACHI").encode(),
                                  stats))
    assert stats.skipped_reasons == {"false result": 1}

"""The run directory's files by name, and a game's KIF and CSA written in one place."""

from __future__ import annotations

from pathlib import Path

from keisei.kifu import read_csa, read_kif, to_csa, to_kif, write_game_files
from keisei.rundir import RunDir, checkpoint_name
from keisei.shogi import play_random_game


def test_a_run_directory_knows_its_files_and_whether_it_holds_a_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert not run.holds_run() and run.newest_checkpoint() is None
    run.checkpoints.mkdir(parents=True)
    assert not run.holds_run()  # an empty checkpoints/ is no run
    for step in (256, 1024, 512):
        (run.checkpoints / checkpoint_name(step)).write_bytes(b"")
    (run.checkpoints / ".checkpoint-000000002048.pt.tmp").write_bytes(b"")  # a torn write
    assert run.holds_run()
    assert run.newest_checkpoint() == run.checkpoints / "checkpoint-000000001024.pt"
    assert [path.name for path in run.list_checkpoints()] == [
        "checkpoint-000000000256.pt", "checkpoint-000000000512.pt", "checkpoint-000000001024.pt"]
    metrics_only = RunDir(tmp_path / "other")
    metrics_only.path.mkdir()
    metrics_only.metrics.write_text("")
    assert metrics_only.holds_run()
    assert run.rank(0) == run and run.rank(2).path == run.path / "ranks" / "rank-2"
    assert run.rank(2).status == run.path / "ranks" / "rank-2" / "status.json"
    assert run.sample_game(256) == run.games / "game-000000000256"


def test_a_game_is_written_as_kif_in_cp932_and_csa_in_utf8(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    game = play_random_game(seed=2, max_plies=30)
    names = ("Keisei v1", "名人 🙂")  # the emoji is not in cp932
    kif_path, csa_path = write_game_files(run.sample_game(128), to_kif(game, names),
                                          to_csa(game, names))
    assert run.sample_games() == [csa_path]
    assert read_csa(csa_path.read_text(encoding="utf-8")).to_position() == game.to_position()
    kif = kif_path.read_bytes().decode("cp932")
    assert "名人 ?" in kif
    assert read_kif(kif).to_position() == game.to_position()

"""Position samples and shards: what the network is taught, duplicates, the split, batching."""

from __future__ import annotations

from pathlib import Path

import cshogi
import numpy as np
import pytest

from keisei.dataset import (
    RESULT_UNKNOWN,
    DatasetError,
    DuplicateFilter,
    RecordFolder,
    ShardSet,
    decode_samples,
    finished_games,
    game_positions,
    prepare_dataset,
    read_summary,
    split_key,
    split_of,
)
from keisei.encoding import encode_observation, legal_action_mask, move_to_action
from keisei.kifu import KifuGame, to_csa
from keisei.shogi import Color, Game, play_random_game


def recorded(game: Game, known: bool = True, origin: str = "x#1") -> KifuGame:
    return KifuGame(origin, game, known)


def test_samples_decode_to_what_the_network_sees_in_the_game() -> None:
    game = play_random_game(seed=5, max_plies=60)
    samples = game_positions(recorded(game))[0]
    decoded = decode_samples(samples)
    replay = Game(game.start_sfen, max_plies=100)
    for index, move in enumerate(game.moves):
        board = replay.board
        np.testing.assert_array_equal(decoded.observations[index],
                                      encode_observation(board, replay.repetitions))
        np.testing.assert_array_equal(decoded.legal_masks[index], legal_action_mask(board))
        assert decoded.actions[index] == move_to_action(board, move)
        replay.push(move)


def test_results_are_from_the_movers_view() -> None:
    game = Game()
    for usi in ("7g7f", "3c3d", "8h2b+", "3a2b"):
        game.push_usi(usi)
    game.resign()  # Black to move resigns: White won
    assert game.outcome is not None and game.outcome.winner is Color.WHITE
    decoded = decode_samples(game_positions(recorded(game))[0])
    np.testing.assert_array_equal(decoded.results, [-1, 1, -1, 1])  # Black, White, Black, White
    assert decoded.result_known.all()
    unknown = game_positions(recorded(game, known=False))[0]
    assert (unknown["result"] == RESULT_UNKNOWN).all()
    assert not decode_samples(unknown).result_known.any()


def test_repetitions_reach_the_planes() -> None:
    game = Game()
    for _ in range(2):
        for usi in ("5i5h", "5a5b", "5h5i", "5b5a"):
            game.push_usi(usi)
    game.push_usi("7g7f")
    samples = game_positions(recorded(game, known=False))[0]
    assert list(samples["repetitions"]) == [0, 0, 0, 0, 1, 1, 1, 1, 2]


def test_duplicate_filter_keeps_a_pair_at_most_max_times() -> None:
    games = [Game() for _ in range(5)]
    for game in games:
        game.push_usi("7g7f")
    kept = [len(DuplicateFilter(0).keep(*game_positions(recorded(game))))
            for game in games]
    assert kept == [1] * 5
    duplicates = DuplicateFilter(3)
    kept = [len(duplicates.keep(*game_positions(recorded(game))))
            for game in games]
    assert kept == [1, 1, 1, 0, 0] and duplicates.dropped == 2
    other = Game()
    other.push_usi("2g2f")  # another move from the same position is another pair
    assert len(duplicates.keep(*game_positions(recorded(other)))) == 1


def test_split_is_by_game_and_stable() -> None:
    origins = [f"records/game-{index}.csa#1" for index in range(2000)]
    held = [origin for origin in origins if split_of(origin, 0.1) == "val"]
    assert 150 < len(held) < 250
    assert held == [origin for origin in origins if split_of(origin, 0.1) == "val"]
    assert all(split_of(origin, 0.0) == "train" for origin in origins)
    # Games of one file differ only in their number; they too spread over both sides.
    for prefix in ("/tmp/pytest-of-root/pytest-103/test_the_command_writes_metric0/records",
                   "records", "/data/floodgate/2024"):
        numbered = [f"{prefix}/greedy.csa#{number}" for number in range(1, 31)]
        assert 1 <= sum(split_of(origin, 0.2) == "val" for origin in numbered) <= 15, prefix


def test_the_split_does_not_depend_on_where_the_records_are(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "records", tmp_path / "b" / "elsewhere" / "records"
    write_records(first, 40)
    write_records(second, 40)
    one = prepare_dataset([first], tmp_path / "one", val_fraction=0.3, max_duplicates=0)
    two = prepare_dataset([second], tmp_path / "two", val_fraction=0.3, max_duplicates=0)
    assert 0 < one.games_val < 40
    assert (one.games_val, one.positions_val) == (two.games_val, two.positions_val)
    assert split_key(f"{first}/games.csa#3", str(first)) == "records/games.csa#3"
    assert split_key(f"{first}/games.csa#3", f"{first}/") == "records/games.csa#3"


def write_records(folder: Path, games: int) -> None:
    folder.mkdir(parents=True)
    text = "/\n".join(to_csa(play_random_game(seed=seed, max_plies=80)) for seed in range(games))
    (folder / "games.csa").write_text(text)


def test_prepare_and_batches(tmp_path: Path) -> None:
    write_records(tmp_path / "records", 40)
    summary = prepare_dataset([tmp_path / "records"], tmp_path / "data", val_fraction=0.2,
                              max_duplicates=0, shard_size=300)
    assert summary.games == 40 and 0 < summary.games_val < 40
    assert summary.positions_train + summary.positions_val == 40 * 80
    assert read_summary(tmp_path / "data") == summary
    train = ShardSet(tmp_path / "data", "train")
    assert len(train) == summary.positions_train and max(train.sizes) == 300
    everything = np.concatenate(list(train.batches(64, None)))
    assert len(everything) == len(train)
    shuffled = list(train.batches(64, np.random.default_rng(0), chunk_shards=2))
    assert all(len(batch) == 64 for batch in shuffled)
    assert len(shuffled) == len(train) // 64
    seen = np.concatenate(shuffled)
    assert not np.array_equal(seen, everything[:len(seen)])  # shuffled
    assert set(map(bytes, seen)) <= set(map(bytes, everything))


def test_an_empty_or_damaged_data_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "empty.csa").write_text("")
    with pytest.raises(DatasetError, match="no training position"):
        prepare_dataset([tmp_path / "records"], tmp_path / "data", val_fraction=0.1,
                        max_duplicates=4)
    with pytest.raises(DatasetError, match="not a prepared data set"):
        read_summary(tmp_path / "data")
    (tmp_path / "data" / "train-00000.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a data shard"):
        ShardSet(tmp_path / "data", "train")


def test_a_sample_whose_move_is_illegal_is_refused() -> None:
    game = Game()
    game.push_usi("7g7f")
    samples = game_positions(recorded(game))[0]
    board = cshogi.Board()
    samples["action"][0] = move_to_action(board, board.move_from_usi("2g2f")) + 1
    with pytest.raises(DatasetError, match="damaged"):
        decode_samples(samples)


def test_an_unfinished_preparation_is_replaced(tmp_path: Path) -> None:
    write_records(tmp_path / "records", 4)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-00007.npy").write_bytes(b"left by a preparation that was killed")
    with pytest.raises(FileNotFoundError, match="missing"):
        prepare_dataset([tmp_path / "missing"], tmp_path / "other", val_fraction=0.1,
                        max_duplicates=0)
    assert not (tmp_path / "other").exists()
    prepare_dataset([tmp_path / "records"], data, val_fraction=0.0, max_duplicates=0)
    assert sorted(path.name for path in data.glob("*.npy")) == ["train-00000.npy"]
    assert len(ShardSet(data, "train")) == 4 * 80


def test_only_finished_games_are_taken_from_a_file_being_written() -> None:
    first, second = (to_csa(play_random_game(seed=seed, max_plies=30)).encode() for seed in (1, 2))
    assert second.rstrip().rsplit(b"\n", 1)[-1].startswith(b"%")  # keisei's CSA ends each game
    assert finished_games(first) == ([first], len(first))
    written = first + b"/\n" + second
    assert finished_games(written) == ([first, second], len(written))
    # the next game half written: the first is whole (a separator follows it), the rest waits
    half = first + b"/\n" + second[:len(second) // 2]
    assert finished_games(half) == ([first], len(first) + 2)
    # where the last poll stopped, the separator comes first
    assert finished_games(b"/\n" + second) == ([second], len(second) + 2)
    assert finished_games(b"/") == ([], 0)
    assert finished_games(second[:-1]) == ([], 0)  # its ending line not yet whole
    # a file written with CRLF line ends splits the same way
    first, second = (game.replace(b"\n", b"\r\n") for game in (first, second))
    written = first + b"/\r\n" + second
    assert finished_games(written) == ([first, second], len(written))
    assert finished_games(first + b"/\r\n" + second[:20]) == ([first], len(first) + 3)
    assert finished_games(b"/\r\n" + second) == ([second], len(second) + 3)


def test_a_growing_record_folder_is_read_as_keisei_pretrain_would_split_it(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    games = [to_csa(play_random_game(seed=seed, max_plies=60)) for seed in range(30)]
    folder = RecordFolder(records, val_fraction=0.3, max_duplicates=0)
    assert folder.poll() == 0 and len(folder) == 0
    path = records / "games-00.csa"
    path.write_text("/\n".join(games[:10]))
    added = folder.poll()
    assert added == len(folder) > 0 and folder.poll() == 0  # nothing read twice
    with open(path, "a", encoding="utf-8") as handle:  # one game and a half more
        handle.write("/\n" + games[10] + "/\n" + games[11][:200])
    folder.poll()
    assert folder.games + folder.held_out == 11
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(games[11][200:] + "/\n" + "/\n".join(games[12:]))
    (records / "games-01.csa").write_text(games[0])  # another worker's file
    folder.poll()
    assert folder.games + folder.held_out == 31 and 0 < folder.held_out < 31
    # the same training positions keisei-pretrain takes from the finished folder
    prepare_dataset([records], tmp_path / "data", val_fraction=0.3, max_duplicates=0)
    prepared = np.concatenate(list(ShardSet(tmp_path / "data", "train").batches(64, None)))
    assert sorted(map(bytes, folder.samples)) == sorted(map(bytes, prepared))
    drawn = folder.sample(500, np.random.default_rng(0))
    assert len(drawn) == 500 and set(map(bytes, drawn)) <= set(map(bytes, folder.samples))
    with pytest.raises(DatasetError, match="no such folder"):
        RecordFolder(tmp_path / "missing", val_fraction=0.05, max_duplicates=4)


def test_a_record_folder_reads_a_bounded_share_of_a_file_at_each_poll(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    games = [to_csa(play_random_game(seed=seed, max_plies=60)) for seed in range(12)]
    (records / "games-00.csa").write_text("/\n".join(games))
    longest = max(len(game.encode()) for game in games)
    folder = RecordFolder(records, val_fraction=0.0, max_duplicates=0)
    polls = [folder.poll(limit=3 * longest)]
    while polls[-1]:
        polls.append(folder.poll(limit=3 * longest))
    assert len(polls) >= 4 + 1  # at most three games a poll, then nothing left
    assert folder.games == 12  # every game once, none cut
    whole = RecordFolder(records, val_fraction=0.0, max_duplicates=0)
    whole.poll()
    assert sorted(map(bytes, folder.samples)) == sorted(map(bytes, whole.samples))
    # a game longer than the limit is still read, whole
    one = RecordFolder(records, val_fraction=0.0, max_duplicates=0)
    one.poll(limit=10)
    assert one.games == 1

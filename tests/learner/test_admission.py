"""Admission: every game's one way into the buffer; writers racing never fail each other."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from keisei.config import SelfPlayConfig
from keisei.model import PRESETS, build_model
from keisei.records import DRAW, FinishedGame, GameRecord, replay_game
from keisei.selfplay import Collector
from learner.admission import Admission, InvalidGames
from learner.buffer import IN_PROCESS, ExperienceBuffer

MAX_PLIES = 24


class Records:
    """A record sink: the wire records a collector finishes."""

    def __init__(self) -> None:
        self.records: list[GameRecord] = []

    def put_record(self, record: GameRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def records() -> list[GameRecord]:
    """Real self-play records (a random tiny network), at most ``MAX_PLIES`` long."""
    sink = Records()
    collector = Collector(build_model(PRESETS["tiny"]), SelfPlayConfig(games=8, max_plies=MAX_PLIES),
                          sink, seed=3)
    while len(sink.records) < 24:
        collector.step(0)
    return sink.records


def make_admission(steps_per_epoch: int, capacity: int) -> Admission:
    buffer = ExperienceBuffer(steps_per_epoch, capacity, gamma=1.0, gae_lambda=1.0,
                              max_policy_lag=1000)
    return Admission(buffer, lambda: 0, max_plies=MAX_PLIES, entering_king=True)


def games_of(records: list[GameRecord]) -> list[FinishedGame]:
    return [replay_game(record, MAX_PLIES, True) for record in records]


def test_an_in_process_game_waits_when_peers_filled_the_buffer(records: list[GameRecord]) -> None:
    """The crash this module exists for: a peer's batch fills the buffer while the
    in-process collector finishes a game; the game must wait, not fail training."""
    admission = make_admission(steps_per_epoch=MAX_PLIES, capacity=3 * MAX_PLIES)
    buffer = admission.buffer
    while buffer.size + MAX_PLIES <= buffer.capacity:
        admission.receive(records[:1], "actor-1")
    game = games_of(records[1:2])[0]
    admission.put(game)  # used to raise BufferFullError from the collector
    counts = admission.counts()
    assert counts.steps_pending >= game.length and counts.steps_in_process == game.length
    buffer.take_epoch()
    buffer.commit_epoch()
    admission.flush()
    assert admission.counts().steps_pending == 0  # in, in order, once room was freed


def test_peers_games_are_validated_and_all_or_none_admitted(records: list[GameRecord]) -> None:
    admission = make_admission(steps_per_epoch=64, capacity=512)
    forged = dataclasses.replace(records[0], winner=1 - records[0].winner
                                 if records[0].winner in (0, 1) else 0)
    with pytest.raises(InvalidGames):
        admission.receive([records[1], forged], "liar")
    future = dataclasses.replace(records[2], policy_versions=records[2].policy_versions + 5)
    with pytest.raises(InvalidGames, match="newer than the learner's 0"):
        admission.receive([future], "liar")
    counts = admission.counts()
    assert counts.games_invalid == 3 and counts.games_received == 0 and counts.steps_held == 0
    assert counts.steps_invalid == records[1].length + forged.length + future.length


def test_back_pressure_drops_the_oldest_peer_games_never_in_process_ones(
        records: list[GameRecord]) -> None:
    admission = make_admission(steps_per_epoch=MAX_PLIES, capacity=2 * MAX_PLIES)
    own = games_of(records[:1])[0]
    admission.receive(records[1:3], "actor-1")  # in the buffer (or waiting, if it is full)
    admission.put(own)
    for _ in range(10):
        admission.receive(records[3:6], "actor-1")
    counts = admission.counts()
    assert counts.steps_dropped_backpressure > 0
    assert counts.steps_pending <= admission.buffer.capacity + own.length
    waiting_sources = {source for _, source in admission._pending}
    in_buffer = admission.buffer.sources_of(admission.buffer.take_epoch())
    assert IN_PROCESS in waiting_sources or IN_PROCESS in in_buffer  # never dropped


def test_two_writers_racing_a_trainer_never_fail_and_every_step_is_counted_once(
        records: list[GameRecord]) -> None:
    """A peer thread and an in-process thread write as fast as they can into a tiny
    buffer while a trainer thread takes and commits epochs; no writer may see an error,
    and at the end every step is trained, dropped (counted) or waiting."""
    admission = make_admission(steps_per_epoch=32, capacity=2 * 32 + MAX_PLIES)
    buffer = admission.buffer
    own = games_of(records)
    errors: list[BaseException] = []
    stop = threading.Event()
    trained = [0]
    rounds = 400

    def guarded(work):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
        return threading.Thread(target=run)

    def peer() -> None:
        rng = np.random.default_rng(1)
        for _ in range(rounds):
            start = int(rng.integers(0, len(records) - 4))
            admission.receive(records[start:start + 4], "actor-1")

    def in_process() -> None:
        for index in range(rounds * 2):
            admission.put(own[index % len(own)])

    def trainer() -> None:
        while not stop.is_set():
            admission.flush()
            if buffer.wait_until_ready(timeout=0.001):
                batch = buffer.take_epoch()
                trained[0] += batch.size
                stop.wait(0.005)  # the update: slower than the writers, so games must wait
                buffer.commit_epoch()

    writers = [guarded(peer), guarded(in_process)]
    taker = guarded(trainer)
    for thread in (*writers, taker):
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    stop.set()
    taker.join(timeout=10)
    assert not errors, errors
    counts = admission.counts()
    received = counts.steps_received + counts.steps_in_process
    assert counts.steps_in_process == sum(own[index % len(own)].length for index in range(rounds * 2))
    assert received == (trained[0] + counts.steps_dropped_backpressure + counts.steps_dropped_stale
                        + counts.steps_held + counts.steps_pending)
    assert trained[0] > 0 and counts.steps_dropped_backpressure > 0  # both paths were exercised


def test_a_peers_pool_game_counts_the_learners_plies_and_reports_its_result(
        records: list[GameRecord]) -> None:
    admission = make_admission(steps_per_epoch=10 * MAX_PLIES, capacity=20 * MAX_PLIES)
    results: list[tuple[str, float]] = []
    admission.pool_result = lambda opponent, score: results.append((opponent, score))
    assert records[1].winner == records[2].winner == DRAW  # (24 plies: every game a draw)
    pool_games = [dataclasses.replace(records[1], opponent="v4", learner_side=0),
                  dataclasses.replace(records[2], opponent="start", learner_side=1)]
    games = admission.receive([*pool_games, records[0]], "actor-1")
    assert results == [("v4", 0.5), ("start", 0.5)]  # self-play reports nothing
    learner_plies = [int((game.players == record.learner_side).sum())
                     for game, record in zip(games, pool_games, strict=False)]
    assert [game.steps for game in games[:2]] == learner_plies
    assert admission.counts().steps_received == sum(learner_plies) + records[0].length

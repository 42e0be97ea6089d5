"""The actor table: one connection per id, a bounded table, entries that expire."""

from __future__ import annotations

from learner.actors import ActorState, ActorTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_id_held_by_a_live_connection_cannot_be_taken() -> None:
    clock = Clock()
    table = ActorTable(clock=clock)
    assert table.hello("a", "h", 1) is None
    table.games("a", 2, 100)
    clock.now += 3
    refused = table.hello("a", "evil", 666, takeover_after=5.0)
    assert refused is not None and "live connection" in refused
    info = table.snapshot()[0]
    assert (info.pid, info.games_received) == (1, 2)  # the holder's entry is untouched
    clock.now += 5.1  # silent past the takeover time: a reconnecting actor may claim it
    assert table.hello("a", "h", 2, takeover_after=5.0) is None
    assert table.snapshot()[0].pid == 2 and table.snapshot()[0].games_received == 2


def test_an_id_is_free_again_after_bye_failure_or_a_supervised_restart() -> None:
    clock = Clock()
    table = ActorTable(clock=clock)
    for actor_id in ("bye", "failed", "restarted"):
        table.hello(actor_id, "h", 1)
    table.bye("bye")
    table.mark("failed", ActorState.FAILED)
    table.restarted("restarted")
    for actor_id in ("bye", "failed", "restarted"):
        assert table.hello(actor_id, "h", 2, takeover_after=5.0) is None, actor_id
    assert table.hello("restarted", "h", 3, takeover_after=5.0) is not None  # once only


def test_repeating_hello_on_the_same_connection_keeps_the_start_time() -> None:
    clock = Clock()
    table = ActorTable(clock=clock)
    table.hello("squatter", "h", 1)
    for _ in range(20):
        clock.now += 3
        assert table.hello("squatter", "h", 1, new_connection=False) is None
    info = table.snapshot()[0]
    assert info.connected_at == 100.0 and info.last_seen == clock.now


def test_the_table_is_bounded_and_forgets_the_long_gone() -> None:
    clock = Clock()
    table = ActorTable(clock=clock)
    for index in range(4):
        assert table.hello(f"a{index}", "h", 1, capacity=4) is None
    refused = table.hello("a4", "h", 1, capacity=4)
    assert refused is not None and "full" in refused
    clock.now += 50
    table.heartbeat("a0", 0, 0, 0)
    clock.now += 20
    assert sorted(table.forget(60.0, keep={"a1"})) == ["a2", "a3"]
    assert {info.actor_id for info in table.snapshot()} == {"a0", "a1"}
    assert table.hello("a4", "h", 1, capacity=4) is None


def test_the_table_owns_which_connection_speaks_for_which_actor() -> None:
    clock = Clock()
    table = ActorTable(clock=clock)
    assert table.connect("a", b"conn-1", "h", 1) is None
    assert table.sender(b"conn-1") == "a" and table.sender(b"conn-2") is None
    refused = table.connect("b", b"conn-1", "h", 1)  # one connection, one actor
    assert refused is not None and "already speaks for actor 'a'" in refused
    refused = table.connect("a", b"conn-2", "evil", 6, takeover_after=5.0)
    assert refused is not None and "live connection" in refused
    assert table.sender(b"conn-2") is None and table.connections() == [b"conn-1"]
    assert table.connect("a", b"conn-1", "h", 1) is None  # hello again on its own connection
    clock.now += 6  # silent past the takeover time: a new connection may claim the id
    assert table.connect("a", b"conn-2", "h", 2, takeover_after=5.0) is None
    assert table.sender(b"conn-1") is None and table.sender(b"conn-2") == "a"
    table.bye("a")
    table.disconnect("a")
    assert table.sender(b"conn-2") is None and table.connections() == []
    assert table.connect("c", b"conn-3", "h", 3) is None
    clock.now += 100
    assert table.forget(older_than=50, keep=set()) == ["a", "c"]
    assert table.sender(b"conn-3") is None and table.connections() == []


def test_an_actors_rate_is_the_steps_it_delivered_over_the_window() -> None:
    clock = Clock()
    table = ActorTable(clock=clock, rate_window=30.0)
    assert table.hello("a", "h", 1) is None and table.hello("b", "h", 2) is None
    clock.now = 101.0
    table.games("a", 2, 600)
    table.heartbeat("a", 0, 0, 0)  # what it says of itself does not count
    clock.now = 110.0
    table.games("a", 3, 900)
    clock.now = 120.0  # 20 s since its hello, shorter than the window
    rates = {info.actor_id: info.steps_per_second for info in table.snapshot()}
    assert rates == {"a": 1500 / 20, "b": 0.0}
    clock.now = 135.0  # the window is (105, 135]: the 600 steps at 101 have left it
    assert table.snapshot()[0].steps_per_second == 900 / 30
    table.bye("a")  # a paused or stopped actor reads what it delivered, not 0
    clock.now = 139.0
    assert table.snapshot()[0].steps_per_second == 900 / 30
    assert table.hello("a", "h", 3) is None  # its new process carries the count on
    assert table.snapshot()[0].steps_per_second == 900 / 30
    clock.now = 140.1
    assert table.snapshot()[0].steps_per_second == 0.0

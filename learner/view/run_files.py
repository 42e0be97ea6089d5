"""What the page shows of one run, read from its directory alone (``RunFiles``)."""

from __future__ import annotations

import json
import math
import threading
import time
import tomllib
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import Any

from keisei.elo import elo_interval
from keisei.errors import KeiseiError
from keisei.kifu import read_csa
from keisei.rundir import RunDir
from learner.fields import FIELDS
from learner.view.errors import WebError
from learner.view.games import LiveGame, game_result

MAX_RESPONSE_POINTS = 5000
"""Curve points in one response; the page asks again from where it stopped."""
MAX_KEPT_POINTS = 20000
"""Curve points kept per run; beyond, every other old point is dropped (the curve thins)."""
MAX_KEPT_CHANGES = 1000
"""Mode changes kept per run (the newest)."""
MAX_GAMES_LISTED = 500
"""Finished games listed per run (the newest)."""
MAX_METRICS_READ = 16 << 20
"""Bytes of ``metrics.jsonl`` read per refresh (a huge file is read over several)."""
REFRESH_SECONDS = 0.5
"""A run's files are read again at most this often, whatever the number of clients."""
GAMES_REFRESH_SECONDS = 5.0
SUMMARY_SECONDS = 0.5
"""Time a listing spends reading games it has not summarised yet (the rest come at the
next listing, so a run with hundreds of new records never holds up a page)."""
MAX_SUMMARY_BYTES = 1 << 20
"""A record larger than this is listed without its summary."""
CURVE_FIELDS = ("step", "time", *(field.name for field in FIELDS))
"""The numbers of each ``metrics.jsonl`` line the curves show, in the order of a point."""


class RunFiles:
    """What the page shows of one run, read from its directory alone. ``refresh`` reads
    the files again (at most every ``REFRESH_SECONDS``, whoever asks); every reader gets
    plain JSON-ready values under one lock."""

    def __init__(self, index: int, path: Path) -> None:
        self.index = index
        self.path = path
        self.run = RunDir(path)
        self.name = path.name or str(path)
        self._lock = threading.Lock()
        self._refreshed = -math.inf
        self._offset = 0  # bytes of metrics.jsonl taken in
        self._partial = b""  # a line being written
        self.points: list[list[float | None]] = []
        self.generation = 0  # changes when points are thinned or metrics.jsonl starts over
        self.last: dict[str, Any] = {}
        self.first_time: float | None = None
        self.modes: list[list[Any]] = []  # [step, time, mode] where the mode changed
        self.transitions: dict[float, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.ratings: dict[str, Any] | None = None
        # per game file: (its modification time, its summary for the games browser)
        self._summaries: dict[str, tuple[float, dict[str, Any]]] = {}
        self.total_steps: int | None = None
        self.minutes = 0.0  # train.minutes
        self._mtimes: dict[str, float] = {}
        self._games: list[dict[str, Any]] = []
        self._games_listed = -math.inf
        self.version = 0  # changes whenever anything shown changed
        self._newest: LiveGame | None = None  # the newest sample game, once read

    # --- reading ----------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed < REFRESH_SECONDS:
                return
            self._refreshed = now
            changed = self._read_metrics()
            self.status, status_changed = self._read_json(self.run.status, self.status)
            self.ratings, ratings_changed = self._read_json(self.run.ratings, self.ratings)
            if self.total_steps is None or self._changed(self.run.config):
                self.total_steps, self.minutes = self._read_budget()
            if changed or status_changed or ratings_changed:
                self.version += 1

    def _changed(self, path: Path) -> bool:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return False
        if self._mtimes.get(path.name) == mtime:
            return False
        self._mtimes[path.name] = mtime
        return True

    def _read_json(self, path: Path, current: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        if not self._changed(path):
            return current, False
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being replaced, or not there yet
            return current, False
        return (value if isinstance(value, dict) else current), True

    def _read_budget(self) -> tuple[int | None, float]:
        """``train.total_steps`` and ``train.minutes`` (0: none) of the run's configuration."""
        try:
            train = tomllib.loads(self.run.config.read_text(encoding="utf-8"))["train"]
            return int(train["total_steps"]), float(train.get("minutes", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            return None, 0.0

    def _read_metrics(self) -> bool:
        path = self.run.metrics
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if size < self._offset:  # rewritten (a resume cut it back): start over
            self._offset, self._partial = 0, b""
            self.points, self.modes, self.transitions, self.last = [], [], {}, {}
            self.first_time = None
            self.generation += 1
        if size == self._offset:
            return False
        with path.open("rb") as stream:
            stream.seek(self._offset)
            data = stream.read(min(size - self._offset, MAX_METRICS_READ))
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                self._take(record)
        if len(self.points) > MAX_KEPT_POINTS:
            half = len(self.points) // 2
            self.points = self.points[:half:2] + self.points[half:]
            self.generation += 1
        return True

    def _take(self, record: dict[str, Any]) -> None:
        seconds = record.get("time")
        if isinstance(seconds, int | float) and self.first_time is None:
            self.first_time = float(seconds)
        point = [_number(record.get(name)) for name in CURVE_FIELDS]
        point[1] = (None if point[1] is None or self.first_time is None
                    else round(point[1] - self.first_time, 3))  # wall-clock since the first epoch
        self.points.append(point)
        mode = record.get("mode")
        if mode is not None and (not self.modes or self.modes[-1][2] != mode):
            self.modes.append([record["step"], point[1], mode])
        for item in record.get("transitions") or []:
            if isinstance(item, dict) and isinstance(item.get("time"), int | float):
                self.transitions[float(item["time"])] = {
                    "time": item["time"], "mode": str(item.get("mode")),
                    "cause": str(item.get("cause"))[:200]}
        if len(self.transitions) > MAX_KEPT_CHANGES:  # a run that changed mode very often
            for key in sorted(self.transitions)[:-MAX_KEPT_CHANGES]:
                del self.transitions[key]
        if len(self.modes) > MAX_KEPT_CHANGES:
            self.modes = self.modes[-MAX_KEPT_CHANGES:]
        self.last = {key: value for key, value in record.items() if key != "actors"}
        self.last["actors"] = record.get("actors") or []

    # --- what is served ---------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        self.refresh()
        with self._lock:
            last = self.last
            step = last.get("step")
            rate = _number(last.get("steps_per_second"))
            eta = None
            if self.total_steps is not None and step is not None and rate:
                eta = max(0.0, (self.total_steps - step) / rate)
            trained = _number(last.get("train_seconds"))
            if self.minutes and trained is not None:  # train.minutes ends it first
                left = max(0.0, 60 * self.minutes - trained)
                eta = left if eta is None else min(eta, left)
            try:
                age = time.time() - self.run.metrics.stat().st_mtime
            except OSError:
                age = None
            status = self.status or {}
            # a run that ended wrote its final status (how it ended, its actors stopped)
            ended = status.get("state") not in (None, "running")
            fresh_status = bool(status) and (ended or time.time() - float(status.get("time", 0)) < 30)
            actors = status.get("actors") if fresh_status else last.get("actors")
            return {
                "id": self.index, "name": self.name, "path": str(self.path), "version": self.version,
                "generation": self.generation, "points": len(self.points),
                "step": step, "epoch": last.get("epoch"), "total_steps": self.total_steps,
                "minutes": self.minutes or None, "train_seconds": _number(last.get("train_seconds")),
                "policy_version": last.get("policy_version"),
                "mode": status.get("mode") if fresh_status else last.get("mode"),
                "steps_per_second": rate, "actor_steps_per_second": _number(
                    last.get("actor_steps_per_second")),
                "eta_seconds": eta, "time": last.get("time"),
                "seconds_since_epoch": None if age is None else round(age, 1),
                "status_time": status.get("time") if status else None,
                "state": status.get("state", "running") if fresh_status else None,
                "ended": status.get("ended") if ended else None,
                "ledger": status.get("ledger") if fresh_status and status.get("ledger")
                else last.get("ledger"),
                "games": last.get("games"), "mean_game_length": last.get("mean_game_length"),
                "actors": (actors or [])[:64], "actor_states": last.get("actor_states"),
                "modes": self.modes[-200:],
                "transitions": sorted(self.transitions.values(), key=lambda t: t["time"])[-50:],
                "first_time": self.first_time,
                "ratings": ratings_rows(self.ratings),
                "ladder": (self.ratings or {}).get("latest", {}).get("scores"),
            }

    def metrics(self, generation: int | None, start: int) -> dict[str, Any]:
        self.refresh()
        with self._lock:
            if generation != self.generation:
                start = 0
            points = self.points[start:start + MAX_RESPONSE_POINTS]
            return {"fields": CURVE_FIELDS, "generation": self.generation, "from": start,
                    "points": points, "total": len(self.points)}

    def games(self) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            if now - self._games_listed >= GAMES_REFRESH_SECONDS:
                self._games_listed = now
                self._games = self._list_games()
            return list(self._games)

    def _list_games(self) -> list[dict[str, Any]]:
        """The newest games, each with its group (self-play samples; rating games by step
        and opponent), and once read its players, result and length (``summarise``)."""
        found: list[dict[str, Any]] = []
        for files, kind, folder in ((self.run.sample_games(), "sample", self.run.games),
                                    (self.run.rating_games(), "rating", self.run.rating_jobs / "jobs")):
            for file in files:
                try:
                    mtime = file.stat().st_mtime
                except OSError:
                    continue
                name = file.relative_to(folder).as_posix()
                found.append({"path": file.relative_to(self.path).as_posix(), "kind": kind,
                              "mtime": mtime, "name": name, "group": game_group(kind, name)})
        found.sort(key=lambda item: (item["mtime"], item["path"]), reverse=True)
        found = found[:MAX_GAMES_LISTED]
        deadline = time.monotonic() + SUMMARY_SECONDS
        for item in found:
            cached = self._summaries.get(item["path"])
            if cached is None or cached[0] != item["mtime"]:
                if time.monotonic() > deadline:
                    continue  # summarised at a later listing
                cached = (item["mtime"], summarise(self.path / item["path"]))
                self._summaries[item["path"]] = cached
            item.update(cached[1])
        listed = {item["path"] for item in found}
        for path in [path for path in self._summaries if path not in listed]:
            del self._summaries[path]
        return found

    def resolve(self, relative: str) -> Path:
        """The file ``relative`` names inside the run directory.

        :raises WebError: for anything but a plain relative path to a ``.csa`` file that
            lies below the run directory.
        """
        if not relative or len(relative) > 512 or "\x00" in relative or "\\" in relative:
            raise WebError(HTTPStatus.BAD_REQUEST, "path: a relative path to a .csa game is needed")
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or pure.suffix != ".csa":
            raise WebError(HTTPStatus.FORBIDDEN, f"path {relative!r}: only .csa games inside the "
                           "run directory are served")
        root = self.path.resolve()
        target = (root / pure).resolve()
        if not target.is_relative_to(root):  # a link that leads out
            raise WebError(HTTPStatus.FORBIDDEN, f"path {relative!r}: leads outside the run directory")
        if not target.is_file():
            raise WebError(HTTPStatus.NOT_FOUND, f"path {relative!r}: no such game")
        return target

    def newest_game(self) -> LiveGame | None:
        """The newest sample game (what ``keisei-web`` shows on the live board)."""
        samples = [item for item in self.games() if item["kind"] == "sample"]
        if not samples:
            return None
        newest = samples[0]
        key = f"{self.index}:{newest['path']}:{newest['mtime']}"
        if self._newest is not None and self._newest.key == key:
            return self._newest  # read once, not once a second for every page
        try:
            game = read_csa((self.path / newest["path"]).read_text(encoding="utf-8", errors="replace"))
        except (OSError, KeiseiError):
            return None
        self._newest = LiveGame(key, f"{self.name}: {newest['name']}", game.start_sfen,
                                tuple(game.moves), result=game_result(game))
        return self._newest


def game_group(kind: str, name: str) -> str:
    """The group a game is listed under: ``self-play samples``, or for a rating game
    ``rating of step 81,920 vs greedy`` (its folder ``step-<step>/<opponent>/``)."""
    if kind == "sample":
        return "self-play samples"
    parts = name.split("/")
    if len(parts) >= 3:
        return f"rating of {person_name(parts[0])} vs {person_name(parts[1])}"
    return "rating games"


def person_name(name: str) -> str:
    """A player's name for people: ``step-000000081920`` is ``step 81,920``."""
    if name.startswith("step-") and name[5:].isdigit():
        return f"step {int(name[5:]):,}"
    return name


def summarise(path: Path) -> dict[str, Any]:
    """A record's players, result, winner (``black``, ``white`` or null) and length, by
    replaying it; ``{"unread": reason}`` where it cannot be read."""
    try:
        if path.stat().st_size > MAX_SUMMARY_BYTES:
            return {"unread": "too large to list"}
        text = path.read_text(encoding="utf-8", errors="replace")
        game = read_csa(text)
    except (OSError, KeiseiError) as exc:
        return {"unread": str(exc)[:200]}
    names = {"N+": "black", "N-": "white"}
    for line in text.splitlines()[:8]:
        if line[:2] in names:
            names[line[:2]] = person_name(line[2:].strip()[:80])
    outcome = game.outcome
    return {"black": names["N+"], "white": names["N-"], "result": game_result(game),
            "winner": None if outcome is None or outcome.winner is None else str(outcome.winner),
            "plies": game.ply}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def ratings_rows(ratings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each rated policy and baseline with its Elo and a 95% interval from its own games."""
    if not ratings:
        return []
    table = ratings.get("table") or {}
    steps = {str(item[0]): item[1] for item in ratings.get("rated") or [] if len(item) == 2}
    results: dict[str, list[int]] = {}
    for pairing in ratings.get("pairings") or []:
        try:
            first, second = str(pairing["first"]), str(pairing["second"])
            wins, draws, losses = (int(pairing[key]) for key in ("wins", "draws", "losses"))
        except (KeyError, TypeError, ValueError):
            continue
        for name, won, lost in ((first, wins, losses), (second, losses, wins)):
            tally = results.setdefault(name, [0, 0, 0])
            tally[0] += won
            tally[1] += draws
            tally[2] += lost
    rows = []
    for name, elo in table.items():
        row: dict[str, Any] = {"name": name, "elo": _number(elo), "step": steps.get(name)}
        wins, draws, losses = results.get(name, [0, 0, 0])
        if wins + draws + losses:
            low, high = elo_interval(wins, draws, losses)
            half = (high - low) / 2
            row.update(games=wins + draws + losses, interval=_number(half))
        rows.append(row)
    return rows

"""One hierarchy for every error Keisei raises on purpose.

Bad input from a user, a file or a peer is a ``ValueError`` subclass, so callers
that only know the standard library can still catch it; misuse of an API is a
``RuntimeError`` subclass whose message says what to call instead.
"""

from __future__ import annotations


class KeiseiError(Exception):
    """Base class of every error raised deliberately by Keisei."""


class InvalidSfenError(KeiseiError, ValueError):
    """An SFEN string (or USI ``position`` string) is malformed or describes an impossible position."""


class IllegalMoveError(KeiseiError, ValueError):
    """A move given as text or as an action index is malformed or not legal in the position."""


class RecordError(KeiseiError, ValueError):
    """A game record (KIF, CSA, a wire record) cannot be read or replayed; ``kind`` says
    how, in a few words (one of ``RECORD_PROBLEMS``), for counts and summaries."""

    def __init__(self, message: str, kind: str = "does not parse") -> None:
        if kind not in RECORD_PROBLEMS:
            raise ValueError(f"RecordError kind {kind!r} is not one of {RECORD_PROBLEMS}")
        super().__init__(message)
        self.kind = kind


RECORD_PROBLEMS = ("does not parse", "bad position", "illegal move", "false result", "too long",
                   "bad target", "bad opponent")
"""The kinds of ``RecordError``."""


class GameOverError(KeiseiError, RuntimeError):
    """A move was pushed after the game ended."""

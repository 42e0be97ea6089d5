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
    """A game record (KIF, CSA) cannot be read or replayed."""


class GameOverError(KeiseiError, RuntimeError):
    """A move was pushed after the game ended."""

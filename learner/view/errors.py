"""A bad request to the web view."""

from __future__ import annotations

from http import HTTPStatus

from keisei.errors import KeiseiError


class WebError(KeiseiError, ValueError):
    """A bad request: its status and a message that names the problem."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status

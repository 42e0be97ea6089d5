"""What Keisei's two HTTP servers share (the web view, ``learner.view.server``, and
``keisei-play``): a request handler that answers every error as JSON, sends the same
safety headers, bounds each connection's time, and refuses a ``Host`` header that names
another site (DNS rebinding)."""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from learner.view.address import host_allowed
from learner.view.errors import WebError

logger = logging.getLogger(__name__)


def allowed_host_names() -> frozenset[str]:
    """Names besides IP addresses and ``localhost`` that requests may call a server by:
    ``KEISEI_WEB_HOSTS``, comma-separated."""
    return frozenset(name.strip().lower() for name in
                     os.environ.get("KEISEI_WEB_HOSTS", "").split(",") if name.strip())


class JsonHandler(BaseHTTPRequestHandler):
    """The shared part of a Keisei request handler. Its server has ``bound_host`` and
    ``allowed_hosts`` (``allowed_host_names``)."""

    protocol_version = "HTTP/1.1"
    server_version = "Keisei"
    sys_version = ""
    send_timeout = 10.0
    """Seconds a connection may stall before it is dropped."""
    content_security_policy = "default-src 'self'"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.send_timeout)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug("%s %s", self.address_string(), format % args)

    def check_host(self) -> None:
        """:raises WebError: (403) for a ``Host`` header that is not this server's name."""
        host = self.headers.get("Host")
        server: Any = self.server
        if not host_allowed(host, server.bound_host, server.allowed_hosts):
            raise WebError(HTTPStatus.FORBIDDEN, f"Host {str(host)[:100]!r} is not this server's "
                           "name: refused (a page on another site, through DNS rebinding?); "
                           "use its address, or list the name in KEISEI_WEB_HOSTS")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the base class answers itself (a request line too long, a malformed
        request) as JSON, like every other error here."""
        short, long = self.responses.get(code, ("error", ""))
        text = f"{code} {message or short}" + (f": {explain or long}" if explain or long else "")
        self.close_connection = True
        body = self.command != "HEAD" and code >= 200 and code not in (204, 205, 304)
        try:
            self.send_json({"error": text}, HTTPStatus(code), body=body,
                           extra={"Connection": "close"})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    def send_json(self, value: Any, status: HTTPStatus = HTTPStatus.OK, body: bool = True,
                  extra: dict[str, str] | None = None) -> None:
        data = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        self.send_data(data, "application/json", status, body, extra)

    def send_data(self, data: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK,
                  body: bool = True, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_safety_headers()
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_safety_headers(self) -> None:
        """No caching, no sniffing, the content-security policy, no referrer."""
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", self.content_security_policy)
        self.send_header("Referrer-Policy", "no-referrer")

"""``[HOST:]PORT``: where the web view listens."""

from __future__ import annotations

import ipaddress

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``HOST`` defaults to 127.0.0.1; ``[::1]:PORT`` for IPv6).

    :raises ValueError: naming what is wrong.
    """
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"web address {text!r}: the port must be a number ([HOST:]PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"web address {text!r}: port {port} is not in 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, bound: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether a request's ``Host`` header names this server, so that a page on another
    site cannot read the view through DNS rebinding (its requests carry that site's name):
    an IP address, ``localhost``, the host the server is bound to, or a name in ``extra``
    (``KEISEI_WEB_HOSTS``). A request without the header (HTTP/1.0) is not a browser's."""
    if header is None:
        return True
    name = header.strip().lower()
    if name.startswith("["):  # [v6]:port
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if not name:
        return False
    if name in ("localhost", bound.lower()) or name in extra:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True

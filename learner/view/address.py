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

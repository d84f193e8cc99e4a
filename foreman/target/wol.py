"""Wake-on-LAN: the magic packet that wakes a sleeping target.

The packet is 6 bytes of 0xFF then the MAC address 16 times, sent as one UDP
datagram to a broadcast address (default ``255.255.255.255:9``). One UDP
``sendto`` never blocks long enough to matter, so it is sent directly.
"""

from __future__ import annotations

import socket

from twisted.logger import Logger

__all__ = ["magic_packet", "send_magic_packet"]

_log = Logger()


def magic_packet(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return b"\xff" * 6 + raw * 16


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, 9
    return host, int(port)


def send_magic_packet(mac: str, target: str = "255.255.255.255:9") -> bool:
    host, port = parse_target(target)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.sendto(magic_packet(mac), (host, port))
    except OSError as e:
        _log.warn(
            "Wake-on-LAN to {mac} via {target} failed: {error}", mac=mac, target=target, error=e
        )
        return False
    _log.info("sent Wake-on-LAN to {mac} via {target}", mac=mac, target=target)
    return True

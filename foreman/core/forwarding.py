"""Which peers may tell foreman, by ``X-Forwarded-*``, how clients reached it.

The base URL in artifact links and webhook payloads comes from
``FOREMAN_PUBLIC_URL`` or, when unset, from the request that created the job.
``X-Forwarded-Host``/``-Proto`` are anyone's to send; they are believed only
from the peers ``FOREMAN_TRUSTED_PROXIES`` names (a reverse proxy), never from
any client that can reach the port.
"""

from __future__ import annotations

import ipaddress

from attrs import frozen

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@frozen
class TrustedProxies:
    networks: tuple[_Network, ...]

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """From ``127.0.0.1/8, ::1, 10.0.0.0/8``; an empty text trusts nobody."""
        networks = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(
                    f"{part!r} is not an IP address or network (e.g. 10.0.0.0/8, ::1)"
                ) from None
        return cls(tuple(networks))

    def trusts(self, address: str | None) -> bool:
        """Is a peer at ``address`` a trusted proxy? None (a Unix socket) is local: yes."""
        if address is None:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

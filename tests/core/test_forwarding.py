"""Which peers' X-Forwarded-* headers foreman believes."""

from __future__ import annotations

import re

import pytest

from foreman.core.forwarding import TrustedProxies


def test_addresses_and_networks() -> None:
    trusted = TrustedProxies.parse(" 127.0.0.0/8, ::1,10.1.2.3 ,fd00::/8")
    for peer in ("127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "fd00::5", "::ffff:127.0.0.1"):
        assert trusted.trusts(peer), peer
    for peer in ("10.1.2.4", "192.168.1.1", "2001:db8::1", "not an address", ""):
        assert not trusted.trusts(peer), peer
    assert trusted.trusts(None)  # a Unix socket: only local processes reach it


def test_empty_trusts_no_address() -> None:
    nobody = TrustedProxies.parse("")
    assert nobody.networks == ()
    assert not nobody.trusts("127.0.0.1")


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.300' is not an IP address")):
        TrustedProxies.parse("10.0.0.0/8, 10.0.0.300")

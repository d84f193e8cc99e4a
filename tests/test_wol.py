"""Wake-on-LAN: sent when work waits and the target is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import DatagramProtocol

from foreman.target.wol import magic_packet
from foreman.testing import OllamaSimulator
from tests.harness import chat, reactor, start_stack, until


class _Catcher(DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.packets.append(datagram)


def test_magic_packet_layout() -> None:
    packet = magic_packet("aa:bb:cc:dd:ee:ff")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("aabbccddeeff") * 16
    with pytest.raises(ValueError):
        magic_packet("aa:bb")


@pytest_twisted.ensureDeferred
async def test_wake_on_lan_when_work_waits_for_a_sleeping_target(tmp_path: Path) -> None:
    catcher = _Catcher()
    port = reactor.listenUDP(0, catcher, interface="127.0.0.1")
    sim = OllamaSimulator(models=("llama3.2",), token_rate=200.0, load_time=0.05)
    stack = await start_stack(
        tmp_path,
        sim=sim,
        wol_mac="aa:bb:cc:dd:ee:ff",
        wol_broadcast=f"127.0.0.1:{port.getHost().port}",
    )
    try:
        await sim.sleep(refuse=True)
        monitor = stack.daemon.monitor
        assert monitor is not None
        await until(lambda: monitor.state == "down", timeout=15)
        assert catcher.packets == []  # nothing waits: no reason to wake it
        job = await stack.submit(chat("llama3.2"))
        await until(lambda: len(catcher.packets) >= 1)
        assert catcher.packets[0] == magic_packet("aa:bb:cc:dd:ee:ff")
        await sim.wake()
        done = await stack.wait_job(job["id"])
        assert done["state"] == "done"
    finally:
        await stack.stop()
        await port.stopListening()

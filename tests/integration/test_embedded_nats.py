"""The embedded nats-server the tests, ``make run`` and the bench start (shared/embedded_nats.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from shared.embedded_nats import EmbeddedNats, free_port


def _listener(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    taken = server.port
    # Another process binds the port between free_port() and the server's own bind.
    with _listener(taken), _listener(server.monitor_port):
        try:
            url = server.start()
            assert server.port != taken and url == server.url
            with socket.create_connection(("127.0.0.1", server.port), timeout=2):
                pass
            assert server.proc is not None and server.proc.poll() is None
        finally:
            server.stop()


def test_a_port_fixed_by_the_caller_and_taken_fails_at_once_with_the_servers_reason(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", port=port, log_file=tmp_path / "nats.log")
    with _listener(port):
        started = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match=r"exited.*address already in use"):
                server.start(timeout=15)
        finally:
            server.stop()  # never left running, whatever the test found
        # The exit is noticed when it happens, not after the 15 s wait for the port.
        assert time.monotonic() - started < 10

"""TLS with a self-signed CA (made by tests/cluster/certs.py): clients and services reach a
TLS-only nats-server through the ``ORDERFLOW_NATS_TLS_CA_FILE`` setting (and only with it), and a
3-node cluster whose routes require TLS forms and replicates."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from shared import nats_access
from shared.embedded_nats import EmbeddedCluster, EmbeddedNats, TlsFiles
from shared.runtime import NatsAuth, StartupError, connect_nats
from tests.cluster import system
from tests.cluster.certs import Certs, make_certs

pytestmark = pytest.mark.slow


def server_info(host: str, port: int, timeout: float = 5) -> dict[str, object]:
    """The INFO a server sends in clear text before anything else."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        return _info(s.makefile("rb").readline())


def route_info_over_tls(host: str, port: int, certs: Certs) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.cert), str(certs.key))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        return _info(s.makefile("rb").readline())


def _info(line: bytes) -> dict[str, object]:
    text = line.decode()
    assert text.startswith("INFO "), text
    info: dict[str, object] = json.loads(text[5:])
    return info


async def test_clients_and_services_use_tls_with_the_ca_setting(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    pw = system.passwords()
    server = EmbeddedNats(
        tmp_path / "nats",
        log_file=tmp_path / "nats.log",
        tls=TlsFiles(certs.cert, certs.key),
        authorization=nats_access.render_authorization(nats_access.users(system.CHANNELS), pw),
    )
    url = server.start()
    try:
        assert server_info(server.host, server.port)["tls_required"] is True
        # Without the CA the server's certificate is not trusted: no connection.
        with pytest.raises(StartupError):
            await connect_nats(
                url, "no-ca", timeout=2, auth=NatsAuth(user="cli", password=pw["cli"])
            )

        def db(service: str) -> str:
            return f"sqlite+aiosqlite:///{tmp_path / service}.db"

        ca = NatsAuth(tls_ca_file=certs.ca)
        async with system.running_system(url, db, tmp_path, pw=pw, nats_tls_ca_file=certs.ca):
            load = system.make_load(4, system.run_id())
            await system.restock(url, 100, pw, tls=ca)
            await system.submit(url, load, pw, tls=ca)
            await system.wait_until_all_delivered(db, 4, timeout=60)
    finally:
        server.stop()


async def test_a_cluster_whose_routes_require_tls_forms_and_replicates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    route_tls = TlsFiles(certs.cert, certs.key, certs.ca, verify_clients=True)
    cluster = EmbeddedCluster(
        tmp_path / "cluster", tls=TlsFiles(certs.cert, certs.key), route_tls=route_tls
    )
    cluster.start()  # healthy: the routes work and JetStream elected a meta leader
    try:
        for node in cluster.nodes:
            assert node.cluster is not None
            # The route port speaks TLS from the first byte: nothing in clear text, and a
            # handshake with a certificate the CA signed gets the server's INFO.
            with pytest.raises(TimeoutError):
                server_info(node.host, node.cluster.port, timeout=1)
            info = route_info_over_tls(node.host, node.cluster.port, certs)
            assert info["cluster"] == "orderflow"
        nc = await connect_nats(cluster.url, "tls-test", auth=NatsAuth(tls_ca_file=certs.ca))
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="TLS_R3", subjects=["tls.>"], num_replicas=3))
            for i in range(10):
                await js.publish("tls.x", str(i).encode())
            info = await js.stream_info("TLS_R3")
            assert info.state.messages == 10
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
            await asyncio.sleep(0)
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def test_a_missing_tls_file_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot load the NATS TLS files"):
        await connect_nats(
            "nats://127.0.0.1:1", "x", auth=NatsAuth(tls_ca_file=tmp_path / "missing.pem")
        )

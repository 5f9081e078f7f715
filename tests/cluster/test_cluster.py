"""A 3-node JetStream cluster from the wheel's nats-server on loopback ports, with R3 streams:
one node is killed (SIGKILL) in the middle of a load, and every order still reaches exactly one
final state — nothing lost in the failover, nothing done twice by the retries it causes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import nats_access
from shared.embedded_nats import EmbeddedCluster
from shared.runtime import connect_nats
from tests.cluster import system

pytestmark = pytest.mark.slow

ORDERS = 60


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[EmbeddedCluster, dict[str, str]]]:
    pw = system.passwords()
    nodes = EmbeddedCluster(
        tmp_path / "cluster",
        authorization=nats_access.render_authorization(nats_access.users(system.CHANNELS), pw),
        sync_interval="1s",
    )
    nodes.start()
    try:
        yield nodes, pw
    finally:
        nodes.stop()


async def stream_leader(url: str, pw: dict[str, str], stream: str) -> tuple[str, int]:
    nc = await connect_nats(url, "test-admin", auth=system.auth(nats_access.ADMIN_USER, pw))
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader, len(info.cluster.replicas or [])


async def test_killing_a_node_mid_load_leaves_every_order_in_exactly_one_final_state(
    cluster: tuple[EmbeddedCluster, dict[str, str]], tmp_path: Path
) -> None:
    nodes, pw = cluster
    url = nodes.url

    def db(service: str) -> str:
        return f"sqlite+aiosqlite:///{tmp_path / service}.db"

    load = system.make_load(ORDERS, "cl")
    half = len(load) // 2
    async with system.running_system(url, db, tmp_path, pw=pw, stream_replicas=3):
        await system.restock(url, 10 * ORDERS, pw)
        await system.submit(url, load[:half], pw)
        # Kill the node that leads intake's stream: its RAFT group must elect another leader
        # while events keep flowing, and clients on that node must move to the others.
        leader, followers = await stream_leader(url, pw, nats_access.S_INTAKE)
        assert followers == 2
        victim = next(n for n in nodes.nodes if n.server_name == leader)
        victim.kill()
        killed_at = time.monotonic()
        await system.submit(url, load[half:], pw, first=half)
        await system.wait_until_all_delivered(db, ORDERS, timeout=150)
        print(
            f"\nkilled {leader} (leader of {nats_access.S_INTAKE}) after {half} submissions; "
            f"all {ORDERS} orders delivered {time.monotonic() - killed_at:.1f}s later"
        )
        new_leader, _ = await stream_leader(url, pw, nats_access.S_INTAKE)
        assert new_leader != leader
        result = await system.summary(db, "cl")
        events = await system.events_on_streams(url, pw)
    assert len(result["orders"]) == ORDERS
    for ext, seen in result["orders"].items():
        assert seen["status"] == ["delivered"], (ext, seen)
        assert seen["reservations"] == [(2, "shipped")], (ext, seen)
        assert seen["shipments"] == ["delivered"], (ext, seen)
        assert all(n == 1 for _, n in seen["notifications"]), (ext, seen)
    assert len(result["rejected"]) == len([i for i in range(ORDERS) if i % 15 == 0])
    assert events["orderflow.intake.order_accepted"] == ORDERS
    assert events["orderflow.inventory.stock_reserved"] == ORDERS
    assert events["orderflow.fulfillment.shipment_delivered"] == ORDERS


def test_the_fsync_interval_is_a_setting_of_the_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from orderflow.launcher import Launcher
    from shared.settings import ServiceSettings

    monkeypatch.setenv("ORDERFLOW_NATS_SYNC_INTERVAL", "always")
    config = Launcher(tmp_path).nats.config_text()
    assert config is not None and 'sync_interval: "always"' in config
    with pytest.raises(ValidationError):
        ServiceSettings(nats_sync_interval="soon")

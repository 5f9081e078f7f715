"""`orderflow nats-exporter`: nats-server's monitoring JSON as Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import nats
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from orderflow import nats_exporter
from shared.embedded_nats import EmbeddedNats, free_port

VARZ = {"connections": 3, "in_msgs": 10, "out_msgs": 12, "cpu": 150.0, "mem": 2048}
JSZ = {
    "storage": 4096,
    "streams": 1,
    "account_details": [
        {"stream_detail": [{"name": "ORDERFLOW_INTAKE", "state": {"messages": 7, "bytes": 900}}]}
    ],
}


def test_figures_are_translated_with_base_units() -> None:
    registry = nats_exporter.registry_of(VARZ, JSZ)
    get = registry.get_sample_value
    assert get("nats_monitor_up") == 1
    assert get("nats_server_connections") == 3
    assert get("nats_server_received_messages_total") == 10
    assert get("nats_server_cpu_usage_ratio") == 1.5
    assert get("nats_jetstream_storage_bytes") == 4096
    assert get("nats_jetstream_stream_messages", {"stream": "ORDERFLOW_INTAKE"}) == 7
    assert get("nats_jetstream_stream_bytes", {"stream": "ORDERFLOW_INTAKE"}) == 900


def test_no_answer_is_monitor_down_and_no_stale_figures() -> None:
    registry = nats_exporter.registry_of(None, None)
    samples = [s for f in registry.collect() for s in f.samples]
    assert [(s.name, s.value) for s in samples] == [("nats_monitor_up", 0.0)]


async def scrape(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_serves_a_real_nats_servers_figures_and_says_when_it_is_gone(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    monitor = {"url": f"http://127.0.0.1:{server.monitor_port}"}
    runner = web.AppRunner(nats_exporter.application(lambda: monitor["url"]))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        for _ in range(3):
            await js.publish("probe.x", b"hello")
        seen = await scrape(port)
        await nc.close()
        assert seen["nats_monitor_up"] == 1
        assert seen["nats_jetstream_stream_messages[('stream', 'PROBE')]"] == 3
        assert seen["nats_server_received_messages_total"] >= 3
        assert seen["nats_server_connections"] >= 1

        server.stop()
        gone = await scrape(port)
        assert gone == {"nats_monitor_up": 0.0}
    finally:
        await runner.cleanup()
        server.stop()

"""nats-server's monitoring data (JSON on its monitoring port) as Prometheus metrics.

nats-server serves ``/varz`` and ``/jsz`` as JSON, which Prometheus cannot scrape. This is a small
translator for the figures orderflow's operators look at — connections, traffic, slow consumers,
memory, and JetStream usage per stream — served by ``orderflow nats-exporter``. Each scrape reads
the monitoring port afresh; ``nats_monitor_up`` is 0 when it does not answer. For everything
nats-server knows, run the official prometheus-nats-exporter instead (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# (name, kind, help, key in /varz, scale)
VARZ = (
    ("nats_server_connections", "gauge", "Client connections open now", "connections", 1.0),
    ("nats_server_subscriptions", "gauge", "Subscriptions on the server", "subscriptions", 1.0),
    (
        "nats_server_slow_consumers_total",
        "counter",
        "Clients the server cut off for reading too slowly",
        "slow_consumers",
        1.0,
    ),
    ("nats_server_received_messages_total", "counter", "Messages received", "in_msgs", 1.0),
    ("nats_server_sent_messages_total", "counter", "Messages sent", "out_msgs", 1.0),
    ("nats_server_received_bytes_total", "counter", "Bytes received", "in_bytes", 1.0),
    ("nats_server_sent_bytes_total", "counter", "Bytes sent", "out_bytes", 1.0),
    ("nats_server_resident_memory_bytes", "gauge", "Server resident memory", "mem", 1.0),
    ("nats_server_cpu_usage_ratio", "gauge", "Server CPU use (1 = one core)", "cpu", 0.01),
)
JSZ = (
    ("nats_jetstream_memory_bytes", "JetStream memory storage in use", "memory"),
    ("nats_jetstream_storage_bytes", "JetStream file storage in use", "storage"),
    ("nats_jetstream_streams", "Streams on the server", "streams"),
    ("nats_jetstream_consumers", "Consumers on the server", "consumers"),
    ("nats_jetstream_messages", "Messages held in all streams", "messages"),
)
STREAM = (
    ("nats_jetstream_stream_messages", "Messages held in the stream", "messages"),
    ("nats_jetstream_stream_bytes", "Bytes held in the stream", "bytes"),
    ("nats_jetstream_stream_consumers", "Consumers of the stream", "consumer_count"),
)


class NatsCollector(Collector):
    """Metric families from one reading of /varz and /jsz?streams=true (None: no answer)."""

    def __init__(self, varz: dict[str, Any] | None, jsz: dict[str, Any] | None) -> None:
        self.varz = varz
        self.jsz = jsz

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "nats_monitor_up", "1 when nats-server's monitoring port answered this scrape"
        )
        up.add_metric([], 1.0 if self.varz is not None else 0.0)
        yield up
        varz, jsz = self.varz or {}, self.jsz or {}
        for name, kind, help_text, key, scale in VARZ:
            family: GaugeMetricFamily | CounterMetricFamily = (
                CounterMetricFamily(name.removesuffix("_total"), help_text)
                if kind == "counter"
                else GaugeMetricFamily(name, help_text)
            )
            if key in varz:
                family.add_metric([], float(varz[key]) * scale)
            yield family
        for name, help_text, key in JSZ:
            gauge = GaugeMetricFamily(name, help_text)
            if key in jsz:
                gauge.add_metric([], float(jsz[key]))
            yield gauge
        streams = [
            stream
            for account in jsz.get("account_details") or []
            for stream in account.get("stream_detail") or []
        ]
        for name, help_text, key in STREAM:
            gauge = GaugeMetricFamily(name, help_text, labels=["stream"])
            for stream in streams:
                gauge.add_metric([stream["name"]], float(stream.get("state", {}).get(key, 0)))
            yield gauge


def registry_of(varz: dict[str, Any] | None, jsz: dict[str, Any] | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(NatsCollector(varz, jsz))
    return registry


async def read_monitor(http: aiohttp.ClientSession, monitor_url: str) -> CollectorRegistry:
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with http.get(f"{monitor_url}/varz", timeout=timeout) as response:
            varz = await response.json()
        async with http.get(f"{monitor_url}/jsz?streams=true", timeout=timeout) as response:
            jsz = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return registry_of(None, None)
    return registry_of(varz, jsz)


def application(monitor_url: Callable[[], str | None]) -> web.Application:
    """``GET /metrics``: a fresh reading of the monitoring port ``monitor_url()`` names."""
    app = web.Application()

    async def metrics(_request: web.Request) -> web.Response:
        url = monitor_url()
        async with aiohttp.ClientSession() as http:
            registry = await read_monitor(http, url) if url else registry_of(None, None)
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app.router.add_get("/metrics", metrics)
    return app

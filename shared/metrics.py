"""Prometheus metrics every service exposes, named by the Prometheus conventions.

Each service has its own registry (tests run several services in one process). Labels never carry
order ids or SKUs: only bounded values (service, handler, stage, channel, priority, outcome).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Buckets with an edge at each SLO threshold: 50 ms (p99 reserved at 1k/s), 250 ms, 1 s, 5 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        self.handler_duration = Histogram(
            "orderflow_handler_duration_seconds",
            "Time a handler took for one call (one run of same-type messages in a batch)",
            ["service", "handler"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.events_processed = Counter(
            "orderflow_events_processed_total",
            "Messages applied by a handler",
            ["service", "handler"],
            registry=r,
        )
        self.handler_failures = Counter(
            "orderflow_handler_failures_total",
            "Messages whose handler raised (they are redelivered later or dead-lettered)",
            ["service", "consumer"],
            registry=r,
        )
        self.duplicates_skipped = Counter(
            "orderflow_inbox_duplicates_total",
            "Redelivered messages the inbox recognised and skipped",
            ["service", "consumer"],
            registry=r,
        )
        self.redeliveries = Counter(
            "orderflow_redeliveries_total",
            "Messages received more than once from JetStream",
            ["service", "consumer"],
            registry=r,
        )
        self.dead_letters = Counter(
            "orderflow_dead_letters_total",
            "Messages moved to the dead-letter stream",
            ["service", "consumer"],
            registry=r,
        )
        self.batch_size = Histogram(
            "orderflow_batch_size",
            "Messages applied in one transaction",
            ["service", "consumer"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.batch_duration = Histogram(
            "orderflow_batch_duration_seconds",
            "Time from taking a batch to its commit",
            ["service", "consumer"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.outbox_published = Counter(
            "orderflow_outbox_published_total",
            "Outbox rows acknowledged by JetStream",
            ["service"],
            registry=r,
        ).labels(service)
        self.outbox_pending = Gauge(
            "orderflow_outbox_pending",
            "Outbox rows not yet marked published (as of the relay's last pass)",
            ["service"],
            registry=r,
        ).labels(service)
        self.stage_latency = Histogram(
            "orderflow_stage_latency_seconds",
            "Seconds from an order's submission until it reached a stage",
            ["stage", "channel", "priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.orders = Counter(
            "orderflow_orders_total",
            "Orders by the outcome or stage this service decided",
            ["service", "outcome", "channel"],
            registry=r,
        )

        # labels() costs microseconds per call (it hashes and locks); the hot path caches children.
        self._stage_children: dict[tuple[str, str, str], Any] = {}
        self._order_children: dict[tuple[str, str], Any] = {}

    def observe_stage(
        self, stage: str, channel: str, priority: str, submitted_at: datetime
    ) -> None:
        seconds = (datetime.now(UTC) - submitted_at).total_seconds()
        key = (stage, channel, priority)
        child = self._stage_children.get(key)
        if child is None:
            child = self._stage_children[key] = self.stage_latency.labels(*key)
        child.observe(max(seconds, 0.0))

    def count(self, outcome: str, channel: str, n: int = 1) -> None:
        key = (outcome, channel)
        child = self._order_children.get(key)
        if child is None:
            child = self._order_children[key] = self.orders.labels(self.service, outcome, channel)
        child.inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics every service exposes, named by the Prometheus conventions.

Each service has its own registry (tests run several services in one process). Labels never carry
order ids or SKUs: only bounded values (service, handler, stage, channel, priority, outcome).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)


@dataclass(frozen=True)
class Slo:
    """An end-to-end objective: ``objective`` of orders reach ``stage`` within ``seconds`` of
    their submission (per priority where ``by_priority`` is given)."""

    stage: str
    seconds: float
    objective: float = 0.99
    by_priority: tuple[tuple[str, float], ...] = ()

    def thresholds(self) -> dict[str, float]:
        """Threshold per priority ("" = every priority)."""
        return dict(self.by_priority) if self.by_priority else {"": self.seconds}


# The one definition of the SLOs: the stage histogram's buckets, the alert rules
# (deploy/prometheus) and docs/metrics.md are all derived from it, and tests hold them together.
# Shipping follows fulfillment's default SLA per priority (2 h, 8 h, 24 h, 72 h).
SLOS = (
    Slo("accepted", 0.5),
    Slo("reserved", 1.0),
    Slo("queued", 2.5),
    Slo("notified", 5.0),
    Slo(
        "shipped",
        86400.0,
        by_priority=(("urgent", 7200.0), ("high", 28800.0), ("normal", 86400.0), ("low", 259200.0)),
    ),
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Submission to a stage: milliseconds (accepted) to days (shipped, low priority); an edge at every
# SLO threshold so `le="<threshold>"` is an exact count of orders within their objective.
STAGE_BUCKETS = (
    *LATENCY_BUCKETS,
    300.0,
    900.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
    172800.0,
    259200.0,
    604800.0,
)


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
            "Outbox rows not yet marked published (as of the relay's or the backlog job's last look)",
            ["service"],
            registry=r,
        ).labels(service)
        self.stage_latency = Histogram(
            "orderflow_stage_latency_seconds",
            "Seconds from an order's submission until it reached a stage",
            ["stage", "channel", "priority"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.orders = Counter(
            "orderflow_orders_total",
            "Orders by the outcome or stage this service decided",
            ["service", "outcome", "channel"],
            registry=r,
        )
        # Backlog, read by the runtime's backlog job (shared/runtime.py) every few seconds.
        self.outbox_oldest_age = Gauge(
            "orderflow_outbox_oldest_age_seconds",
            "Age of the oldest outbox row not yet marked published (0 when none)",
            ["service"],
            registry=r,
        ).labels(service)
        self.consumer_pending = Gauge(
            "orderflow_consumer_pending_messages",
            "Messages in the stream the durable consumer has not been delivered yet "
            "(JetStream num_pending)",
            ["service", "consumer"],
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "orderflow_consumer_ack_pending_messages",
            "Messages delivered but not acknowledged yet (JetStream num_ack_pending)",
            ["service", "consumer"],
            registry=r,
        )
        self.consumer_redelivered = Gauge(
            "orderflow_consumer_redelivered_messages",
            "Messages delivered more than once and not acknowledged yet "
            "(JetStream num_redelivered)",
            ["service", "consumer"],
            registry=r,
        )
        self.dead_letter_messages = Gauge(
            "orderflow_dead_letter_stream_messages",
            "Messages held in the dead-letter stream, all services together (stream info)",
            ["service"],
            registry=r,
        ).labels(service)
        self.backlog_scrape_errors = Counter(
            "orderflow_backlog_read_errors_total",
            "Failed reads of the backlog figures (outbox query or JetStream info)",
            ["service", "source"],
            registry=r,
        )
        # Dependencies, as /readyz last saw them.
        self.dependency_up = Gauge(
            "orderflow_dependency_up",
            "1 when the dependency answered the last check, 0 when not",
            ["service", "dependency"],
            registry=r,
        )
        # Commands over NATS request/reply and HTTP requests: rate, errors, duration.
        self.rpc_duration = Histogram(
            "orderflow_rpc_duration_seconds",
            "Time a command over NATS request/reply took, by outcome (ok, refused, error)",
            ["service", "command", "outcome"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.http_duration = Histogram(
            "orderflow_http_request_duration_seconds",
            "Time an HTTP request took, by route template and status class (2xx, 4xx, 5xx)",
            ["service", "route", "method", "status"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        # Resident memory, CPU seconds, open files of this process (process_* metrics).
        ProcessCollector(registry=r)

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


@dataclass(frozen=True)
class MetricInfo:
    """One metric family as the catalogue (docs/metrics.md) describes it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str

    @property
    def unit(self) -> str:
        for suffix, unit in (("_seconds", "seconds"), ("_bytes", "bytes")):
            if self.name.removesuffix("_total").endswith(suffix):
                return unit
        return "1" if self.kind != "histogram" else "count"

    def series_names(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this family (what PromQL can select)."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum")
        return (self.name,)


def describe(registry: CollectorRegistry) -> list[MetricInfo]:
    """Every metric family registered, with its label names, sorted by name.

    Read from the collectors themselves (not a scrape), so families with no samples yet are
    included too."""
    found: dict[str, MetricInfo] = {}
    collector: Any
    for collector in list(registry._collector_to_names):
        name = getattr(collector, "_name", None)
        if name is None:
            # A custom collector (process_*): describe it from what it collects.
            for family in collector.collect():
                shown = _exposed_name(family.name, family.type)
                labels = tuple(getattr(family, "_labelnames", ()))
                found[shown] = MetricInfo(shown, family.type, labels, family.documentation)
            continue
        kind = collector._type
        shown = _exposed_name(name, kind)
        found[shown] = MetricInfo(
            shown, kind, tuple(collector._labelnames), collector._documentation
        )
    return sorted(found.values(), key=lambda m: m.name)


def _exposed_name(name: str, kind: str) -> str:
    # prometheus_client keeps a counter's name without "_total" and adds it when exposing.
    return f"{name}_total" if kind == "counter" else name

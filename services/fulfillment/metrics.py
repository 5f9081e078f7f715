"""Fulfillment's own Prometheus metrics, registered beside the common ones of ``rt.metrics``.

Labels are bounded: priority (4), status or stage (a handful), outcome, level. Never an order id.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

from services.fulfillment import domain
from shared.contracts.common import PRIORITIES
from shared.metrics import ServiceMetrics

# Warehouse stages last seconds to days: an edge at each default SLA (2 h, 8 h, 24 h, 72 h).
STAGE_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 259200)


class FulfillmentMetrics:
    @classmethod
    def of(cls, common: ServiceMetrics) -> FulfillmentMetrics:
        """The one set registered on ``common``'s registry (a registry refuses a name twice)."""
        found = _BY_COMMON.get(common)
        if found is None:
            found = _BY_COMMON[common] = cls(common)
        return found

    def __init__(self, common: ServiceMetrics) -> None:
        self.common = common
        r = common.registry
        self.queue_depth = Gauge(
            "orderflow_fulfillment_queue_depth",
            "Shipments waiting in the warehouse (as of the SLA job's last pass)",
            ["priority", "status"],
            registry=r,
        )
        self.stage_duration = Histogram(
            "orderflow_fulfillment_stage_duration_seconds",
            "Seconds a shipment spent in a stage (its status) before it moved on",
            ["stage", "priority"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.sla_breaches = Counter(
            "orderflow_fulfillment_sla_breaches_total",
            "Shipments that missed their SLA deadline (overdue) or the escalation threshold",
            ["priority", "level"],
            registry=r,
        )
        self.shipments = Counter(
            "orderflow_fulfillment_shipments_total",
            "Shipments by the outcome they reached (queued ... delivered, delivery_failed, "
            "cancelled)",
            ["outcome"],
            registry=r,
        )
        self.cancellations = Counter(
            "orderflow_fulfillment_cancellations_total",
            "Cancel requests by decision: cancelled or refused",
            ["outcome"],
            registry=r,
        )
        self.returns = Counter(
            "orderflow_fulfillment_returns_total",
            "Returns by step: requested, received, refund_due, refund_unpriced",
            ["outcome"],
            registry=r,
        )

    def set_queue_depth(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Every (priority, status) gets a value, zero included, so a drained queue shows 0."""
        for priority in PRIORITIES:
            for status in domain.IN_WAREHOUSE:
                self.queue_depth.labels(priority, status).set(counts.get((priority, status), 0))

    def observe_stages(self, spent: Iterable[tuple[str, str, float]]) -> None:
        for stage, priority, seconds in spent:
            self.stage_duration.labels(stage, priority).observe(max(seconds, 0.0))


_BY_COMMON: weakref.WeakKeyDictionary[ServiceMetrics, FulfillmentMetrics] = (
    weakref.WeakKeyDictionary()
)

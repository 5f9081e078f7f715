"""Intake's own metrics, beside the ones every service has (shared/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS, ServiceMetrics


class IntakeMetrics:
    def __init__(self, base: ServiceMetrics) -> None:
        self.base = base
        registry = base.registry
        # Labels stay bounded: a field path with its list indexes folded (lines.*.sku), never
        # the free-text reason.
        self.rejections = Counter(
            "orderflow_intake_rejections_total",
            "Field errors in rejected submissions, by the field at fault",
            ["channel", "field"],
            registry=registry,
        )
        self.duplicates = Counter(
            "orderflow_intake_duplicates_total",
            "Duplicates caught: exact (same channel and external id, answered 'duplicate') or "
            "suspected (same customer and lines, accepted and flagged for review)",
            ["channel", "kind"],
            registry=registry,
        )
        self.processing = Histogram(
            "orderflow_intake_processing_seconds",
            "Seconds from receiving a submission to its answer being committed",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cancellations = Counter(
            "orderflow_intake_cancel_requests_total",
            "Cancel requests: requested (sent to fulfillment), pending (already asked), "
            "refused (too late, intake's view), unknown (no such order)",
            ["outcome"],
            registry=registry,
        )

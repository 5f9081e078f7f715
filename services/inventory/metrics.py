"""Inventory's own Prometheus metrics, on the service's registry beside the shared ones.

No SKU labels: a catalogue is unbounded. Warehouses are few, so they may label a series.
Counts are taken after the transaction commits (``Tally``), so a rolled-back batch that is
retried is not counted twice.
"""

from __future__ import annotations

from collections import Counter as Counts
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from shared.consumer import UnitOfWork
from shared.metrics import ServiceMetrics

# From a reservation that ships within seconds (the simulator) to one that waits for days.
HELD_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0)


class InventoryMetrics:
    def __init__(self, shared: ServiceMetrics) -> None:
        self.shared = shared
        r = shared.registry
        self.reservations = Counter(
            "orderflow_inventory_reservations_total",
            "Reservation outcomes: reserved (one warehouse), split (several), backordered, "
            "backorder_reserved (served by a later restock), released (cancelled), "
            "backorder_expired, backorder_cancelled",
            ["outcome"],
            registry=r,
        )
        self.stockouts = Counter(
            "orderflow_inventory_stockouts_total",
            "Times a SKU's available units at a warehouse fell to zero",
            ["warehouse"],
            registry=r,
        )
        self.backorders_waiting = Gauge(
            "orderflow_inventory_backorders_waiting",
            "Orders waiting for stock (as of the last refresh)",
            registry=r,
        )
        self.reservation_held = Histogram(
            "orderflow_inventory_reservation_duration_seconds",
            "How long units stayed reserved, from reservation to shipped or released",
            ["end"],
            buckets=HELD_BUCKETS,
            registry=r,
        )
        self.skus_below_reorder_point = Gauge(
            "orderflow_inventory_skus_below_reorder_point",
            "SKUs whose available units are below their reorder point (as of the last refresh)",
            registry=r,
        )

    def tally(self, uow: UnitOfWork) -> Tally:
        """Counts for one transaction, applied when (and only if) it commits."""
        tally = Tally()

        async def apply() -> None:
            self.apply(tally)

        uow.on_commit(apply)
        return tally

    def apply(self, tally: Tally) -> None:
        for outcome, n in tally.outcomes.items():
            self.reservations.labels(outcome).inc(n)
        for warehouse, n in tally.stockouts.items():
            self.stockouts.labels(warehouse).inc(n)
        for end, seconds in tally.held:
            self.reservation_held.labels(end).observe(max(seconds, 0.0))
        for outcome, channel in tally.orders:
            self.shared.count(outcome, channel)
        for stage, channel, priority, submitted_at in tally.stages:
            self.shared.observe_stage(stage, channel, priority, submitted_at)


@dataclass
class Tally:
    outcomes: Counts[str] = field(default_factory=Counts)
    stockouts: Counts[str] = field(default_factory=Counts)
    held: list[tuple[str, float]] = field(default_factory=list)
    orders: list[tuple[str, str]] = field(default_factory=list)
    stages: list[tuple[str, str, str, datetime]] = field(default_factory=list)

    def order(self, outcome: str, channel: str) -> None:
        """An order outcome for the shared ``orderflow_orders_total`` (by channel)."""
        self.orders.append((outcome, channel))

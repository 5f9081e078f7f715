"""Fulfillment's tables: the orders it knows (with their cancellation), shipments (the work
queue), the log of who did what to them, and returns."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shared.db import serial_id
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()
# Its versioned changes (Alembic), applied at start-up: shared/migrations.py.
MIGRATIONS = Path(__file__).with_name("migrations")

# One row per order fulfillment has heard of, from its reservation or its cancellation, whichever
# came first. It is where a cancel and a reservation racing for the same order meet: both insert
# the row, and the database's unique key makes the second one wait for the first and see it.
orders = Table(
    "orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # open | cancelled
    Column("currency", String(3)),
    Column("unit_prices", LargeBinary),  # JSON {sku: "12.50"}, when the reservation carried them
    Column("created_at", Float, nullable=False),
    Column("cancelled_at", Float),
    Column("cancelled_by", String(64)),
    Column("cancel_reason", Text),
)

shipments = Table(
    "shipments",
    metadata,
    Column("shipment_id", String(36), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("warehouse", String(32), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("priority_rank", Integer, nullable=False),  # urgent 0 ... low 3: sorts the queue
    Column("status", String(16), nullable=False),
    Column("lines", LargeBinary, nullable=False),  # JSON: [{sku, warehouse, quantity}]
    Column("ship_to", LargeBinary, nullable=False),  # JSON: the address
    Column("channel", String(32), nullable=False),
    Column("submitted_at", Float, nullable=False),
    Column("queued_at", Float, nullable=False),
    Column("sla_deadline", Float, nullable=False),
    Column("escalation_deadline", Float, nullable=False),
    Column("overdue_at", Float),
    Column("escalated_at", Float),
    Column("picked_at", Float),
    Column("packed_at", Float),
    Column("shipped_at", Float),
    Column("delivered_at", Float),
    Column("delivery_failed_at", Float),
    Column("cancelled_at", Float),
    Column("failed_deliveries", Integer, nullable=False, default=0),
    Column("carrier", String(64)),
    Column("tracking_number", String(64)),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(64), nullable=False),
    # A redelivered or repeated reservation must never make a second shipment; the constraint
    # also serves every look-up by order.
    UniqueConstraint("order_id", "warehouse", name="uq_shipments_order_warehouse"),
    # Also the SLA job's scan (status, every rank, deadline passed): no index of its own to keep
    # up on the hot path.
    Index("ix_shipments_work_queue", "status", "priority_rank", "sla_deadline", "queued_at"),
    # The simulator takes the shipments that have waited longest in their current state.
    Index("ix_shipments_status_updated", "status", "updated_at"),
)

shipment_log = Table(
    "shipment_log",
    metadata,
    serial_id(),
    Column("shipment_id", String(36), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("action", String(24), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("detail", Text),
    Index("ix_shipment_log_order", "order_id", "id"),
)

# One row per shipment a return takes goods back from.
returns = Table(
    "returns",
    metadata,
    Column("return_id", String(36), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("shipment_id", String(36), nullable=False),
    Column("warehouse", String(32), nullable=False),
    Column("lines", LargeBinary, nullable=False),  # JSON: {sku: quantity}
    Column("status", String(16), nullable=False),  # requested | received
    Column("reason", Text, nullable=False),
    Column("requested_at", Float, nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("received_at", Float),
    Column("received_by", String(64)),
    Column("refund_amount", String(16)),  # Decimal as text; null while unknown
    Column("currency", String(3)),
    Column("refund_note", Text),  # why no refund event was sent, when none was
    Index("ix_returns_order", "order_id"),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

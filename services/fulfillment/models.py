"""Fulfillment's tables: shipments (the work queue) and the log of who did what to them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

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
    Column("picked_at", Float),
    Column("packed_at", Float),
    Column("shipped_at", Float),
    Column("delivered_at", Float),
    Column("carrier", String(64)),
    Column("tracking_number", String(64)),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(64), nullable=False),
    # A redelivered or repeated reservation must never make a second shipment; the constraint
    # also serves every look-up by order.
    UniqueConstraint("order_id", "warehouse", name="uq_shipments_order_warehouse"),
    Index("ix_shipments_work_queue", "status", "priority_rank", "sla_deadline", "queued_at"),
    # The simulator takes the shipments that have waited longest in their current state.
    Index("ix_shipments_status_updated", "status", "updated_at"),
)

shipment_log = Table(
    "shipment_log",
    metadata,
    # BIGINT on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("shipment_id", String(36), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("detail", Text),
    Index("ix_shipment_log_order", "order_id", "id"),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

"""Intake's tables: orders as submitted, rejected submissions, the order status view."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("channel", String(32), nullable=False),
    Column("external_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    # Status only moves forward (events from different streams may arrive out of order).
    Column("status_rank", Integer, nullable=False),
    Column("priority", String(8), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", String(20), nullable=False),
    Column("order_doc", LargeBinary, nullable=False),  # the accepted submission, JSON
    Column("submitted_at", Float, nullable=False),
    Column("accepted_at", Float),
    Column("backordered_at", Float),
    Column("reserved_at", Float),
    Column("queued_at", Float),
    Column("picked_at", Float),
    Column("packed_at", Float),
    Column("shipped_at", Float),
    Column("delivered_at", Float),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("channel", "external_id", name="uq_orders_channel_external_id"),
    Index("ix_orders_status", "status"),
)

# A rejected submission is kept for the record, apart from orders: a corrected resubmission with
# the same external id must be accepted, not reported as a duplicate.
rejections = Table(
    "rejections",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("channel", String(32), nullable=False),
    Column("external_id", String(64)),
    Column("errors", LargeBinary, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("submitted_at", Float, nullable=False),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

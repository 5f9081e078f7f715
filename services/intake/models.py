"""Intake's tables: orders as submitted (and their status view), rejected submissions, and the
customer directory that routing reads."""

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

from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()
# Its versioned changes (Alembic), applied at start-up: shared/migrations.py.
MIGRATIONS = Path(__file__).with_name("migrations")

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
    Column("requested_priority", String(8)),
    Column("priority_rule", String(64)),
    Column("owner", String(100)),
    Column("customer_tier", String(32)),
    Column("currency", String(3), nullable=False),
    Column("total", String(20), nullable=False),
    Column("order_doc", LargeBinary, nullable=False),  # the accepted submission, JSON
    # Same customer and lines (domain.fingerprint): how a look-alike order is found.
    Column("fingerprint", String(32)),
    Column("suspected_duplicate_of", Text),  # JSON list of order ids, when flagged for review
    Column("submitted_at", Float, nullable=False),
    Column("accepted_at", Float),
    Column("backordered_at", Float),
    Column("reserved_at", Float),
    Column("queued_at", Float),
    Column("picked_at", Float),
    Column("packed_at", Float),
    Column("shipped_at", Float),
    Column("delivered_at", Float),
    Column("cancel_requested_at", Float),
    Column("cancel_actor", String(100)),
    Column("cancel_reason", String(500)),
    Column("cancel_refused_at", Float),
    Column("cancel_refused_reason", String(500)),
    Column("cancelled_at", Float),
    Column("cancelled_reason", String(500)),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("channel", "external_id", name="uq_orders_channel_external_id"),
    Index("ix_orders_status", "status"),
    Index("ix_orders_fingerprint", "fingerprint", "submitted_at"),
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

# Who a customer is to the business: routing gives key accounts their priority and their
# account manager. Keyed like domain.customer_key (e-mail, else tel:<digits>).
customers = Table(
    "customers",
    metadata,
    Column("customer_key", String(254), primary_key=True),
    Column("tier", String(32)),
    Column("account_manager", String(100)),
    Column("updated_at", Float, nullable=False),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

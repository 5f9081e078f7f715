"""Notify's tables: who to tell about each order, every notification made, its delivery through
each sink, and every attempt at one."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
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

# Learned from order_accepted: later events (backordered, shipped...) carry no customer data.
recipients = Table(
    "recipients",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("external_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("email", String(254)),
    Column("phone", String(32)),
    Column("locale", String(8), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("submitted_at", Float, nullable=False),
)

# One message, rendered once, whatever number of sinks it goes through.
notifications = Table(
    "notifications",
    metadata,
    Column("notification_id", String(36), primary_key=True),
    Column("source_event_id", String(36), nullable=False),
    # None for an operations alert that concerns no order (a burst of rejections).
    Column("order_id", String(64)),
    Column("template", String(32), nullable=False),
    Column("audience", String(16), nullable=False),
    Column("locale", String(8), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # The database, not only the handler's check, guarantees one notification per event and
    # recipient: two replicas handling a redelivered event cannot both insert.
    UniqueConstraint("source_event_id", "recipient", name="uq_notifications_once"),
    Index("ix_notifications_order", "order_id"),
)

# pending -> sending (claimed by one worker, with a lease) -> sent | pending (retry) | failed.
deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", String(36), primary_key=True),
    Column("notification_id", String(36), nullable=False),
    Column("sink", String(32), nullable=False),
    Column("address", String(254), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    # Attempts at which it gives up; a resend raises it, so the attempt count never restarts.
    Column("attempt_limit", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("claimed_by", String(64)),
    Column("claim_expires_at", Float),
    Column("last_error", String(1000)),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    Column("failed_at", Float),
    # One delivery per (event, recipient, sink), with the notification's own constraint.
    UniqueConstraint("notification_id", "sink", name="uq_deliveries_once"),
    Index("ix_deliveries_due", "sink", "status", "next_attempt_at"),
    Index("ix_deliveries_notification", "notification_id"),
    Index("ix_deliveries_status", "status", "failed_at"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("delivery_id", String(36), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("claimed_by", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("result", String(16), nullable=False),  # sent | error
    Column("status_code", Integer),
    Column("error", String(1000)),
)

# Rejections by channel and submission time: what a burst is counted from (by event time, so a
# backlog processed late is not mistaken for a burst).
rejections = Table(
    "rejections",
    metadata,
    Column("source_event_id", String(36), primary_key=True),
    Column("channel", String(32), nullable=False),
    Column("submitted_at", Float, nullable=False),
    Index("ix_rejections_channel", "channel", "submitted_at"),
)

# The last time each alert that must not repeat within a window was raised.
alerts = Table(
    "alerts",
    metadata,
    Column("alert_key", String(128), primary_key=True),
    Column("raised_at", Float, nullable=False),
    Column("source_event_id", String(36), nullable=False),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

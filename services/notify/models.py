"""Notify's tables: who to tell about each order, and every notification made."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, MetaData, String, Table, Text, UniqueConstraint

from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

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

notifications = Table(
    "notifications",
    metadata,
    Column("notification_id", String(36), primary_key=True),
    Column("source_event_id", String(36), nullable=False),
    Column("order_id", String(36), nullable=False),
    Column("template", String(32), nullable=False),
    Column("locale", String(8), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("sink", String(16), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("body", Text, nullable=False),
    # pending until the sink has taken it; a pending one is handed over again later.
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    # The database, not only the handler's check, guarantees one notification per event,
    # recipient and sink: two replicas handling a redelivered event cannot both insert.
    UniqueConstraint("source_event_id", "recipient", "sink", name="uq_notifications_once"),
    Index("ix_notifications_order", "order_id"),
    Index("ix_notifications_status", "status", "created_at"),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

"""Logging for a service process: plain text or one JSON object per line, with the order id and
correlation id of the message, command or request being handled.

The ids live in context variables that the entry points set (the consumer per message it retries
or dead-letters and per batch of one, the RPC and HTTP layers per call); a filter copies them onto
each record only when a record is actually emitted, so setting them costs a ContextVar.set.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

order_id_var: ContextVar[str | None] = ContextVar("orderflow_order_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("orderflow_correlation_id", default=None)

FORMATS = ("text", "json")


def bind(order_id: str | None = None, correlation_id: str | None = None) -> None:
    """Say which order and correlation the current task is working for (None clears)."""
    order_id_var.set(order_id)
    correlation_id_var.set(correlation_id)


def bind_body(body: Any) -> None:
    """Bind from a decoded message body: an event envelope carries both ids; anything else
    (a raw submission, a dead letter) clears them rather than leave a previous message's."""
    data = getattr(body, "data", None)
    order_id = getattr(data, "order_id", None)
    bind(
        order_id if isinstance(order_id, str) else None,
        getattr(body, "correlation_id", None),
    )


def bind_payload(payload: dict[str, Any], correlation_id: str | None = None) -> None:
    """Bind from a command's JSON payload (``order_id`` when it names one)."""
    order_id = payload.get("order_id")
    bind(
        order_id if isinstance(order_id, str) else None,
        correlation_id or _str(payload, "correlation_id"),
    )


def _str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


class ContextFilter(logging.Filter):
    """Copies the bound ids and the service name onto every record it lets through."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.order_id = order_id_var.get()
        record.correlation_id = correlation_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, message, order_id, correlation_id
    (when bound) and exc (the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("order_id", "correlation_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [
            f"{key}={value}"
            for key in ("order_id", "correlation_id")
            if (value := getattr(record, key, None))
        ]
        return f"{text} [{' '.join(ids)}]" if ids else text


def configure(service: str, level: str = "INFO", fmt: str = "text") -> logging.Handler:
    """Send the root logger's records to stderr in ``fmt`` ("text" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(service))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Per-message logging from the NATS client would cost a third of the throughput.
    logging.getLogger("nats").setLevel(logging.WARNING)
    return handler

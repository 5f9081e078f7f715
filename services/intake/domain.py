"""Intake's rules: reading a submission, and how an order's status moves. No I/O here."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from shared.contracts.common import FieldError
from shared.contracts.intake import MAX_SUBMISSION_BYTES, OrderSubmission

# Stages an order passes, in order; the status view never moves backwards.
STATUS_RANK: dict[str, int] = {
    "accepted": 10,
    "backordered": 20,
    "reserved": 30,
    "queued": 40,
    "picked": 50,
    "packed": 60,
    "shipped": 70,
    "delivered": 80,
}


def read_submission(raw: bytes, channel: str) -> OrderSubmission | list[FieldError]:
    """Parse and validate one submission; every problem at once, each with its field path."""
    if len(raw) > MAX_SUBMISSION_BYTES:
        return [
            FieldError(
                field="(body)",
                reason=f"submission is {len(raw)} bytes; at most {MAX_SUBMISSION_BYTES}",
            )
        ]
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [FieldError(field="(body)", reason=f"not valid JSON: {exc}")]
    if not isinstance(doc, dict):
        return [FieldError(field="(body)", reason="a submission must be a JSON object")]
    return validate_submission(doc, channel)


def validate_submission(doc: dict[str, Any], channel: str) -> OrderSubmission | list[FieldError]:
    doc.setdefault("channel", channel)
    errors: list[FieldError] = []
    if doc.get("channel") != channel:
        errors.append(
            FieldError(
                field="channel",
                reason=f"submitted on channel {channel!r} but says {doc.get('channel')!r}",
            )
        )
    try:
        submission = OrderSubmission.model_validate(doc)
    except ValidationError as exc:
        return errors + field_errors(exc)
    return errors or submission


def field_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(order)"
        reason = err["msg"].removeprefix("Value error, ")
        out.append(FieldError(field=path, reason=reason))
    return out


def external_id_of(raw_doc: Any) -> str | None:
    """The channel's reference, if it can be read from an invalid submission (for the answer)."""
    if isinstance(raw_doc, dict):
        value = raw_doc.get("external_id")
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return None

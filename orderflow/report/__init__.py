"""The operations report: what the services answer (``report`` over NATS, aggregated where the
data lives), combined into one document that is printed as tables (``text``), written as an HTML
page with charts (``html``) or as JSON.

Figures and where they come from:
- orders by channel and outcome, acceptance rate, lead time per stage (p50/p95): intake's status
  view (the time each stage was reached);
- SLA breach rate by priority: fulfillment's shipments (deadline against the time shipped);
- top SKUs (units demanded) and stock cover with reorder suggestions: inventory's ledger and its
  forecast.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.aio.client import Client as NATS

from orderflow import endpoints
from shared import audit, rpc, subjects

OUTCOMES = ("shipped", "cancelled", "in progress", "rejected")
SOURCES = (subjects.INTAKE, subjects.INVENTORY, subjects.FULFILLMENT)


async def gather(
    nc: NATS, since: float | None, until: float | None, timeout: float = 30.0
) -> dict[str, Any]:
    """Ask the three services that hold the figures, at once; name any that did not answer."""
    payload = {"since": since, "until": until}

    async def one(service: str) -> Any:
        return await rpc.call(
            nc, service, audit.REPORT, payload, timeout=timeout, token=endpoints.operator_token()
        )

    results = await asyncio.gather(*(one(s) for s in SOURCES), return_exceptions=True)
    answers: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for service, result in zip(SOURCES, results, strict=True):
        if isinstance(result, rpc.CommandRefused):
            missing[service] = f"refused: {result.reason}"
        elif isinstance(result, BaseException):
            missing[service] = f"no answer ({result.__class__.__name__})"
        else:
            answers[service] = result
    return build(answers, missing, since, until)


def build(
    answers: dict[str, dict[str, Any]],
    missing: dict[str, str],
    since: float | None,
    until: float | None,
) -> dict[str, Any]:
    """One report document from the services' answers (pure: the unit tests feed it)."""
    intake = answers.get(subjects.INTAKE, {})
    inventory = answers.get(subjects.INVENTORY, {})
    fulfillment = answers.get(subjects.FULFILLMENT, {})
    by_channel: dict[str, dict[str, int]] = {}
    for channel, counts in sorted(intake.get("by_channel", {}).items()):
        by_channel[channel] = {k: int(counts.get(k, 0)) for k in ("accepted", *OUTCOMES)}
    accepted = sum(c["accepted"] for c in by_channel.values())
    rejected = sum(c["rejected"] for c in by_channel.values())
    acceptance = {
        channel: _rate(c["accepted"], c["accepted"] + c["rejected"])
        for channel, c in by_channel.items()
    }
    acceptance["all"] = _rate(accepted, accepted + rejected)
    cover = inventory.get("stock_cover", [])
    return {
        "generated_at": audit.iso(time.time()),
        "window": {"since": audit.iso(since), "until": audit.iso(until)},
        "missing": missing,
        "orders": {
            "by_channel": by_channel,
            "accepted": accepted,
            "rejected": rejected,
            "acceptance_rate": acceptance,
        },
        "accepted_value": intake.get("accepted_value", {}),
        "lead_time": intake.get("lead_time", {}),
        "sla": fulfillment.get("sla", {}),
        "top_skus": inventory.get("top_skus", []),
        "stock_cover": cover,
        "reorder": [c for c in cover if (c.get("suggested_quantity") or 0) > 0],
    }


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None

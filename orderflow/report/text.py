"""The report as plain tables for a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orderflow.report import OUTCOMES


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        first = r[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.2f}s"
    if value < 7200:
        return f"{value / 60:.1f}min"
    return f"{value / 3600:.1f}h"


def render(report: dict[str, Any]) -> str:
    window = report["window"]
    out = [
        f"orderflow report, {report['generated_at']}",
        f"window: {window['since'] or 'beginning'} .. {window['until'] or 'now'}",
    ]
    for service, why in report["missing"].items():
        out.append(f"WARNING: {service} did not answer ({why}); its figures are missing")
    orders = report["orders"]
    out += ["", "Orders by channel and outcome"]
    out += table(
        ["channel", "accepted", *OUTCOMES, "acceptance"],
        [
            [ch, c["accepted"], *(c[k] for k in OUTCOMES), percent(orders["acceptance_rate"][ch])]
            for ch, c in orders["by_channel"].items()
        ]
        + [
            [
                "all",
                orders["accepted"],
                *(sum(c[k] for c in orders["by_channel"].values()) for k in OUTCOMES),
                percent(orders["acceptance_rate"]["all"]),
            ]
        ],
    )
    if report["accepted_value"]:
        out.append(
            "value accepted: "
            + ", ".join(f"{v} {c}" for c, v in sorted(report["accepted_value"].items()))
        )
    out += ["", "Lead time per stage"]
    out += table(
        ["stage", "orders", "p50", "p95"],
        [
            [stage, v["n"], seconds(v["p50_s"]), seconds(v["p95_s"])]
            for stage, v in report["lead_time"].items()
        ],
    )
    out += ["", "SLA (ship by the deadline) by priority"]
    out += table(
        ["priority", "shipments", "breached", "breach rate"],
        [
            [p, v["shipments"], v["breached"], percent(v["breach_rate"])]
            for p, v in report["sla"].items()
        ],
    )
    out += ["", "Top SKUs (units ordered)"]
    out += table(["sku", "units"], [[s["sku"], s["units"]] for s in report["top_skus"]])
    out += ["", "Stock cover and reorder suggestions"]
    out += table(
        ["sku", "available", "demand/day", "days of cover", "reorder point", "reorder"],
        [
            [
                c["sku"],
                c["available"],
                c.get("daily_demand"),
                c.get("days_of_cover"),
                c.get("reorder_point"),
                c.get("suggested_quantity") or "",
            ]
            for c in report["stock_cover"]
        ],
    )
    if report["reorder"]:
        out.append(
            "suggested orders: "
            + ", ".join(f"{c['suggested_quantity']} x {c['sku']}" for c in report["reorder"])
        )
    return "\n".join(out)

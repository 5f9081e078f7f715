"""The report as one self-contained HTML page: the tables, and PNG charts drawn with matplotlib
embedded as base64 data URIs (one file to mail or archive, nothing to fetch)."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

from matplotlib.figure import Figure

from orderflow.report import OUTCOMES
from orderflow.report.text import percent, seconds

COLOURS = {
    "shipped": "#2e7d32",
    "cancelled": "#9e9e9e",
    "in progress": "#1976d2",
    "rejected": "#c62828",
}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this window", ha="center", va="center")
    ax.set_axis_off()


def chart_orders(report: dict[str, Any]) -> bytes:
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    channels = report["orders"]["by_channel"]
    if not channels:
        _empty(ax, "orders")
        return png(fig)
    names = list(channels)
    bottom = [0] * len(names)
    for outcome in OUTCOMES:
        values = [channels[n][outcome] for n in names]
        ax.bar(names, values, bottom=bottom, label=outcome, color=COLOURS[outcome])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("orders")
    ax.set_title("Orders by channel and outcome")
    ax.legend(fontsize=8)
    return png(fig)


def chart_lead_time(report: dict[str, Any]) -> bytes:
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    stages = [(s, v) for s, v in report["lead_time"].items() if v.get("n")]
    if not stages:
        _empty(ax, "lead times")
        return png(fig)
    names = [s for s, _ in stages]
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [v["p50_s"] for _, v in stages], 0.4, label="p50")
    ax.barh([i - 0.2 for i in y], [v["p95_s"] for _, v in stages], 0.4, label="p95")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Lead time per stage")
    ax.legend(fontsize=8)
    return png(fig)


def chart_sla(report: dict[str, Any]) -> bytes:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    rows = [(p, v) for p, v in report["sla"].items() if v.get("shipments")]
    if not rows:
        _empty(ax, "shipments")
        return png(fig)
    ax.bar([p for p, _ in rows], [100 * (v["breach_rate"] or 0) for _, v in rows], color="#ef6c00")
    ax.set_ylabel("% of shipments late")
    ax.set_ylim(0, 100)
    ax.set_title("SLA breach rate by priority")
    return png(fig)


def chart_top_skus(report: dict[str, Any]) -> bytes:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    top = report["top_skus"]
    if not top:
        _empty(ax, "orders")
        return png(fig)
    ax.barh([s["sku"] for s in top], [s["units"] for s in top], color="#6a1b9a")
    ax.invert_yaxis()
    ax.set_xlabel("units ordered")
    ax.set_title("Top SKUs")
    return png(fig)


def chart_cover(report: dict[str, Any]) -> bytes:
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    rows = [c for c in report["stock_cover"] if c.get("days_of_cover") is not None]
    if not rows:
        _empty(ax, "demand history (cover unknown)")
        return png(fig)
    colours = ["#c62828" if (c.get("suggested_quantity") or 0) > 0 else "#2e7d32" for c in rows]
    ax.bar([c["sku"] for c in rows], [c["days_of_cover"] for c in rows], color=colours)
    ax.set_ylabel("days of cover")
    ax.set_title("Stock cover (red: reorder suggested)")
    return png(fig)


CHARTS = (
    ("Orders by channel and outcome", chart_orders),
    ("Lead time per stage", chart_lead_time),
    ("SLA breach rate by priority", chart_sla),
    ("Top SKUs", chart_top_skus),
    ("Stock cover", chart_cover),
)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape('-' if v is None else str(v))}</td>" for v in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(report: dict[str, Any]) -> str:
    window = report["window"]
    orders = report["orders"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>orderflow report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.warn{color:#c62828}</style>",
        "</head><body>",
        "<h1>orderflow report</h1>",
        f"<p>Generated {escape(report['generated_at'])}; window "
        f"{escape(window['since'] or 'beginning')} .. {escape(window['until'] or 'now')}.</p>",
    ]
    for service, why in report["missing"].items():
        parts.append(
            f'<p class="warn">{escape(service)} did not answer ({escape(why)}): '
            "its figures are missing.</p>"
        )
    for title, draw in CHARTS:
        data = base64.b64encode(draw(report)).decode()
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(title)}">')
        parts.append(f"<figcaption>{escape(title)}</figcaption></figure>")
    parts.append("<h2>Orders by channel and outcome</h2>")
    parts.append(
        _table(
            ["channel", "accepted", *OUTCOMES, "acceptance"],
            [
                [
                    ch,
                    c["accepted"],
                    *(c[k] for k in OUTCOMES),
                    percent(orders["acceptance_rate"][ch]),
                ]
                for ch, c in orders["by_channel"].items()
            ],
        )
    )
    parts.append(
        f"<p>Acceptance rate, all channels: {percent(orders['acceptance_rate']['all'])}</p>"
    )
    parts.append("<h2>Lead time per stage</h2>")
    parts.append(
        _table(
            ["stage", "orders", "p50", "p95"],
            [
                [s, v["n"], seconds(v["p50_s"]), seconds(v["p95_s"])]
                for s, v in report["lead_time"].items()
            ],
        )
    )
    parts.append("<h2>SLA breach rate by priority</h2>")
    parts.append(
        _table(
            ["priority", "shipments", "breached", "breach rate"],
            [
                [p, v["shipments"], v["breached"], percent(v["breach_rate"])]
                for p, v in report["sla"].items()
            ],
        )
    )
    parts.append("<h2>Top SKUs</h2>")
    parts.append(_table(["sku", "units"], [[s["sku"], s["units"]] for s in report["top_skus"]]))
    parts.append("<h2>Stock cover and reorder suggestions</h2>")
    parts.append(
        _table(
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
    )
    parts.append("</body></html>")
    return "\n".join(parts)

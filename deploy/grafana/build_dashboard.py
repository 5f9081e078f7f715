"""Writes dashboards/orderflow.json: `python deploy/grafana/build_dashboard.py`.

The JSON is what Grafana loads (provisioned, or imported by hand); this script is how it is kept
readable. tests/sre/test_dashboard.py checks that the JSON is this script's output and that every
PromQL expression in it names only metrics the services register (or recording rules we ship).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "orderflow.json"
RATE = "$__rate_interval"
SERVICES = ("intake", "inventory", "fulfillment", "notify")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        if self.x:
            self.y, self.x = self.y + 8, 0
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        width: int = 8,
        kind: str = "timeseries",
        description: str = "",
    ) -> None:
        if self.x + width > 24:
            self.y, self.x = self.y + 8, 0
        self.panels.append(
            {
                "type": kind,
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        self.x += width

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def quantile(q: float, metric: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{selector}[{RATE}])))"


def end_to_end(d: Layout) -> None:
    d.row("End to end: submission to each stage (SLOs in docs/metrics.md)")
    d.panel(
        "p99 seconds from submission, by stage",
        [(quantile(0.99, "orderflow_stage_latency_seconds", "stage"), "{{stage}}")],
        unit="s",
    )
    d.panel(
        "SLO compliance (1h): share of orders within their threshold",
        [("1 - orderflow:slo_errors:ratio_rate1h", "{{stage}}")],
        unit="percentunit",
    )
    d.panel(
        "Error-budget burn rate (1h; 1 = on budget, 14.4 pages)",
        [("orderflow:slo_errors:ratio_rate1h / 0.01", "{{stage}}")],
    )
    d.panel(
        "p99 submission to reserved, by channel",
        [
            (
                quantile(0.99, "orderflow_stage_latency_seconds", "channel", '{stage="reserved"}'),
                "{{channel}}",
            )
        ],
        unit="s",
    )
    d.panel(
        "p99 submission to shipped, by priority",
        [
            (
                quantile(0.99, "orderflow_stage_latency_seconds", "priority", '{stage="shipped"}'),
                "{{priority}}",
            )
        ],
        unit="s",
    )
    d.panel(
        "Orders per second, by service and outcome",
        [
            (
                f"sum by (service, outcome) (rate(orderflow_orders_total[{RATE}]))",
                "{{service}} {{outcome}}",
            )
        ],
        unit="ops",
    )
    d.panel(
        "Firing alerts",
        [
            (
                'sum by (alertname, severity) (ALERTS{alertstate="firing"})',
                "{{alertname}} ({{severity}})",
            )
        ],
        width=12,
    )
    d.panel(
        "Dead-letter stream (messages held)",
        [("max(orderflow_dead_letter_stream_messages)", "held")],
        width=12,
    )


def common(d: Layout, svc: str) -> None:
    s = f'{{service="{svc}"}}'
    d.panel(
        "Up / ready",
        [
            (f'up{{job="{svc}"}}', "up {{instance}}"),
            (f"orderflow_dependency_up{s}", "{{dependency}} {{instance}}"),
        ],
    )
    d.panel(
        "Handled messages per second (rate), by handler",
        [(f"sum by (handler) (rate(orderflow_events_processed_total{s}[{RATE}]))", "{{handler}}")],
        unit="ops",
    )
    d.panel(
        "Errors per second: handler failures and dead letters",
        [
            (
                f"sum by (consumer) (rate(orderflow_handler_failures_total{s}[{RATE}]))",
                "failed {{consumer}}",
            ),
            (
                f"sum by (consumer) (rate(orderflow_dead_letters_total{s}[{RATE}]))",
                "dead-lettered {{consumer}}",
            ),
        ],
        unit="ops",
    )
    d.panel(
        "Handler duration p99 (one call = one run of a batch)",
        [(quantile(0.99, "orderflow_handler_duration_seconds", "handler", s), "{{handler}}")],
        unit="s",
    )
    d.panel(
        "JetStream consumer backlog",
        [
            (f"sum by (consumer) (orderflow_consumer_pending_messages{s})", "pending {{consumer}}"),
            (
                f"sum by (consumer) (orderflow_consumer_ack_pending_messages{s})",
                "ack pending {{consumer}}",
            ),
            (
                f"sum by (consumer) (orderflow_consumer_redelivered_messages{s})",
                "redelivered {{consumer}}",
            ),
        ],
    )
    d.panel(
        "Outbox: unpublished rows and oldest age",
        [
            (f"max(orderflow_outbox_pending{s})", "unpublished rows"),
            (f"max(orderflow_outbox_oldest_age_seconds{s})", "oldest (s)"),
        ],
    )
    d.panel(
        "Commands (NATS) per second by outcome, and p99",
        [
            (
                f"sum by (outcome) (rate(orderflow_rpc_duration_seconds_count{s}[{RATE}]))",
                "{{outcome}}/s",
            ),
            (quantile(0.99, "orderflow_rpc_duration_seconds", "service", s), "p99 (s)"),
        ],
    )
    d.panel(
        "HTTP requests per second by status, and p99",
        [
            (
                f"sum by (status) (rate(orderflow_http_request_duration_seconds_count{s}[{RATE}]))",
                "{{status}}/s",
            ),
            (quantile(0.99, "orderflow_http_request_duration_seconds", "service", s), "p99 (s)"),
        ],
    )
    d.panel(
        "Process: resident memory and CPU",
        [
            (f'process_resident_memory_bytes{{job="{svc}"}} / 2^20', "RSS MiB {{instance}}"),
            (f'rate(process_cpu_seconds_total{{job="{svc}"}}[{RATE}])', "CPU cores {{instance}}"),
        ],
    )


def own(d: Layout, svc: str) -> None:
    if svc == "intake":
        d.panel(
            "Rejected fields per second",
            [
                (
                    f"sum by (channel, field) (rate(orderflow_intake_rejections_total[{RATE}]))",
                    "{{channel}} {{field}}",
                )
            ],
            unit="ops",
        )
        d.panel(
            "Submission to answer p99, by transport",
            [(quantile(0.99, "orderflow_intake_processing_seconds", "transport"), "{{transport}}")],
            unit="s",
        )
        d.panel(
            "Duplicates caught per second",
            [(f"sum by (kind) (rate(orderflow_intake_duplicates_total[{RATE}]))", "{{kind}}")],
            unit="ops",
        )
    elif svc == "inventory":
        d.panel(
            "Reservations per second, by outcome",
            [
                (
                    f"sum by (outcome) (rate(orderflow_inventory_reservations_total[{RATE}]))",
                    "{{outcome}}",
                )
            ],
            unit="ops",
        )
        d.panel(
            "Backorders waiting, SKUs below reorder point",
            [
                ("max(orderflow_inventory_backorders_waiting)", "backorders"),
                ("max(orderflow_inventory_skus_below_reorder_point)", "SKUs below reorder point"),
            ],
        )
        d.panel(
            "Stock-outs per second, by warehouse",
            [
                (
                    f"sum by (warehouse) (rate(orderflow_inventory_stockouts_total[{RATE}]))",
                    "{{warehouse}}",
                )
            ],
            unit="ops",
        )
    elif svc == "fulfillment":
        d.panel(
            "Warehouse queue, by status",
            [("sum by (status) (orderflow_fulfillment_queue_depth)", "{{status}}")],
        )
        d.panel(
            "SLA breaches per second, by priority",
            [
                (
                    f"sum by (priority, level) (rate(orderflow_fulfillment_sla_breaches_total[{RATE}]))",
                    "{{priority}} {{level}}",
                )
            ],
            unit="ops",
        )
        d.panel(
            "Time in a stage p90, by stage",
            [(quantile(0.9, "orderflow_fulfillment_stage_duration_seconds", "stage"), "{{stage}}")],
            unit="s",
        )
    elif svc == "notify":
        d.panel(
            "Deliveries per second, by sink and result",
            [
                (
                    f"sum by (sink, result) (rate(orderflow_notify_deliveries_total[{RATE}]))",
                    "{{sink}} {{result}}",
                )
            ],
            unit="ops",
        )
        d.panel(
            "Deliveries pending, by sink",
            [("sum by (sink) (orderflow_notify_deliveries_pending)", "{{sink}}")],
        )
        d.panel(
            "Operations alerts raised per second",
            [(f"sum by (alert) (rate(orderflow_notify_alerts_total[{RATE}]))", "{{alert}}")],
            unit="ops",
        )


def nats(d: Layout) -> None:
    d.row("nats-server (orderflow nats-exporter)")
    d.panel(
        "Up (exporter / monitoring port)",
        [('up{job="nats"}', "exporter {{instance}}"), ("nats_monitor_up", "monitoring port")],
    )
    d.panel(
        "Messages per second in / out",
        [
            (f"rate(nats_server_received_messages_total[{RATE}])", "in"),
            (f"rate(nats_server_sent_messages_total[{RATE}])", "out"),
        ],
        unit="ops",
    )
    d.panel(
        "Connections and slow consumers",
        [
            ("nats_server_connections", "connections"),
            (f"increase(nats_server_slow_consumers_total[{RATE}])", "slow consumers"),
        ],
    )
    d.panel(
        "Messages held per stream",
        [("sum by (stream) (nats_jetstream_stream_messages)", "{{stream}}")],
    )
    d.panel(
        "JetStream storage",
        [("nats_jetstream_storage_bytes", "file"), ("nats_jetstream_memory_bytes", "memory")],
        unit="bytes",
    )
    d.panel(
        "Server memory and CPU",
        [
            ("nats_server_resident_memory_bytes / 2^20", "RSS MiB"),
            ("nats_server_cpu_usage_ratio", "CPU cores"),
        ],
    )


def dashboard() -> dict[str, Any]:
    d = Layout()
    end_to_end(d)
    for svc in SERVICES:
        d.row(f"{svc}")
        common(d, svc)
        own(d, svc)
    nats(d)
    return {
        "uid": "orderflow",
        "title": "orderflow",
        "description": "Per-service RED, backlog and the end-to-end SLOs (docs/metrics.md)",
        "tags": ["orderflow"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": d.panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")

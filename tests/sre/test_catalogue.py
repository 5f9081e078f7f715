"""docs/metrics.md and the generated SLO rules agree with the code; the metrics follow the
Prometheus naming conventions and carry no unbounded labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orderflow.cli import main
from orderflow.commands import monitoring
from shared.metrics import SLOS, STAGE_BUCKETS, MetricInfo
from tests.sre.conftest import REPO

# Labels whose values grow with the business: never a label.
UNBOUNDED = {
    "order_id",
    "sku",
    "customer",
    "customer_id",
    "external_id",
    "event_id",
    "email",
    "shipment_id",
    "notification_id",
    "address",
    "recipient",
}


def test_docs_and_slo_rules_are_what_the_code_generates() -> None:
    stale = [
        str(path.relative_to(REPO))
        for path, text in monitoring.generated_files(REPO).items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"out of date: {stale}; run `orderflow metrics-doc` and commit the result"


def test_metrics_doc_check_fails_on_a_stale_doc_and_regenerating_mends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    doc = tmp_path / monitoring.DOC
    shutil.copy(REPO / monitoring.DOC, doc)
    (tmp_path / monitoring.SLO_RULES).parent.mkdir(parents=True)
    shutil.copy(REPO / monitoring.SLO_RULES, tmp_path / monitoring.SLO_RULES)
    assert main(["metrics-doc", "--check", "--root", str(tmp_path)]) == 0
    doc.write_text(doc.read_text().replace("orderflow_outbox_oldest_age_seconds", "gone"))
    intro = doc.read_text().split(monitoring.BEGIN)[0]

    assert main(["metrics-doc", "--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["metrics-doc", "--root", str(tmp_path)]) == 0
    assert main(["metrics-doc", "--check", "--root", str(tmp_path)]) == 0
    assert "orderflow_outbox_oldest_age_seconds" in doc.read_text()
    assert doc.read_text().startswith(intro), "the hand-written part is kept"


def every_metric(catalogue: dict[str, list[MetricInfo]]) -> list[MetricInfo]:
    return [m for metrics in catalogue.values() for m in metrics] + monitoring.nats_catalogue()


def test_names_follow_prometheus_conventions(catalogue: dict[str, list[MetricInfo]]) -> None:
    wrong = []
    for m in every_metric(catalogue):
        if m.kind == "counter" and not m.name.endswith("_total"):
            wrong.append(f"{m.name}: a counter ends in _total")
        if m.kind != "counter" and m.name.endswith("_total"):
            wrong.append(f"{m.name}: only counters end in _total")
        words = set(m.name.split("_"))
        timed = bool(words & {"duration", "latency", "age", "seconds", "time"})
        if timed and m.unit != "seconds":
            wrong.append(f"{m.name}: a time is in seconds, named _seconds")
        if not m.name.startswith(("orderflow_", "process_", "nats_")):
            wrong.append(f"{m.name}: orderflow's metrics start with orderflow_")
        if not m.help.strip():
            wrong.append(f"{m.name}: no help text")
    assert not wrong, "\n".join(wrong)


def test_no_label_is_unbounded(catalogue: dict[str, list[MetricInfo]]) -> None:
    found = {
        (m.name, label) for m in every_metric(catalogue) for label in m.labels if label in UNBOUNDED
    }
    assert not found


def test_every_slo_threshold_is_a_bucket_edge() -> None:
    for slo in SLOS:
        for seconds in slo.thresholds().values():
            assert seconds in STAGE_BUCKETS, f"{slo.stage}: no bucket at {seconds}s"


def test_each_service_exposes_red_and_backlog_metrics(
    catalogue: dict[str, list[MetricInfo]],
) -> None:
    needed = {
        "orderflow_events_processed_total",
        "orderflow_handler_failures_total",
        "orderflow_handler_duration_seconds",
        "orderflow_stage_latency_seconds",
        "orderflow_outbox_pending",
        "orderflow_outbox_oldest_age_seconds",
        "orderflow_consumer_pending_messages",
        "orderflow_consumer_ack_pending_messages",
        "orderflow_consumer_redelivered_messages",
        "orderflow_dead_letters_total",
        "orderflow_dependency_up",
    }
    for service, metrics in catalogue.items():
        assert needed <= {m.name for m in metrics}, service

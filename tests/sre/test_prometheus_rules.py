"""The Prometheus config and alert rules: promtool checks them and runs their unit tests; every
metric they name is one the services expose; every alert has a unit test."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sre.conftest import PROMETHEUS_DIR
from tests.sre.promql import problems

RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.rules.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))


def rules() -> list[dict[str, Any]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_accepts_the_config_and_rules(promtool: str) -> None:
    run([promtool, "check", "config", "--syntax-only", "prometheus.yml"], PROMETHEUS_DIR)
    run([promtool, "check", "rules", *map(str, RULE_FILES)], PROMETHEUS_DIR)


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    output = run([promtool, "test", "rules", *map(str, TEST_FILES)], PROMETHEUS_DIR)
    assert output.count("SUCCESS") == len(TEST_FILES)


def test_a_wrong_expectation_fails_promtool(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: the outbox alert expected one minute too early is refused."""
    text = (PROMETHEUS_DIR / "tests" / "orderflow.test.yml").read_text()
    assert "      - eval_time: 8m\n        alertname: OrderflowOutboxStuck" in text
    broken = text.replace(
        "      - eval_time: 8m\n        alertname: OrderflowOutboxStuck",
        "      - eval_time: 6m\n        alertname: OrderflowOutboxStuck",
    ).replace("../rules/", f"{PROMETHEUS_DIR}/rules/")
    (tmp_path / "broken.test.yml").write_text(broken)
    done = subprocess.run(
        [promtool, "test", "rules", "broken.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "OrderflowOutboxStuck" in done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts - tested == set()


def test_rules_name_only_metrics_the_services_expose(exposed: dict[str, set[str]]) -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    found = {r.get("alert") or r["record"]: problems(r["expr"], exposed, recorded) for r in rules()}
    assert {name: p for name, p in found.items() if p} == {}


def test_the_scrape_config_has_a_job_per_service_and_nats() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"intake", "inventory", "fulfillment", "notify", "nats"}


@pytest.mark.parametrize(
    "expr",
    [
        "rate(orderflow_no_such_thing_total[5m])",
        'orderflow_outbox_pending{order_id="x"}',
        "sum by (sku) (rate(orderflow_events_processed_total[5m]))",
    ],
)
def test_the_metric_check_catches_what_does_not_exist(
    expr: str, exposed: dict[str, set[str]]
) -> None:
    assert problems(expr, exposed, set())

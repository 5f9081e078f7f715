"""The Grafana dashboard: it is what deploy/grafana/build_dashboard.py writes, has a row per
service and the end-to-end SLO panels, and every PromQL expression in it is valid (promtool) and
names only metrics and labels the services really register."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.sre.conftest import DASHBOARD, PROMETHEUS_DIR, REPO
from tests.sre.promql import problems

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in load()["panels"]
        for target in panel.get("targets", [])
    ]


def recorded() -> set[str]:
    names = set()
    for path in (PROMETHEUS_DIR / "rules").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def test_the_json_is_what_the_script_builds() -> None:
    spec = importlib.util.spec_from_file_location(
        "build", REPO / "deploy/grafana/build_dashboard.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert load() == json.loads(json.dumps(module.dashboard()))


def test_a_row_per_service_and_end_to_end_slo_panels() -> None:
    rows = [p["title"] for p in load()["panels"] if p["type"] == "row"]
    assert rows[0].startswith("End to end")
    assert rows[1:] == ["intake", "inventory", "fulfillment", "notify", rows[-1]]
    assert rows[-1].startswith("nats-server")
    exprs = " ".join(expr for _, expr in expressions())
    assert "orderflow:slo_errors:ratio_rate1h" in exprs
    assert (
        "histogram_quantile(0.99, sum by (le, stage) (rate(orderflow_stage_latency_seconds_bucket"
        in exprs
    )


def test_every_expression_names_exposed_metrics_and_labels(exposed: dict[str, set[str]]) -> None:
    rules = recorded()
    found = {f"{title}: {expr}": problems(expr, exposed, rules) for title, expr in expressions()}
    assert {k: v for k, v in found.items() if v} == {}


def test_every_expression_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule), Grafana's variables filled in."""
    rules = []
    for i, (_, expr) in enumerate(expressions()):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

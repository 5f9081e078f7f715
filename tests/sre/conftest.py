"""What the SRE tests share: the services' metric catalogue and the Prometheus tools.

promtool and prometheus come from Debian's ``prometheus`` package (``make prometheus-tools``,
which ``make test`` runs, installs it when it can); a test that needs one skips, saying why,
only where neither PATH nor /usr/bin has it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from orderflow.commands.monitoring import nats_catalogue, service_catalogue
from shared.metrics import MetricInfo

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "orderflow.json"
# Series Prometheus itself makes, beside what it scrapes.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}
METRIC_NAME = re.compile(r"\b((?:orderflow|process|nats)[_:][A-Za-z0-9_:]*|up|ALERTS)\b(?!\s*\()")


def find_tool(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.skip(
            f"{name} not found: install Debian's prometheus package (`make prometheus-tools` "
            "does it as root with apt-get)"
        )
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return find_tool("prometheus")


@pytest.fixture(scope="session")
def catalogue() -> dict[str, list[MetricInfo]]:
    return service_catalogue()


@pytest.fixture(scope="session")
def exposed(catalogue: dict[str, list[MetricInfo]]) -> dict[str, set[str]]:
    """Every series name a scrape of some service can show, with the labels it may carry."""
    names: dict[str, set[str]] = {}
    for metrics in [*catalogue.values(), nats_catalogue()]:
        for metric in metrics:
            for series in metric.series_names():
                labels = set(metric.labels) | {"job", "instance"}
                if series.endswith("_bucket"):
                    labels.add("le")
                names.setdefault(series, set()).update(labels)
    return names

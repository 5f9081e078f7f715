"""Which metric names and labels a PromQL expression uses, to check them against the catalogue.

Not a PromQL parser: it finds metric-like names (orderflow_*, orderflow:*, process_*, up, ALERTS)
that are not function calls, the label names inside their selectors, and the labels of
``by (...)`` / ``without (...)`` clauses; promtool checks the syntax itself.
"""

from __future__ import annotations

import re

from tests.sre.conftest import METRIC_NAME, PROMETHEUS_OWN

SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(METRIC_NAME.findall(without_strings))


def problems(expr: str, exposed: dict[str, set[str]], recorded: set[str]) -> list[str]:
    """What in ``expr`` no service exposes: unknown metrics, labels a metric does not carry."""
    found = []
    names = names_in(expr)
    known_labels: set[str] = {"alertname", "alertstate", "severity", "stage"}
    for name in names:
        if name in exposed:
            known_labels |= exposed[name]
        elif name not in recorded and name not in PROMETHEUS_OWN:
            found.append(f"no service exposes {name!r}")
    for name, body in SELECTOR.findall(expr):
        if name in exposed:
            for label in LABEL.findall(body):
                if label not in exposed[name]:
                    found.append(f"{name} has no label {label!r}")
    for group in GROUPING.findall(expr):
        for label in (part.strip() for part in group.split(",")):
            if label and label not in known_labels:
                found.append(f"grouping by {label!r}, which none of {sorted(names)} carries")
    return found

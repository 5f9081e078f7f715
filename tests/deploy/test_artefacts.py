"""deploy/ checked without a Docker engine or a Kubernetes cluster: every file parses, the NATS
configs are accepted by the real nats-server (``-t``), and names, ports, env vars, probe paths,
users and consumers agree with the code that will run them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from orderflow.cli import build_parser
from services.fulfillment.settings import FulfillmentSettings
from services.intake.settings import IntakeSettings
from services.inventory.settings import InventorySettings
from services.notify.settings import NotifySettings
from shared import nats_access, subjects
from shared.embedded_nats import nats_server_binary
from shared.settings import ServiceSettings
from tests.cluster.certs import make_certs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = subjects.SERVICES
SETTINGS: dict[str, type[ServiceSettings]] = {
    "intake": IntakeSettings,
    "inventory": InventorySettings,
    "fulfillment": FulfillmentSettings,
    "notify": NotifySettings,
}
# Folders another part of the project provides (the observability work); checked once present.
PROVIDED_ELSEWHERE = ("prometheus", "grafana")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def assert_known_setting(service: str, name: str) -> None:
    assert name.startswith("ORDERFLOW_"), name
    field = name.removeprefix("ORDERFLOW_").lower()
    assert field in SETTINGS[service].model_fields, f"{service} has no setting {name}"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            found.append((instruction.upper(), args.strip()))
    return found


def nats_server_version() -> tuple[int, int]:
    out = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"v(\d+)\.(\d+)", out)
    assert match, out
    return int(match[1]), int(match[2])


def image_version(image: str) -> tuple[int, int]:
    match = re.match(r"nats:(\d+)\.(\d+)", image)
    assert match, image
    return int(match[1]), int(match[2])


def conf_port(conf: str, block: str | None, key: str) -> int:
    """A port from a nats-server config (top level or inside one block)."""
    text = (DEPLOY / "nats" / conf).read_text()
    if block:
        start = text.index(f"{block} {{")
        text = text[start:]
    match = re.search(rf'^\s*{key}:\s*"[^"]*:(\d+)"', text, re.M)
    assert match, (conf, block, key)
    return int(match[1])


# --- The permission table is the services' real wiring -------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_nats_grants_cover_exactly_its_streams_and_consumers(
    service: str, tmp_path: Path
) -> None:
    from tests.cluster.system import FACTORIES

    rt = FACTORIES[service](ServiceSettings(home=tmp_path))
    access = nats_access.SERVICES[service]
    assert sorted(s.name for s in rt.streams) == sorted(access.streams)
    assert sorted((c.stream, c.name) for c in rt.consumer_specs) == sorted(access.consumers)
    allowed = nats_access.service_permissions(service).subscribe
    assert subjects.rpc_all(service) in allowed
    for spec in rt.consumer_specs:
        assert nats_access.deliver_subject(spec.name) in allowed


def test_auth_conf_is_generated_from_the_permission_table() -> None:
    text = (DEPLOY / "nats" / "auth.conf").read_text()
    match = re.search(r"`python -m shared\.nats_access ([^`>]*) >", text)
    assert match, "auth.conf must say how it was generated"
    channels = match[1].split()
    assert text == nats_access.deploy_config(channels), (
        "deploy/nats/auth.conf is out of date: " + match[0].strip("`> ")
    )


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    env = {
        **os.environ,
        "NATS_SERVER_NAME": "nats-1",
        "NATS_TLS_CERT": str(certs.cert),
        "NATS_TLS_KEY": str(certs.key),
        "NATS_TLS_CA": str(certs.ca),
    }
    for i in (1, 2, 3):
        env[f"NATS_ROUTE_{i}"] = f"nats-route://nats-{i}:6222"
    for user in nats_access.users(auth_conf_channels()):
        env[nats_access.password_env(user.name)] = "a-test-password"
    yield env


def auth_conf_channels() -> list[str]:
    text = (DEPLOY / "nats" / "auth.conf").read_text()
    match = re.search(r"`python -m shared\.nats_access ([^`>]*) >", text)
    assert match
    return match[1].split()


@pytest.mark.parametrize("conf", ["nats.conf", "nats-tls.conf"])
def test_the_nats_configs_are_accepted_by_the_real_server(
    conf: str, server_env: dict[str, str]
) -> None:
    path = DEPLOY / "nats" / conf
    run = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)],
        env=server_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # And it is not accepted just because nothing is checked: a password missing is an error.
    missing = {k: v for k, v in server_env.items() if k != "NATS_PASSWORD_INTAKE"}
    run = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)], env=missing, capture_output=True, text=True
    )
    assert run.returncode != 0


# --- Dockerfile ------------------------------------------------------------------------------


def test_the_image_runs_the_cli_with_the_service_as_its_command() -> None:
    steps = dockerfile()
    final = steps[max(i for i, (ins, _) in enumerate(steps) if ins == "FROM") :]
    by = {ins: args for ins, args in final}
    assert json.loads(by["ENTRYPOINT"]) == ["orderflow"]
    cmd = json.loads(by["CMD"])
    assert cmd[0] == "run" and cmd[1] in SERVICES
    build_parser().parse_args(cmd)  # the CLI accepts it
    env = dict(re.findall(r"(\w+)=(\S+)", by["ENV"]))
    for name in env:
        if name.startswith("ORDERFLOW_"):
            assert_known_setting("intake", name)
    assert env["ORDERFLOW_HTTP_HOST"] == "0.0.0.0"
    assert by["EXPOSE"] == env["ORDERFLOW_HTTP_PORT"]
    assert by["USER"] not in ("root", "0")
    assert f"127.0.0.1:{env['ORDERFLOW_HTTP_PORT']}/healthz" in by["HEALTHCHECK"]
    for ins, args in steps:
        if ins == "COPY" and not args.startswith("--from"):
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), source


def test_every_service_answers_the_probe_paths_the_artefacts_use(tmp_path: Path) -> None:
    from tests.cluster.system import FACTORIES

    for service in SERVICES:
        rt = FACTORIES[service](ServiceSettings(home=tmp_path))
        paths = {r.get_info().get("path") for r in rt.http.router.resources()}
        assert {"/healthz", "/readyz", "/metrics"} <= paths, (service, paths)


# --- compose.yaml ----------------------------------------------------------------------------


def test_compose_has_the_whole_system() -> None:
    services = compose()["services"]
    want = {"nats-1", "nats-2", "nats-3", "postgres", *SERVICES, "prometheus", "grafana"}
    assert want <= set(services), want - set(services)


def test_compose_nats_nodes_form_one_cluster_with_every_users_password() -> None:
    services = compose()["services"]
    nodes = [f"nats-{i}" for i in (1, 2, 3)]
    names = set()
    needed = {nats_access.password_env(u.name) for u in nats_access.users(auth_conf_channels())}
    cluster_port = conf_port("nats.conf", "cluster", "listen")
    for node in nodes:
        spec = services[node]
        assert image_version(spec["image"]) == nats_server_version()
        env = spec["environment"]
        names.add(env["NATS_SERVER_NAME"])
        assert needed <= set(env), needed - set(env)
        routes = {env[f"NATS_ROUTE_{i}"] for i in (1, 2, 3)}
        assert routes == {f"nats-route://{n}:{cluster_port}" for n in nodes}
        assert "./nats:/etc/nats:ro" in spec["volumes"]
        assert spec["command"] == ["-c", "/etc/nats/nats.conf"]
    assert len(names) == 3


@pytest.mark.parametrize("service", SERVICES)
def test_compose_runs_each_service_as_its_own_nats_user_and_database(service: str) -> None:
    spec = compose()["services"][service]
    assert spec["command"] == ["run", service]
    build_parser().parse_args(spec["command"])
    assert (DEPLOY / spec["build"]["context"] / spec["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    env = spec["environment"]
    for name in env:
        assert_known_setting(service, name)
    assert env["ORDERFLOW_NATS_USER"] == service
    assert env["ORDERFLOW_NATS_PASSWORD"].startswith("${" + nats_access.password_env(service) + ":")
    assert env["ORDERFLOW_STREAM_REPLICAS"] == "3"
    client_port = conf_port("nats.conf", None, "listen")
    for url in env["ORDERFLOW_NATS_URL"].split(","):
        parts = urlsplit(url)
        assert parts.hostname in compose()["services"] and parts.port == client_port, url
    # Compose fills in ${...} from deploy/.env; a password stands in for it here.
    db = urlsplit(re.sub(r"\$\{[^}]*\}", "secret", env["ORDERFLOW_DATABASE_URL"]))
    assert db.scheme == "postgresql+asyncpg"
    assert (db.username, db.hostname, db.path) == (service, "postgres", f"/{service}")
    init = (DEPLOY / "postgres" / "init-databases.sh").read_text()
    assert re.search(rf"for service in [^;]*\b{service}\b", init)
    assert (
        f"POSTGRES_PASSWORD_{service.upper()}" in compose()["services"]["postgres"]["environment"]
    )
    if service == "fulfillment":
        assert env["ORDERFLOW_SIMULATOR"] == "false"


def test_compose_mounts_exist_and_prometheus_scrapes_the_services() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                continue  # a named volume
            path = (DEPLOY / source).resolve()
            top = path.relative_to(DEPLOY).parts[0]
            if top in PROVIDED_ELSEWHERE and not (DEPLOY / top).exists():
                continue
            assert path.exists(), f"{name} mounts {source}, which does not exist"
    http_port = int(services["intake"]["environment"]["ORDERFLOW_HTTP_PORT"])
    targets = DEPLOY / "compose" / "prometheus-targets"
    for service in SERVICES:
        (group,) = json.loads((targets / f"{service}.json").read_text())
        assert group["targets"] == [f"{service}:{http_port}"]
    (nats_group,) = json.loads((targets / "nats.json").read_text())
    host = nats_group["targets"][0].split(":")[0]
    assert host in services
    prometheus = DEPLOY / "prometheus" / "prometheus.yml"
    if prometheus.exists():
        config = yaml.safe_load(prometheus.read_text())
        files = {
            f
            for job in config["scrape_configs"]
            for sd in job.get("file_sd_configs", [])
            for f in sd["files"]
        }
        for f in files:
            assert (targets / Path(f).name).exists(), f"no compose target file for {f}"


# --- Kubernetes ------------------------------------------------------------------------------


def test_k8s_objects_are_well_formed() -> None:
    docs = k8s_docs()
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"].get("name")
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "orderflow", doc["metadata"]
        if doc["kind"] in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), doc["metadata"]["name"]
        if doc["kind"] == "Service":
            pods = [
                d
                for d in docs
                if d["kind"] in ("Deployment", "StatefulSet")
                and doc["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert pods, f"Service {doc['metadata']['name']} selects nothing"
            names = {
                p["name"] for d in pods for c in d["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }  # fmt: skip
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in names, (doc["metadata"]["name"], port)


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_deployment_probes_resources_env_and_scaling(service: str) -> None:
    docs = k8s_docs()
    deployment = find(docs, "Deployment", service)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run", service]
    build_parser().parse_args(container["args"])
    env = {e["name"]: e for e in container["env"]}
    for name in env:
        assert_known_setting(service, name)
    assert env["ORDERFLOW_NATS_USER"]["value"] == service
    for secret_backed in ("ORDERFLOW_NATS_PASSWORD", "ORDERFLOW_DATABASE_URL"):
        assert env[secret_backed]["valueFrom"]["secretKeyRef"]["name"] == f"orderflow-{service}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["ORDERFLOW_HTTP_PORT"]["value"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    nats_url = urlsplit(env["ORDERFLOW_NATS_URL"]["value"])
    nats_service = find(docs, "Service", str(nats_url.hostname))
    assert nats_url.port in {p["port"] for p in nats_service["spec"]["ports"]}

    scaled = find(docs, "ScaledObject", service)
    assert scaled["spec"]["scaleTargetRef"]["name"] == service
    assert scaled["spec"]["minReplicaCount"] >= 1  # someone must answer its commands
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"nats-jetstream"}
    watched = {(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in triggers}
    assert watched == set(nats_access.SERVICES[service].consumers)
    monitor = conf_port("nats.conf", None, "http")
    for trigger in triggers:
        host, port = trigger["metadata"]["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert host.split(".")[0] == "nats" and int(port) == monitor
        assert int(trigger["metadata"]["lagThreshold"]) > 0


def test_k8s_nats_runs_the_deploy_config_as_a_three_node_cluster() -> None:
    docs = k8s_docs()
    sts = find(docs, "StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert image_version(container["image"]) == nats_server_version()
    assert container["args"] == ["-c", "/etc/nats/nats.conf"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "client": conf_port("nats.conf", None, "listen"),
        "cluster": conf_port("nats.conf", "cluster", "listen"),
        "monitor": conf_port("nats.conf", None, "http"),
    }
    env = {e["name"]: e for e in container["env"]}
    headless = sts["spec"]["serviceName"]
    find(docs, "Service", headless)
    routes = {env[f"NATS_ROUTE_{i}"]["value"] for i in (1, 2, 3)}
    assert routes == {f"nats-route://nats-{i}.{headless}:{ports['cluster']}" for i in range(3)}
    assert env["NATS_SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Drains take one node at a time, so the R3 streams keep a quorum.
    pdb = find(docs, "PodDisruptionBudget", "nats")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]

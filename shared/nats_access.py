"""Who may do what on NATS: one user per service and per channel, each allowed only its own
subjects and the JetStream API calls it makes.

The same table renders the embedded server's config (``shared/embedded_nats.py``, with
generated passwords) and the committed production config (``deploy/nats/auth.conf``, with
passwords taken from the server's environment). tests/deploy checks that the table matches each
service's real wiring (its streams, durable consumers and commands), so a new consumer cannot
ship without its grant.

* A **service** publishes its own events (``orderflow.<svc>.>``) and dead letters
  (``orderflow.dlq.<svc>.>``), answers its own commands (``orderflow.rpc.<svc>.*``, replies via
  ``allow_responses``), receives its consumers' deliver subjects and acks only those consumers'
  messages; on the JetStream API it may look up and create the streams it touches and look up,
  create and update only its own durable consumers.
* A **channel** (``channel-<name>``) may only publish to ``orderflow.submit.<name>``.
* **cli** (the orderflow CLI and launcher) sends commands to every service and may submit for
  any channel (the demo load does); it reads no stream.
* **admin** may do anything (the benchmark, the ``nats`` CLI when debugging).

Every user except admin receives replies only on its own inbox prefix ``_INBOX.<user>`` (the
client must connect with that ``inbox_prefix``; ``shared.runtime.connect_nats`` does), so no
user can read another's replies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shared import subjects

JS_API = "$JS.API"
DELIVER_PREFIX = "_ORDERFLOW.deliver"
CLI_USER = "cli"
ADMIN_USER = "admin"

S_SUBMISSIONS = "ORDERFLOW_SUBMISSIONS"
S_INTAKE = "ORDERFLOW_INTAKE"
S_INVENTORY = "ORDERFLOW_INVENTORY"
S_FULFILLMENT = "ORDERFLOW_FULFILLMENT"
S_NOTIFY = "ORDERFLOW_NOTIFY"
S_DEADLETTER = "ORDERFLOW_DEADLETTER"


@dataclass(frozen=True)
class ServiceAccess:
    """What one service touches on NATS: the streams it makes sure exist, and its durable
    consumers as (stream, durable name)."""

    streams: tuple[str, ...]
    consumers: tuple[tuple[str, str], ...]


SERVICES: dict[str, ServiceAccess] = {
    subjects.INTAKE: ServiceAccess(
        (S_SUBMISSIONS, S_INTAKE, S_INVENTORY, S_FULFILLMENT, S_DEADLETTER),
        (
            (S_SUBMISSIONS, "intake-submissions"),
            (S_INVENTORY, "intake-status-view"),
            (S_FULFILLMENT, "intake-shipment-view"),
            (S_FULFILLMENT, "intake-cancellation-view"),
        ),
    ),
    subjects.INVENTORY: ServiceAccess(
        (S_INTAKE, S_INVENTORY, S_FULFILLMENT, S_DEADLETTER),
        ((S_INTAKE, "inventory-orders"), (S_FULFILLMENT, "inventory-shipments")),
    ),
    subjects.FULFILLMENT: ServiceAccess(
        (S_INTAKE, S_INVENTORY, S_FULFILLMENT, S_DEADLETTER),
        ((S_INVENTORY, "fulfillment-reservations"), (S_INTAKE, "fulfillment-cancellations")),
    ),
    subjects.NOTIFY: ServiceAccess(
        (S_INTAKE, S_INVENTORY, S_FULFILLMENT, S_NOTIFY, S_DEADLETTER),
        (
            (S_INTAKE, "notify-intake"),
            (S_INVENTORY, "notify-inventory"),
            (S_FULFILLMENT, "notify-fulfillment"),
            (S_DEADLETTER, "notify-dead-letters"),
        ),
    ),
}


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Lets a service answer a request on the reply subject it came with, and nothing else.
    allow_responses: bool = False


@dataclass(frozen=True)
class User:
    name: str
    permissions: Permissions | None = None  # None: everything (admin)
    description: str = field(default="", compare=False)


def inbox_prefix(user: str) -> str:
    """Where ``user`` receives replies (JetStream acks, command answers)."""
    return f"_INBOX.{user}"


def channel_user(channel: str) -> str:
    return f"channel-{channel}"


def deliver_subject(consumer: str) -> str:
    """The push consumer's deliver subject (shared/consumer.py uses the same form)."""
    return f"{DELIVER_PREFIX}.{consumer}"


def service_permissions(service: str) -> Permissions:
    access = SERVICES[service]
    publish = [
        subjects.all_events_of(service),
        f"{subjects.PREFIX}.dlq.{service}.>",
        f"{JS_API}.INFO",
    ]
    for stream in access.streams:
        publish += [f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.STREAM.CREATE.{stream}"]
    for stream, consumer in access.consumers:
        publish += [
            f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}",
            f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}",
            f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.>",
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            # ack, nak and term go to the message's reply subject, which names the consumer.
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
    if service == subjects.INTAKE:
        # GET /orders/{id}/trace asks every service what it knows (shared/audit.py).
        publish.append(f"{subjects.PREFIX}.rpc.*.trace")
    subscribe = [
        subjects.rpc_all(service),
        *(deliver_subject(consumer) for _, consumer in access.consumers),
        f"{inbox_prefix(service)}.>",
    ]
    return Permissions(tuple(publish), tuple(subscribe), allow_responses=True)


def channel_permissions(channel: str) -> Permissions:
    return Permissions(
        (subjects.submission(channel),), (f"{inbox_prefix(channel_user(channel))}.>",)
    )


# What the CLI reads of JetStream itself: `orderflow trace` (stream positions), `reconcile`
# (the dead-letter stream and its consumers) and `replay` (an ephemeral, unacknowledged pull
# consumer over a stream). Reading, and consumers of its own; never publishing events.
CLI_JETSTREAM_READS = (
    "INFO",
    "STREAM.NAMES",
    "STREAM.LIST",
    "STREAM.INFO.*",
    "STREAM.MSG.GET.*",
    "DIRECT.GET.>",
    "CONSUMER.NAMES.*",
    "CONSUMER.LIST.*",
    "CONSUMER.INFO.*.*",
    "CONSUMER.CREATE.*",
    "CONSUMER.CREATE.*.>",
    "CONSUMER.MSG.NEXT.*.*",
    "CONSUMER.DELETE.*.*",
)


def cli_permissions() -> Permissions:
    return Permissions(
        (
            f"{subjects.PREFIX}.rpc.>",
            subjects.SUBMISSIONS_ALL,
            *(f"{JS_API}.{api}" for api in CLI_JETSTREAM_READS),
        ),
        (f"{inbox_prefix(CLI_USER)}.>",),
    )


def users(channels: tuple[str, ...] | list[str]) -> list[User]:
    """Every user of a deployment with these channels: services, channels, cli, admin."""
    found = [User(s, service_permissions(s), f"the {s} service") for s in SERVICES]
    found += [
        User(channel_user(c), channel_permissions(c), f"the {c} channel (submits only)")
        for c in channels
    ]
    found.append(User(CLI_USER, cli_permissions(), "orderflow CLI and launcher: commands, demo"))
    found.append(User(ADMIN_USER, None, "operators' tools: benchmark, nats CLI; everything"))
    return found


def password_env(user: str) -> str:
    """The server-side environment variable that holds ``user``'s password in deploy/nats."""
    return "NATS_PASSWORD_" + user.upper().replace("-", "_")


def render_authorization(
    all_users: list[User], passwords: dict[str, str] | None = None, indent: str = ""
) -> str:
    """The ``authorization { users = [...] }`` block of a nats-server config.

    With ``passwords`` the secrets are written in (the embedded server's private config file);
    without, each password is a ``$NATS_PASSWORD_<USER>`` reference resolved from the server's
    environment (deploy/nats/auth.conf).
    """
    lines = [f"{indent}authorization {{", f"{indent}  users = ["]
    for user in all_users:
        secret = (
            json.dumps(passwords[user.name])
            if passwords is not None
            else "$" + password_env(user.name)
        )
        lines.append(f"{indent}    # {user.description}" if user.description else "")
        lines.append(f"{indent}    {{")
        lines.append(f"{indent}      user: {json.dumps(user.name)}")
        lines.append(f"{indent}      password: {secret}")
        if user.permissions is not None:
            p = user.permissions
            lines.append(f"{indent}      permissions: {{")
            lines.append(f"{indent}        publish: {{ allow: {_list(p.publish, indent)} }}")
            lines.append(f"{indent}        subscribe: {{ allow: {_list(p.subscribe, indent)} }}")
            if p.allow_responses:
                lines.append(f"{indent}        allow_responses: true")
            lines.append(f"{indent}      }}")
        lines.append(f"{indent}    }}")
    lines += [f"{indent}  ]", f"{indent}}}"]
    return "\n".join(line for line in lines if line) + "\n"


def _list(items: tuple[str, ...], indent: str) -> str:
    # Quoted: an unquoted $JS... would be read as a variable reference by the config parser.
    pad = f"\n{indent}          "
    return "[" + pad + f",{pad}".join(json.dumps(i) for i in items) + f"\n{indent}        ]"


DEPLOY_HEADER = """\
# Users and permissions of orderflow's NATS deployment: one user per service and per channel.
# GENERATED by `python -m shared.nats_access {channels} > deploy/nats/auth.conf`
# from shared/nats_access.py; tests/deploy fails when it is out of date. Passwords come from
# the server's environment (NATS_PASSWORD_<USER>); bcrypt hashes work there too.
"""


def deploy_config(channels: list[str] | tuple[str, ...]) -> str:
    """deploy/nats/auth.conf for a deployment with these channels."""
    header = DEPLOY_HEADER.format(channels=" ".join(channels))
    return header + "\n" + render_authorization(users(channels))


if __name__ == "__main__":
    import sys

    print(deploy_config(sys.argv[1:]), end="")

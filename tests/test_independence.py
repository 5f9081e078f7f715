"""Services share only ``shared/``: no service imports another, nor the ``orderflow`` launcher,
and ``shared/`` imports no service. Teams deploy each service on its own schedule; an import
across that line would tie their releases together."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES_DIR = ROOT / "services"
SHARED_DIR = ROOT / "shared"
LAUNCHER = "orderflow"


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.imported}: {self.why}"


def module_name(path: Path) -> tuple[str, bool]:
    """Dotted module name of a file under ROOT, and whether it is a package's __init__."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module a source imports, as absolute dotted names with their lines.

    ``from a import b`` counts as importing ``a`` and ``a.b`` (b may be a module); relative
    imports are resolved against ``module``; one that climbs above the top package is reported
    as ``..`` + its target. ``importlib.import_module("x")`` and ``__import__("x")`` with a
    literal name count too.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                climb = node.level - 1
                if climb >= len(package):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
                    continue
                base_parts = package[: len(package) - climb]
                if node.module:
                    base_parts = [*base_parts, node.module]
                base = ".".join(base_parts)
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations_in(source: str, path: str, module: str, is_package: bool) -> list[Violation]:
    top = module.split(".")[0]
    own_service = module.split(".")[1] if top == "services" and "." in module else None
    out: list[Violation] = []
    for line, name in imports_of(source, module, is_package):
        if out and out[-1].line == line:
            continue  # one report per import statement: `from a.b import c` also names a.b.c
        if name.startswith("."):
            out.append(
                Violation(path, line, name, "a relative import that climbs out of its package")
            )
        elif _within(name, LAUNCHER):
            out.append(Violation(path, line, name, "the orderflow launcher is not a library"))
        elif top == "shared" and _within(name, "services"):
            out.append(Violation(path, line, name, "shared/ must not depend on any service"))
        elif own_service is not None and _within(name, "services"):
            target = name.split(".")
            if len(target) > 1 and target[1] != own_service:
                out.append(
                    Violation(
                        path,
                        line,
                        name,
                        f"services.{own_service} may import only itself and shared",
                    )
                )
    return out


def checked_files() -> list[Path]:
    return sorted([*SERVICES_DIR.rglob("*.py"), *SHARED_DIR.rglob("*.py")])


def test_services_and_shared_keep_to_their_own_imports() -> None:
    services = sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").exists())
    assert "intake" in services, f"no services found under {SERVICES_DIR}"
    found: list[Violation] = []
    for path in checked_files():
        module, is_package = module_name(path)
        source = path.read_text(encoding="utf-8")
        found.extend(violations_in(source, str(path.relative_to(ROOT)), module, is_package))
    assert not found, "imports across service lines:\n" + "\n".join(map(str, found))


BAD_IN_INVENTORY = """\
import services.intake.models
from services.fulfillment import handlers
from services import notify
from ..intake.domain import read_submission
from .. import fulfillment
from ... import anything
import orderflow.cli
from orderflow import cli
import importlib
importlib.import_module("services.notify.app")
"""

FINE_IN_INVENTORY = """\
import services
import services.inventory.models
from services.inventory import domain
from . import handlers
from .models import metadata
from ..inventory import settings
from shared import subjects
import orderflow_extras
"""


def test_every_form_of_a_crossing_import_is_caught() -> None:
    found = violations_in(
        BAD_IN_INVENTORY, "services/inventory/app.py", "services.inventory.app", False
    )
    assert sorted({v.line for v in found}) == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert "services/inventory/app.py:1 imports services.intake.models" in str(found[0])


def test_a_services_own_imports_pass() -> None:
    assert (
        violations_in(
            FINE_IN_INVENTORY, "services/inventory/app.py", "services.inventory.app", False
        )
        == []
    )


@pytest.mark.parametrize(
    "source", ["import services.intake", "from services import intake", "from orderflow import cli"]
)
def test_shared_may_not_import_services_or_the_launcher(source: str) -> None:
    [violation] = violations_in(source, "shared/runtime.py", "shared.runtime", False)
    assert violation.line == 1


def test_relative_imports_resolve_from_a_package_init() -> None:
    assert imports_of("from . import domain", "services.notify", True) == [
        (1, "services.notify"),
        (1, "services.notify.domain"),
    ]
    [violation] = violations_in(
        "from ..intake import app", "services/notify/__init__.py", "services.notify", True
    )
    assert violation.imported == "services.intake"

"""ARCHITECTURE.md's import rules: down the flow, never back up, never in a circle.

Leaf modules (errors, fsutil, masked, vendors) import nothing of ours and may be used anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import station

ROOT = Path(station.__file__).parent
LEAVES = {"station.errors", "station.fsutil", "station.masked", "station.vendors", "station"}


def station_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "station" or n.startswith("station.")}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py")) if package else sorted(ROOT.glob("*.py"))


RULES = [
    # (package, files, what its imports may NOT start with, why)
    ("protocol", None, ("station.",), "the wire contract knows no devices, no queue, no CLI"),
    ("virtual", None, ("station.",), "an authenticator, as a YubiKey is"),
    ("provision", None, ("station.virtual", "station.fulfillment", "station.customer", "station.cli"),
     "the station cannot tell a virtual key from a real one"),
    ("customer", None, ("station.provision", "station.device", "station.virtual", "station.cli"),
     "a customer touches a key only as an end user does"),
    ("trust", None, ("station.provision", "station.device", "station.virtual", "station.fulfillment",
                     "station.customer", "station.cli", "station.doctor", "station.config"),
     "the guard's knowledge is data and checks: it touches no key and knows no command"),
    ("fulfillment", None, ("station.virtual", "station.customer", "station.cli"),
     "the daemon reaches keys through device, like any station code"),
    ("standins", None, ("station.",), "Okta, Graph and PingOne, as virtual is a YubiKey: reached only over HTTP"),
    ("customer", None, ("station.standins",), "the customer reaches the providers only over HTTP"),
    ("fulfillment", ("api.py", "store.py", "client.py", "models.py", "errors.py"),
     ("station.provision", "station.device", "station.virtual", "station.cli"),
     "the service never touches a key; only the runner calls provision"),
    ("fulfillment/directories", None,
     ("station.provision", "station.device", "station.virtual", "station.cli", "station.standins"),
     "directories are reached through customer's clients, never a stand-in; the service touches no key"),
]


@pytest.mark.parametrize("package, files, forbidden, why", RULES, ids=[r[0] + ("-service" if r[1] else "") for r in RULES])
def test_imports_run_down_the_flow(package, files, forbidden, why):
    paths = [p for p in modules(package) if files is None or p.name in files]
    assert paths
    for path in paths:
        own = f"station.{package}"
        bad = {m for m in station_imports(path) - LEAVES if m.startswith(forbidden) and not m.startswith(own)}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: {why}"


def test_leaf_modules_import_nothing_of_ours():
    for name in LEAVES - {"station"}:
        path = ROOT / (name.split(".", 1)[1] + ".py")
        assert station_imports(path) <= {"station.errors"} or not station_imports(path), name


def test_only_the_demo_and_the_cli_start_standins():
    for path in ROOT.rglob("*.py"):
        if path.name == "demo.py" or path.name.startswith("cli") or "standins" in path.parts:
            continue
        assert not any(m.startswith("station.standins") for m in station_imports(path)), path


def test_nothing_imports_the_cli():
    for path in ROOT.rglob("*.py"):
        if path.name != "cli.py":
            assert "station.cli" not in station_imports(path), path

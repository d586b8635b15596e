"""The core is pure: no module under ``stream_learner/core`` reaches for Kafka, HTTP,
Prometheus, the CLI, the service, the replay, logging or metrics.

Two checks: every import statement in the core's source (type-only ones included) against
an allow-list, and a fresh interpreter that imports every core module and must not end up
with a forbidden module loaded (catching an indirect import through a helper module).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import stream_learner.core

CORE = Path(stream_learner.core.__file__).parent
# Our own modules the core may use; everything else of stream_learner is an adapter.
OURS_ALLOWED = ("stream_learner.core", "stream_learner.errors")
# Third-party or standard-library roots that belong to the edges, never the core.
FORBIDDEN_ROOTS = frozenset(
    {"confluent_kafka", "prometheus_client", "http", "logging", "socket", "urllib", "argparse"}
)
# Loaded modules that prove an edge was imported (the standard library's http or logging
# are loaded by River's own dependencies, so only the source check can forbid those).
FORBIDDEN_LOADED = ("confluent_kafka", "prometheus_client", "stream_learner.")


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    package = module.rsplit(".", node.level)[0]
    return f"{package}.{node.module}" if node.module else package


def forbidden_imports(source: str, module: str) -> list[str]:
    """The imports of ``source`` (the text of ``module``) the core must not have."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            names = (
                [base]
                if base != "stream_learner"
                else [f"stream_learner.{alias.name}" for alias in node.names]
            )
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORBIDDEN_ROOTS or (
                name.split(".")[0] == "stream_learner"
                and not any(name == ok or name.startswith(ok + ".") for ok in OURS_ALLOWED)
            ):
                found.append(name)
    return found


def _core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(CORE)], "stream_learner.core."))


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: p.name)
def test_core_source_imports_nothing_of_the_edges(path: Path) -> None:
    module = "stream_learner.core" + ("" if path.name == "__init__.py" else f".{path.stem}")
    assert forbidden_imports(path.read_text(), module) == []


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from confluent_kafka import Consumer", ["confluent_kafka"]),
        ("import prometheus_client.core", ["prometheus_client.core"]),
        ("import http.server", ["http.server"]),
        ("import logging", ["logging"]),
        (
            "from stream_learner.kafka.checkpoints import CheckpointStore",
            ["stream_learner.kafka.checkpoints"],
        ),
        ("from stream_learner import metrics, errors", ["stream_learner.metrics"]),
        ("from ..service.runtime import Service", ["stream_learner.service.runtime"]),
        ("from .. import logs", ["stream_learner.logs"]),
        ("if TYPE_CHECKING:\n    from stream_learner.cli import run", ["stream_learner.cli"]),
        ("importlib.import_module('stream_learner.replay')", ["stream_learner.replay"]),
        ("from stream_learner.core.events import Event\nfrom . import snapshot", []),
        ("from stream_learner.errors import ConfigError\nimport river, numpy, orjson", []),
    ],
)
def test_the_check_flags_a_forbidden_import(source: str, flagged: list[str]) -> None:
    assert forbidden_imports(source, "stream_learner.core.learner") == flagged


def _loaded_after_importing(modules: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return [
        name
        for name in out
        if name.startswith(FORBIDDEN_LOADED)
        and not any(name == ok or name.startswith(ok + ".") for ok in OURS_ALLOWED)
        and name != "stream_learner"
    ]


def test_importing_the_whole_core_loads_no_edge_module() -> None:
    assert _loaded_after_importing(_core_modules()) == []


def test_the_interpreter_check_sees_an_edge_module() -> None:
    assert "stream_learner.kafka.checkpoints" in _loaded_after_importing(
        ["stream_learner.core.events", "stream_learner.kafka.checkpoints"]
    )

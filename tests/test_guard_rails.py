"""The test command keeps its guard rails: lint before the tests, and the docstrings'
examples run as tests."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_docstring_example_is_collected_by_pytest():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in shlex.split(config["addopts"])
    roots = [ROOT / path for path in config["testpaths"]]
    with_examples = [p for p in (ROOT / "stream_learner").rglob("*.py") if ">>>" in p.read_text()]
    assert with_examples, "no module has examples any more?"
    for path in with_examples:
        assert any(root in path.parents for root in roots), f"{path} is outside testpaths"


def test_the_test_script_fails_on_a_lint_violation_before_pytest():
    lines = [
        line.strip()
        for line in (ROOT / "scripts" / "test.sh").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert "set -euo pipefail" in lines
    lint = lines.index(".venv/bin/ruff check .")
    tests = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert lint < tests

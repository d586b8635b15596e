"""Where a benchmark's figures go: ``load_tests/results/<name>.json``, with the Python version
they were measured on."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def write(path: Path, results: dict) -> None:
    """Write ``results`` (and the Python version) to ``path`` as JSON, and say so."""
    results["python"] = platform.python_version()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")

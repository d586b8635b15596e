"""A module of this repository as it was at another git revision, for before/after figures
measured in one process, on one machine load (``--against REF`` of the benchmarks)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def module_at(ref: str, path: str) -> ModuleType:
    """``path`` (e.g. ``stream_learner/core/codec.py``) at git revision ``ref``, imported
    beside today's modules (it imports today's versions of the others)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    name = f"_at_{ref}_" + path.removesuffix(".py").replace("/", ".").replace("-", "_")
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)  # noqa: S102
    return module

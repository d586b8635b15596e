"""Generated sections of README.md: the text between two HTML comment markers.

The scripts that measure something (``core_report.py``, ``policy_comparison.py``) write their
tables into the README with ``--write-readme``, replacing only what is between their own
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers, so nothing typed by hand is lost.
"""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(readme: Path, name: str, text: str) -> bool:
    """Put ``text`` between the ``name`` markers; False (nothing written) without them."""
    start, end = markers(name)
    content = readme.read_text() if readme.exists() else ""
    at, until = content.find(start), content.find(end)
    if at < 0 or until < at:
        return False
    readme.write_text(content[: at + len(start)] + "\n" + text + content[until:])
    return True

"""On-demand commands from the control topic: the "ad hoc" retraining cadence.

A command is one JSON object::

    {"command": "retrain", "key": "fraud", "reason": "new feature store backfill",
     "requested_by": "alice", "ts": 1700000000}

``key`` names the model it applies to (``"*"`` or absent: every key the receiving
instance owns). A ``rollback`` names a ``version``; with ``"staged": true`` it means the
snapshot staged for the key (``replay --rebuild --publish``), which may share its version
number with one the service wrote meanwhile. Commands travel through Kafka like events, so
a replay of the control topic reproduces the same decisions at the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from stream_learner.errors import DecodeError

COMMANDS = ("retrain", "snapshot", "pause", "resume", "rollback")
ALL_KEYS = "*"
MAX_COMMAND_BYTES = 65_536


@dataclass(frozen=True, slots=True)
class Command:
    command: str
    key: str = ALL_KEYS
    version: int | None = None
    reason: str = ""
    requested_by: str = ""
    ts: float | None = None
    staged: bool = False

    def applies_to(self, key: str) -> bool:
        return self.key == ALL_KEYS or self.key == key

    def to_json(self) -> bytes:
        body = {"command": self.command, "key": self.key, "reason": self.reason}
        if self.version is not None:
            body["version"] = self.version
        if self.requested_by:
            body["requested_by"] = self.requested_by
        if self.ts is not None:
            body["ts"] = self.ts
        if self.staged:
            body["staged"] = True
        return orjson.dumps(body)


def _optional_str(obj: dict, name: str, limit: int = 500) -> str:
    value = obj.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise DecodeError("bad_command", f"{name}: expected a string of at most {limit} characters")
    return value


def decode_command(raw: bytes | None) -> Command:
    """Parse a control message; anything malformed is a ``DecodeError('bad_command')``."""
    if raw is None or len(raw) > MAX_COMMAND_BYTES:
        raise DecodeError("bad_command", "empty or oversized control message")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("bad_command", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("bad_command", "a command is a JSON object")
    name = obj.get("command")
    if name not in COMMANDS:
        raise DecodeError("bad_command", f"command: {name!r}; choose one of {', '.join(COMMANDS)}")
    key = obj.get("key") or ALL_KEYS
    if not isinstance(key, str):
        raise DecodeError("bad_command", "key: expected a string")
    version = obj.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise DecodeError("bad_command", "version: expected an integer")
    if name == "rollback" and version is None:
        raise DecodeError("bad_command", "rollback needs a 'version'")
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise DecodeError("bad_command", "ts: expected epoch seconds")
    staged = obj.get("staged", False)
    if not isinstance(staged, bool):
        raise DecodeError("bad_command", "staged: expected true or false")
    return Command(
        command=name,
        key=key,
        version=version,
        reason=_optional_str(obj, "reason"),
        requested_by=_optional_str(obj, "requested_by", 200),
        ts=float(ts) if ts is not None else None,
        staged=staged,
    )

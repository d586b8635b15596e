"""A stable identity for each running instance: Kafka's static group membership.

With a ``group.instance.id`` the group coordinator knows a restarted instance as the member
that just left, and hands its partitions back at once, without a rebalance; without one a
crashed member holds its partitions until its session times out (``session.timeout.ms``),
and a restart waits that long before it learns anything again.

The id is either configured (``kafka.instance_id``: a pod name in a StatefulSet, say) or
*claimed* from a small directory of id files, one per instance slot of a consumer group on
this machine. An instance takes the first slot no running instance holds (an exclusive
``flock`` on the slot's file, which the kernel releases when the process dies, however it
dies) and reuses the id written there, or writes a new one (host name and random suffix,
unique across machines). So a restart after a crash takes its predecessor's id, and two
instances started side by side never share one (a shared id would fence one of them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stream_learner.errors import ConfigError

__all__ = ["AUTO", "MAX_SLOTS", "Identity", "claim_instance_id", "default_instance_dir"]

AUTO = "auto"
MAX_SLOTS = 256
HOME_ENV = "STREAM_LEARNER_HOME"  # the same home as the local broker's state
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_instance_dir() -> Path:
    home = os.environ.get(HOME_ENV) or Path.home() / ".cache" / "stream-learner"
    return Path(home) / "instances"


@dataclass
class Identity:
    """A claimed instance id; the slot stays this process's until :meth:`release`."""

    id: str
    path: Path | None = None
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None


def _slot_name(group_id: str, slot: int) -> str:
    # Readable, and distinct for groups whose names differ only in unsafe characters.
    digest = hashlib.blake2b(group_id.encode(), digest_size=4).hexdigest()
    return f"{_UNSAFE.sub('_', group_id)[:60]}-{digest}.{slot}.id"


def claim_instance_id(group_id: str, directory: str | Path | None = None) -> Identity:
    """The id of the first free slot of ``group_id`` under ``directory`` (see the module
    docstring); a directory that cannot be written is one ``ConfigError`` line."""
    root = Path(directory) if directory else default_instance_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"kafka.instance_dir: cannot create {root}: {exc.strerror}; set kafka.instance_id "
            "or kafka.instance_dir"
        ) from None
    for slot in range(MAX_SLOTS):
        path = root / _slot_name(group_id, slot)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        except OSError as exc:
            raise ConfigError(
                f"kafka.instance_dir: cannot open {path}: {exc.strerror}; set "
                "kafka.instance_id or kafka.instance_dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a running instance holds this slot
            continue
        try:
            stored = os.pread(fd, 256, 0).decode(errors="replace").strip()
            if not stored or _UNSAFE.search(stored):
                host = _UNSAFE.sub("_", socket.gethostname())[:40] or "host"
                stored = f"{host}-{uuid.uuid4().hex[:12]}"
                os.ftruncate(fd, 0)
                os.pwrite(fd, stored.encode() + b"\n", 0)
                os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise ConfigError(f"kafka.instance_dir: cannot use {path}: {exc.strerror}") from None
        return Identity(stored, path, fd)
    raise ConfigError(
        f"kafka.instance_dir: all {MAX_SLOTS} instance slots of group {group_id!r} in {root} "
        "are held by running instances"
    )

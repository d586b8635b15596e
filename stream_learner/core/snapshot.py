"""The snapshot format: a learner pickled, compressed, checksummed, signed and chunked.

A snapshot is a JSON *header* plus a binary *payload* (``pickle`` protocol 5, then
``zlib``). The header says what the state is (model key, lineage, version, the trigger
and decision that produced it, metrics, extra fields) and, crucially, the input
``offsets`` it reflects: a restart resumes reading there. A payload larger than
``chunk_bytes`` is split into chunks that each carry the same header plus their
``chunk_index``.

Unpickling runs code, so nothing is unpickled before it is verified:

1. the header is authenticated: ``signature`` is an HMAC-SHA256, keyed by the
   operator's signing key, of the *canonical header* (sorted-key JSON of every field
   except ``signature`` and ``chunk_index``). The header holds the payload's size and
   SHA-256, so the signature covers the payload too, and a changed ``model_version``
   or ``offsets`` is refused just like a changed payload byte;
2. the payload's size and SHA-256 must match the header.

Only then is it decompressed and unpickled. Every refusal is a :class:`SnapshotRejected`
with a machine-readable ``reason`` (one of :data:`REASONS`) for logs and metrics.

Without a signing key, only the checksum is checked: that catches corruption, not
an attacker who can write to the checkpoint topic.

>>> meta = SnapshotMeta(key="fraud", lineage="l1", model_version=2, trigger="interval",
...                     created=1718000000.0, offsets={"events": {0: 120}})
>>> key = b"0123456789abcdef"
>>> chunks = encode_snapshot({"weights": [0.5, 1.5]}, meta, key, chunk_bytes=1024)
>>> header, payload = assemble(chunks)
>>> header["offsets"], header["codec"], len(chunks)
({'events': {'0': 120}}, 'pickle+zlib', 1)
>>> decode_snapshot(header, payload, key)
{'weights': [0.5, 1.5]}
>>> decode_snapshot(header, payload, b"another key, long enough")
Traceback (most recent call last):
...
stream_learner.core.snapshot.SnapshotRejected: bad_signature: HMAC does not match header and payload
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import pickle
import re
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_learner.core import pickling
from stream_learner.core.events import LEGACY
from stream_learner.errors import ConfigError, SnapshotError

__all__ = [
    "CODEC",
    "FORMAT_VERSION",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MIN_KEY_BYTES",
    "PICKLE_PROTOCOL",
    "REASONS",
    "Chunk",
    "SigningKey",
    "SnapshotMeta",
    "SnapshotRejected",
    "assemble",
    "check_header",
    "decode_snapshot",
    "encode_pickled",
    "encode_snapshot",
    "join_pieces",
    "load_signing_key",
    "parse_chunk",
    "sign_header",
    "snapshot_identity",
    "verify_signature",
    "verify_snapshot",
]

FORMAT_VERSION = 1
CODEC = "pickle+zlib"
PICKLE_PROTOCOL = pickling.PROTOCOL
ZLIB_LEVEL = 3  # snapshots are taken on the hot path: fast beats small
KEY_ENV = "STREAM_LEARNER_SNAPSHOT_KEY"
KEY_FILE_ENV = "STREAM_LEARNER_SNAPSHOT_KEY_FILE"
MIN_KEY_BYTES = 16
MAX_HEADER_BYTES = 65_536
_SIGNING_CONTEXT = b"stream-learner/snapshot/v1\n"
_NOT_SIGNED = ("signature", "chunk_index")
_SHA256 = re.compile(r"[0-9a-f]{64}")

REASONS = (
    "bad_header",  # not a JSON header, or a field is missing or of the wrong type
    "unknown_format_version",  # written by a newer (or foreign) format
    "unknown_codec",  # payload encoding this reader cannot decode
    "incomplete",  # truncated chunk set, or chunks of different snapshots
    "checksum_mismatch",  # payload size or SHA-256 differ from the header
    "missing_signature",  # a signing key is configured but the snapshot is unsigned
    "bad_signature",  # the HMAC does not match: wrong key or a changed header/payload
    "undecodable",  # verified, yet zlib or unpickling failed (e.g. a class no longer exists)
)


class SnapshotRejected(SnapshotError):
    """A snapshot refused before (or while) decoding; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- signing key


class SigningKey(bytes):
    """Key bytes that never print themselves: safe in reprs, logs and tracebacks."""

    def __repr__(self) -> str:
        return f"SigningKey(<redacted, {len(self)} bytes>)"

    __str__ = __repr__


def load_signing_key(
    env: Mapping[str, str] = os.environ, *, value: str | None = None
) -> SigningKey | None:
    """The HMAC key: ``value`` if given, else ``$STREAM_LEARNER_SNAPSHOT_KEY`` (the key
    itself), else the file named by ``$STREAM_LEARNER_SNAPSHOT_KEY_FILE`` (surrounding
    whitespace stripped). ``None`` when none is set: snapshots are then unsigned.

    Blank values count as unset. Errors name where the key came from, never the key.
    """
    if value is not None and value.strip():
        return _checked(value.encode(), "snapshot signing key")
    direct = env.get(KEY_ENV, "").strip()
    path = env.get(KEY_FILE_ENV, "").strip()
    if direct and path:
        raise ConfigError(f"{KEY_ENV} and {KEY_FILE_ENV}: set only one of them")
    if direct:
        return _checked(direct.encode(), KEY_ENV)
    if path:
        try:
            raw = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{KEY_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
        return _checked(raw, f"{KEY_FILE_ENV} ({path})")
    return None


def _checked(raw: bytes, source: str) -> SigningKey:
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{source}: a signing key needs at least {MIN_KEY_BYTES} bytes, got {len(raw)}"
        )
    return SigningKey(raw)


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class SnapshotMeta:
    """What the service knows about a state when it snapshots it.

    ``offsets`` maps input topic → partition → next offset to read. ``created`` defaults
    to now. ``extra`` is free JSON for the service (e.g. ``{"rollback_of": 3}``).
    """

    key: str
    lineage: str
    model_version: int
    trigger: str
    decision: str | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    offsets: Mapping[str, Mapping[int | str, int]] = field(default_factory=dict)
    created: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a snapshot: the full header (with ``chunk_index``) and a payload slice."""

    header: dict[str, Any]
    payload: bytes

    def to_bytes(self) -> bytes:
        """The record value: header JSON, a newline, the raw payload slice.

        JSON never contains a raw newline, so the first one ends the header.
        """
        return orjson.dumps(self.header) + b"\n" + self.payload


def encode_snapshot(
    state: object, meta: SnapshotMeta, signing_key: bytes | None, *, chunk_bytes: int
) -> list[Chunk]:
    """Pickle, compress, checksum and sign ``state``; split it into chunks whose payload
    slices are at most ``chunk_bytes`` each."""
    try:
        pickled = pickling.dumps(state, PICKLE_PROTOCOL)
    except Exception as exc:  # a lambda, lock or open file somewhere in the state
        raise SnapshotError(f"state cannot be pickled: {type(exc).__name__}: {exc}") from None
    return encode_pickled(pickled, meta, signing_key, chunk_bytes=chunk_bytes)


def encode_pickled(
    pickled: bytes, meta: SnapshotMeta, signing_key: bytes | None, *, chunk_bytes: int
) -> list[Chunk]:
    """:func:`encode_snapshot` of a state pickled already (:func:`pickling.dumps` with
    :data:`PICKLE_PROTOCOL`): for a caller that held the pickle a while before publishing
    it (an evicted key's state in the cache)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    payload = zlib.compress(pickled, ZLIB_LEVEL)
    count = max(1, -(-len(payload) // chunk_bytes))
    header = _normalised(
        {
            "format_version": FORMAT_VERSION,
            "key": meta.key,
            "lineage": meta.lineage,
            "model_version": int(meta.model_version),
            "created": float(time.time() if meta.created is None else meta.created),
            "trigger": meta.trigger,
            "decision": meta.decision,
            "metrics": {str(k): _number(v) for k, v in meta.metrics.items()},
            "offsets": {
                str(topic): {str(int(p)): int(o) for p, o in parts.items()}
                for topic, parts in meta.offsets.items()
            },
            "extra": dict(meta.extra),
            "codec": CODEC,
            "payload_size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "chunk_count": count,
        }
    )
    header["signature"] = sign_header(header, signing_key) if signing_key else None
    view = memoryview(payload)
    return [
        Chunk({**header, "chunk_index": i}, bytes(view[i * chunk_bytes : (i + 1) * chunk_bytes]))
        for i in range(count)
    ]


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _normalised(header: dict[str, Any]) -> dict[str, Any]:
    """The header as a reader will see it (JSON round trip: NaN → null, tuples → lists),
    so that writer and reader sign the very same canonical bytes."""
    try:
        return orjson.loads(orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY))
    except TypeError as exc:
        raise SnapshotError(f"snapshot header is not JSON-serialisable: {exc}") from None


def _canonical(header: Mapping[str, Any]) -> bytes:
    signed = {k: v for k, v in header.items() if k not in _NOT_SIGNED}
    return _SIGNING_CONTEXT + orjson.dumps(signed, option=orjson.OPT_SORT_KEYS)


def sign_header(header: Mapping[str, Any], signing_key: bytes) -> str:
    """HMAC-SHA256 (hex) of the canonical header, which includes the payload's SHA-256."""
    return hmac.new(signing_key, _canonical(header), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- decoding

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "lineage": str,
    "model_version": int,
    "created": (int, float, str),
    "trigger": str,
    "metrics": dict,
    "offsets": dict,
    "payload_size": int,
    "sha256": str,
    "chunk_count": int,
}


def check_header(header: object) -> dict[str, Any]:
    """Refuse a header this reader cannot trust to describe a payload it can decode."""
    if not isinstance(header, dict):
        raise SnapshotRejected("bad_header", "a snapshot header is a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise SnapshotRejected(
            "unknown_format_version", f"format_version {version!r}; this reader knows 1"
        )
    if header.get("codec") != CODEC:
        raise SnapshotRejected(
            "unknown_codec", f"codec {header.get('codec')!r}; this reader knows {CODEC!r}"
        )
    for name, kind in _REQUIRED.items():
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SnapshotRejected("bad_header", f"{name}: missing or of the wrong type")
    if not _SHA256.fullmatch(header["sha256"]):
        raise SnapshotRejected("bad_header", "sha256: expected 64 lowercase hex digits")
    if header["chunk_count"] < 1 or header["payload_size"] < 0:
        raise SnapshotRejected("bad_header", "chunk_count or payload_size out of range")
    index = header.get("chunk_index")
    if index is not None and (type(index) is not int or not 0 <= index < header["chunk_count"]):
        raise SnapshotRejected("bad_header", f"chunk_index {index!r} out of range")
    return header


def parse_chunk(raw: bytes) -> Chunk:
    """The inverse of :meth:`Chunk.to_bytes`; the header is checked, the payload is not."""
    end = raw.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise SnapshotRejected("bad_header", "no header line in the chunk record")
    try:
        header = orjson.loads(raw[:end])
    except orjson.JSONDecodeError as exc:
        raise SnapshotRejected("bad_header", f"header is not JSON: {exc}") from None
    header = check_header(header)
    if "chunk_index" not in header:
        raise SnapshotRejected("bad_header", "chunk_index: missing")
    return Chunk(header, raw[end + 1 :])


def snapshot_identity(header: Mapping[str, Any]) -> tuple:
    """What the chunks of one snapshot share: (key, model version, SHA-256, chunk count)."""
    return header["key"], header["model_version"], header["sha256"], header["chunk_count"]


def assemble(chunks: Iterable[Chunk]) -> tuple[dict[str, Any], bytes]:
    """Join the chunks of one snapshot (same key, version, SHA-256 and count) in order.

    Returns the header (without ``chunk_index``) and the whole payload. A missing,
    duplicated or foreign chunk is refused as ``incomplete``: a truncated set must never
    be mistaken for a smaller snapshot.
    """
    chunks = list(chunks)
    headers = [check_header(chunk.header) for chunk in chunks]
    payload = join_pieces(
        (snapshot_identity(h), h.get("chunk_index"), c.payload)
        for h, c in zip(headers, chunks, strict=True)
    )
    first = next(h for h in headers if h.get("chunk_index") == 0)
    return {k: v for k, v in first.items() if k != "chunk_index"}, payload


def join_pieces(pieces: Iterable[tuple[tuple, int | None, bytes]]) -> bytes:
    """The payload of one snapshot from its pieces, ``(identity, chunk_index, payload
    slice)`` in any order, where ``identity`` is (key, model version, SHA-256, chunk
    count) as each chunk's header says. A missing, repeated or foreign piece is refused
    as ``incomplete`` (see :func:`assemble`)."""
    by_index: dict[int, bytes] = {}
    identity = None
    for ident, index, payload in pieces:
        if identity is None:
            identity = ident
        elif ident != identity:
            raise SnapshotRejected("incomplete", "chunks of different snapshots were mixed")
        if index is None or index in by_index:
            raise SnapshotRejected("incomplete", f"chunk {index!r} missing an index or repeated")
        by_index[index] = payload
    if identity is None:
        raise SnapshotRejected("incomplete", "no chunks")
    count = identity[3]
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise SnapshotRejected(
            "incomplete", f"{len(missing)} of {count} chunks missing (first: {missing[0]})"
        )
    return b"".join(by_index[i] for i in range(count))


def verify_signature(header: Mapping[str, Any], signing_key: bytes) -> None:
    """Refuse a header that is unsigned or whose HMAC does not match ``signing_key``."""
    signature = header.get("signature")
    if signature is None:
        raise SnapshotRejected("missing_signature", "a signing key is set; this is unsigned")
    expected = sign_header(header, signing_key)
    if not (
        isinstance(signature, str)
        and signature.isascii()
        and hmac.compare_digest(signature, expected)
    ):
        raise SnapshotRejected("bad_signature", "HMAC does not match header and payload")


def verify_snapshot(header: Mapping[str, Any], payload: bytes, signing_key: bytes | None) -> None:
    """Check format, signature (when a key is configured), size and SHA-256; unpickle nothing.

    A signed snapshot read without a key is checked by checksum only.
    """
    check_header(dict(header))
    if signing_key:
        verify_signature(header, signing_key)
    if len(payload) != header["payload_size"]:
        raise SnapshotRejected(
            "checksum_mismatch",
            f"payload is {len(payload)} bytes, header says {header['payload_size']}",
        )
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), header["sha256"]):
        raise SnapshotRejected("checksum_mismatch", "payload SHA-256 differs from the header")


def decode_snapshot(header: Mapping[str, Any], payload: bytes, signing_key: bytes | None) -> object:
    """Verify (see :func:`verify_snapshot`), then decompress and unpickle the state."""
    verify_snapshot(header, payload, signing_key)
    try:
        raw = zlib.decompress(payload)
        try:
            return pickle.loads(raw)
        except pickle.UnpicklingError:
            return _Legacy(io.BytesIO(raw)).load()  # written by an older stream-learner
    except Exception as exc:  # any failure of a verified payload: report, never crash the caller
        raise SnapshotRejected("undecodable", f"{type(exc).__name__}: {exc}") from None


class _Legacy(pickle.Unpickler):
    """Reads snapshots whose pickles name classes as an older release made them: an
    ``Event`` or a ``Label`` pickled while it was a dataclass (a bare object, then its
    fields), which the struct it is now cannot be made from. Only tried when the standard
    load fails."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "stream_learner.core.events" and name in LEGACY:
            return LEGACY[name]
        return super().find_class(module, name)

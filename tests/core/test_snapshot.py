"""The snapshot format: round trip, chunking, and every refusal happening before unpickling."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from stream_learner.core.events import Event, Label
from stream_learner.core.snapshot import (
    CODEC,
    FORMAT_VERSION,
    KEY_ENV,
    KEY_FILE_ENV,
    REASONS,
    Chunk,
    SnapshotMeta,
    SnapshotRejected,
    assemble,
    decode_snapshot,
    encode_snapshot,
    load_signing_key,
    parse_chunk,
    sign_header,
)
from stream_learner.errors import ConfigError, SnapshotError

SCHEMA = Path(__file__).resolve().parents[2] / "topics" / "schemas" / "checkpoint.schema.json"
KEY = b"s3cret-signing-key-0123456789"
OTHER_KEY = b"another-signing-key-9876543210"

# Unpickling a Tripwire appends to this list: proof of whether anything was unpickled.
UNPICKLED: list[str] = []


def _trip(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Tripwire:
    def __reduce__(self):
        return (_trip, ("unpickled",))


@pytest.fixture(autouse=True)
def _clear_tripwire():
    UNPICKLED.clear()
    yield
    UNPICKLED.clear()


def _meta(**changes) -> SnapshotMeta:
    fields = {
        "key": "fraud",
        "lineage": "fraud-hat-7c1e",
        "model_version": 3,
        "trigger": "performance",
        "decision": "promoted",
        "metrics": {"accuracy": 0.914, "log_loss": None},
        "offsets": {"stream-learner.events": {0: 1200, 1: 1187}, "stream-learner.labels": {0: 640}},
        "created": 1718000000.25,
        "extra": {"rollback_of": None, "note": "test"},
    }
    fields.update(changes)
    return SnapshotMeta(**fields)


def _state() -> dict:
    rng = random.Random(7)
    return {"weights": [rng.random() for _ in range(2000)], "tripwire": Tripwire(), "n": 12}


def _encode(state=None, signing_key=KEY, chunk_bytes=1_048_576, **meta):
    state = _state() if state is None else state
    return encode_snapshot(state, _meta(**meta), signing_key, chunk_bytes=chunk_bytes)


def _rejected(header, payload, key=KEY) -> str:
    with pytest.raises(SnapshotRejected) as exc:
        decode_snapshot(header, payload, key)
    assert exc.value.reason in REASONS
    assert isinstance(exc.value, SnapshotError)
    assert str(exc.value).startswith(exc.value.reason + ": ")
    return exc.value.reason


# --------------------------------------------------------------------------- round trip


def test_round_trip_restores_the_state_and_the_header_says_what_it_is():
    chunks = _encode()
    assert len(chunks) == 1
    header, payload = assemble(chunks)
    assert UNPICKLED == []
    state = decode_snapshot(header, payload, KEY)
    assert UNPICKLED == ["unpickled"]  # the tripwire works: honest payloads are unpickled
    assert state["weights"] == _state()["weights"] and state["n"] == 12
    assert header["format_version"] == FORMAT_VERSION and header["codec"] == CODEC
    assert header["key"] == "fraud" and header["model_version"] == 3
    assert header["trigger"] == "performance" and header["decision"] == "promoted"
    assert header["offsets"] == {
        "stream-learner.events": {"0": 1200, "1": 1187},
        "stream-learner.labels": {"0": 640},
    }
    assert header["extra"] == {"rollback_of": None, "note": "test"}
    assert header["payload_size"] == len(payload) and len(header["signature"]) == 64
    assert "chunk_index" not in header


def test_chunks_stay_under_chunk_bytes_and_reassemble_in_any_order():
    state = {"blob": np.random.default_rng(1).bytes(50_000)}  # incompressible
    chunks = _encode(state, chunk_bytes=4096)
    assert len(chunks) == 13  # 50 kB of random bytes + pickle framing, 4 kB per chunk
    assert all(len(c.payload) <= 4096 for c in chunks)
    assert [c.header["chunk_index"] for c in chunks] == list(range(13))
    assert {c.header["chunk_count"] for c in chunks} == {13}
    shuffled = [parse_chunk(c.to_bytes()) for c in chunks]
    random.Random(3).shuffle(shuffled)
    header, payload = assemble(shuffled)
    assert decode_snapshot(header, payload, KEY) == state


def test_headers_follow_the_published_schema():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    chunks = _encode(metrics={"accuracy": float("nan"), "mae": np.float64(0.5)})
    header, payload = assemble(chunks)
    for doc in (chunks[0].header, header):
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors
    assert header["metrics"] == {"accuracy": None, "mae": 0.5}  # NaN → null, still verifies
    decode_snapshot(header, payload, KEY)


def test_an_unsigned_snapshot_round_trips_without_a_key():
    header, payload = assemble(_encode(signing_key=None))
    assert header["signature"] is None
    assert decode_snapshot(header, payload, None)["n"] == 12


def test_a_signed_snapshot_read_without_a_key_is_checked_by_checksum_only():
    header, payload = assemble(_encode())
    assert decode_snapshot(header, payload, None)["n"] == 12
    assert _rejected(header, payload[:-1] + bytes([payload[-1] ^ 1]), None) == "checksum_mismatch"


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_version", 4),
        ("offsets", {"stream-learner.events": {"0": 99999, "1": 1187}}),
        ("key", "other"),
        ("lineage", "other-lineage"),
        ("metrics", {"accuracy": 0.999, "log_loss": None}),
        ("trigger", "manual"),
        ("created", 1.0),
        ("extra", {"rollback_of": 1}),
        ("chunk_count", 2),
    ],
)
def test_changing_any_signed_header_field_is_refused(field, value):
    header, payload = assemble(_encode())
    assert _rejected({**header, field: value}, payload) == "bad_signature"
    assert UNPICKLED == []


@pytest.mark.parametrize("key", [KEY, None])
def test_one_flipped_payload_byte_is_refused_without_unpickling(key):
    header, payload = assemble(_encode(signing_key=key))
    for position in (0, len(payload) // 2, len(payload) - 1):
        tampered = bytearray(payload)
        tampered[position] ^= 0x01
        assert _rejected(header, bytes(tampered), key) == "checksum_mismatch"
    assert UNPICKLED == []


@pytest.mark.parametrize("key", [KEY, None])
def test_a_substituted_payload_that_would_run_code_is_never_unpickled(key):
    # The attacker's payload is a perfectly decodable snapshot: unpickling it trips the wire.
    header, _ = assemble(_encode({"benign": True}, signing_key=key))
    _, evil = assemble(_encode({"evil": Tripwire()}, signing_key=key))
    assert _rejected(header, evil, key) == "checksum_mismatch"
    # ... even with the checksum fields rewritten to match: only the signature stops that.
    evil_header, _ = assemble(_encode({"evil": Tripwire()}, signing_key=key))
    forged = {**header, "sha256": evil_header["sha256"], "payload_size": len(evil)}
    if key is not None:
        assert _rejected(forged, evil, key) == "bad_signature"
    assert UNPICKLED == []
    decode_snapshot(forged, evil, None)  # control: without a key that forgery is accepted
    assert UNPICKLED == ["unpickled"]


def test_a_wrong_key_is_refused():
    header, payload = assemble(_encode())
    assert _rejected(header, payload, OTHER_KEY) == "bad_signature"
    assert _rejected({**header, "signature": "é" * 64}, payload) == "bad_signature"
    assert _rejected({**header, "signature": 12}, payload) == "bad_signature"
    assert UNPICKLED == []


def test_a_missing_signature_is_refused_when_a_key_is_configured():
    header, payload = assemble(_encode(signing_key=None))
    assert _rejected(header, payload, KEY) == "missing_signature"
    signed, _ = assemble(_encode())
    assert _rejected({**signed, "signature": None}, payload, KEY) == "missing_signature"
    assert UNPICKLED == []


def test_truncated_mixed_or_repeated_chunk_sets_are_refused():
    chunks = _encode({"blob": np.random.default_rng(2).bytes(20_000)}, chunk_bytes=4096)
    assert len(chunks) == 5
    for broken in (chunks[:-1], chunks[1:], chunks[:2] + chunks[3:], []):
        with pytest.raises(SnapshotRejected) as exc:
            assemble(broken)
        assert exc.value.reason == "incomplete"
    other = _encode({"blob": np.random.default_rng(3).bytes(20_000)}, chunk_bytes=4096)
    for broken in (chunks[:2] + other[2:], chunks + [chunks[1]]):
        with pytest.raises(SnapshotRejected) as exc:
            assemble(broken)
        assert exc.value.reason == "incomplete"
    # A truncated payload (as if the last chunk were lost but the count ignored) fails too.
    header, payload = assemble(chunks)
    assert _rejected(header, payload[:-4096]) == "checksum_mismatch"


def test_unknown_format_version_and_codec_are_refused():
    header, payload = assemble(_encode())
    for version in (2, 0, "1", None):
        assert _rejected({**header, "format_version": version}, payload) == "unknown_format_version"
    assert _rejected({**header, "codec": "pickle+zstd"}, payload) == "unknown_codec"
    assert _rejected({k: v for k, v in header.items() if k != "codec"}, payload) == "unknown_codec"
    assert _rejected({**header, "sha256": "ABC"}, payload) == "bad_header"
    assert _rejected({**header, "model_version": True}, payload) == "bad_header"
    assert _rejected({**header, "payload_size": None}, payload) == "bad_header"
    assert UNPICKLED == []


def test_garbage_chunk_records_are_bad_headers():
    good = _encode()[0].to_bytes()
    for raw in (b"", b"no newline at all", b"[1, 2]\nxx", b"{not json\nxx", good[1:]):
        with pytest.raises(SnapshotRejected) as exc:
            parse_chunk(raw)
        assert exc.value.reason == "bad_header"
    header = {k: v for k, v in _encode()[0].header.items() if k != "chunk_index"}
    with pytest.raises(SnapshotRejected, match="chunk_index"):
        parse_chunk(Chunk(header, b"x").to_bytes())
    with pytest.raises(SnapshotRejected, match="out of range"):
        parse_chunk(Chunk({**header, "chunk_index": 1}, b"x").to_bytes())


def test_a_verified_payload_that_cannot_be_unpickled_is_undecodable():
    header, _ = assemble(_encode())
    payload = zlib.compress(b"definitely not a pickle")
    forged = {**header, "payload_size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    forged["signature"] = sign_header(forged, KEY)  # a legitimate writer, an unreadable state
    assert _rejected(forged, payload) == "undecodable"


# What the release before events became msgspec structs (cdb5cc9) pickled for two events:
# a frozen dataclass pickles as a bare object, then its field values.
_DATACLASS_EVENTS = bytes.fromhex(
    "80059589000000000000005d94288c1a73747265616d5f6c6561726e65722e636f72652e6576656e7473"
    "948c054576656e749493942981945d94288c026531948c056672617564947d94288c06616d6f756e7494"
    "4740290000000000008c0463697479948c044c796f6e947588473ff8000000000000656268032981945d"
    "94288c0265329468077d9468094b03734e4e6562652e"
)


# ... and for two labels (parked by a joiner), by the release before labels became structs.
_DATACLASS_LABELS = bytes.fromhex(
    "8005955f000000000000005d94288c1a73747265616d5f6c6561726e65722e636f72652e6576656e7473"
    "948c054c6162656c9493942981945d94288c026531948c0566726175649488473ff80000000000006562"
    "68032981945d94288c0265329468074b004e6562652e"
)


def _signed(pickled: bytes) -> tuple[dict, bytes]:
    header, _ = assemble(_encode())
    payload = zlib.compress(pickled)
    signed = {**header, "payload_size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    signed["signature"] = sign_header(signed, KEY)
    return signed, payload


@pytest.mark.parametrize(
    ("pickled", "expected"),
    [
        (
            _DATACLASS_EVENTS,
            [
                Event("e1", "fraud", {"amount": 12.5, "city": "Lyon"}, True, 1.5),
                Event("e2", "fraud", {"amount": 3}),
            ],
        ),
        (_DATACLASS_LABELS, [Label("e1", "fraud", True, 1.5), Label("e2", "fraud", 0)]),
    ],
)
def test_a_snapshot_holding_events_or_labels_pickled_as_dataclasses_still_decodes(
    pickled, expected
):
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(pickled)  # a struct cannot be made bare: the fallback is needed
    state = decode_snapshot(*_signed(pickled), KEY)
    assert state == expected
    assert all(type(got) is type(want) for got, want in zip(state, expected, strict=True))
    assert pickle.loads(pickle.dumps(state)) == state  # and they pickle as structs from now on


def test_unserialisable_metadata_or_state_is_an_error_at_encode_time():
    with pytest.raises(SnapshotError, match="not JSON-serialisable"):
        _encode(extra={"when": object()})
    with pytest.raises(SnapshotError, match="state cannot be pickled"):
        _encode({"f": lambda x: x})


# --------------------------------------------------------------------------- signing key


def test_the_key_comes_from_the_value_the_environment_or_a_file(tmp_path):
    assert load_signing_key({}) is None
    assert load_signing_key({KEY_ENV: "  ", KEY_FILE_ENV: ""}) is None
    assert load_signing_key({KEY_ENV: KEY.decode()}) == KEY
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert load_signing_key({KEY_FILE_ENV: str(path)}) == KEY
    assert load_signing_key({KEY_ENV: "x"}, value=OTHER_KEY.decode()) == OTHER_KEY


def test_bad_key_settings_are_config_errors_naming_the_source(tmp_path):
    cases = [
        ({KEY_ENV: "short-key"}, KEY_ENV, "at least 16 bytes, got 9"),
        ({KEY_ENV: KEY.decode(), KEY_FILE_ENV: "/x"}, KEY_FILE_ENV, "set only one"),
        ({KEY_FILE_ENV: str(tmp_path / "missing")}, KEY_FILE_ENV, "cannot read"),
    ]
    for env, name, message in cases:
        with pytest.raises(ConfigError) as exc:
            load_signing_key(env)
        assert name in str(exc.value) and message in str(exc.value)
    (tmp_path / "short").write_text("tiny-key\n")
    with pytest.raises(ConfigError, match="at least 16 bytes, got 8"):
        load_signing_key({KEY_FILE_ENV: str(tmp_path / "short")})


def test_the_key_never_appears_in_reprs_messages_or_headers():
    secret = "do-not-print-this-key-0123"
    key = load_signing_key({KEY_ENV: secret})
    assert key == secret.encode()
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"k": key})):
        assert secret not in text and "redacted" in text
    with pytest.raises(ConfigError) as exc:
        load_signing_key({KEY_ENV: secret[:10]})
    assert secret[:10] not in str(exc.value)
    chunks = _encode(signing_key=key)
    assert secret.encode() not in chunks[0].to_bytes()
    header, payload = assemble(chunks)
    with pytest.raises(SnapshotRejected) as rejected:
        decode_snapshot({**header, "model_version": 9}, payload, key)
    assert secret not in str(rejected.value) and secret not in repr(rejected.value)

"""The event contract: what an input message may contain, and how it is decoded.

One Kafka message is one JSON object. An *event* carries features::

    {"id": "e1", "key": "fraud", "ts": "2024-05-01T12:00:00Z", "x": {"amount": 12.5}, "y": true}

``y`` present and not null means the event is labelled (the learner predicts, scores, then
learns); without ``y`` it is a prediction request. A *label* arriving later for an earlier
event has no ``x``::

    {"id": "e1", "y": true}

Decisions worth knowing:

- ``key`` selects the model; a missing or null key means :data:`DEFAULT_KEY`.
- ``ts`` is optional: epoch seconds (number) or an ISO-8601 string; it is normalised to epoch
  seconds. An ISO string without a time zone is read as UTC, so replays are reproducible on any
  machine.
- Unknown top-level fields are ignored, so producers may add fields before consumers know them.
- A feature whose value is ``null`` is dropped: River models treat an absent feature as missing.
- Integers are kept as ``int`` (River takes them as numbers) to avoid a copy per feature.
- An event is bounded besides its bytes: at most ``max_features`` features (default
  :data:`MAX_FEATURES`, after nulls are dropped) with names of at most ``max_name_chars``
  characters (:data:`MAX_FEATURE_NAME_CHARS`). Far above what a model learns well from one
  event, far below what would let one message grow a model by megabytes; what a key gathers
  over many events is the learner's bound (``learner.max_feature_names``).

Every rejection raises :class:`~stream_learner.errors.DecodeError` with one of :data:`REASONS`
as its ``reason``; the runtime copies it into the dead-letter headers, so the set is closed.

This is the hot path of the service, so a message is decoded twice over only when it is bad:
msgspec checks the common, valid shape in one C pass (about 0.4 us against 2 us for parsing
with orjson and checking in Python), and whatever it refuses goes to the precise path
(orjson, then straight-line checks), which accepts it after all (a null feature to drop, an
integer wider than 64 bits read as a float) or names the reason. The one difference: numbers
inside unknown fields, which are skipped unread, may be out of a double's range there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson

from stream_learner.core.commands import ALL_KEYS, Command, decode_command
from stream_learner.errors import ConfigError, DecodeError

__all__ = [
    "DEFAULT_KEY",
    "MAX_EVENT_BYTES",
    "MAX_FEATURES",
    "MAX_FEATURE_NAME_CHARS",
    "MAX_ID_CHARS",
    "MAX_KEY_CHARS",
    "REASONS",
    "TASKS",
    "Event",
    "Label",
    "RecordDecoder",
    "check_label",
    "decode",
    "decode_event",
    "decode_label",
]

DEFAULT_KEY = "default"
MAX_EVENT_BYTES = 1_048_576
MAX_ID_CHARS = 512
MAX_KEY_CHARS = 128
MAX_FEATURES = 10_000
MAX_FEATURE_NAME_CHARS = 256

TASKS = ("binary", "multiclass", "regression")

#: Every ``DecodeError.reason`` this module raises (a closed set: dashboards and dead-letter
#: consumers switch on it).
REASONS = (
    "payload_too_large",  # the raw message exceeds max_bytes (checked before parsing)
    "not_json",  # not valid UTF-8 JSON (includes NaN/Infinity literals)
    "not_object",  # valid JSON, but not an object
    "missing_id",  # no "id", or "id" is null
    "bad_id",  # "id" is not a non-empty string of at most MAX_ID_CHARS characters
    "bad_key",  # "key" is not a non-empty printable string of at most MAX_KEY_CHARS characters
    "bad_ts",  # "ts" is neither a finite number nor an ISO-8601 string
    "missing_x",  # an event without "x" (or a message that is neither event nor label)
    "x_not_object",  # "x" is not an object
    "bad_feature",  # a feature value that is not a number, string, bool or null
    "too_many_features",  # more than max_features features (nulls aside)
    "feature_name_too_long",  # a feature name of more than max_name_chars characters
    "non_finite",  # a number too large for a double (1e999), or a non-finite float
    "missing_y",  # a label message without "y" (or with "y": null)
    "bad_label",  # "y" of an unusable type, or of a type that does not fit the task
)


# The shapes msgspec accepts on the fast path. Integers are bounded to int64: orjson reads a
# wider one as a float (or, up to 2**64, as an int), and the precise path has the last word.
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Value = float | _Int | str | bool
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
# Feature names are plain str: msgspec then hands out one cached string per name (up to 32
# characters) rather than a new one per message, so every dict lookup of the name in the
# model and its detectors finds its hash made and the key itself (1 us of ~18 per event,
# scaler+LR on three features). A constraint on the names would turn that cache off: their
# length is checked by the event path (_message_path) instead.
_X = Annotated[dict[str, _Value], msgspec.Meta(max_length=MAX_FEATURES)]


class Event(msgspec.Struct, frozen=True, gc=False):
    """One decoded input event; ``y`` is ``None`` for a prediction request.

    A msgspec struct, so that a message decodes straight into it in one C pass (a second
    object, filled field by field, cost more than the parse). The annotations are therefore
    the message's shapes: the decoder turns an int or ISO ``ts`` into float seconds and
    refuses an event without ``x`` (the default only lets msgspec pass it to the precise
    path), so a decoded event has a ``key``, an ``x`` and a float or no ``ts``. Not tracked
    by the garbage collector: it refers to its features, never back to itself.
    """

    id: _Id
    key: _Key = DEFAULT_KEY
    x: _X = None  # type: ignore[assignment]  # see above: never None once decoded
    y: _Value | None = None
    ts: float | _Int | str | None = None

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def __setstate__(self, state: list) -> None:
        _fill(self, state)


class Label(msgspec.Struct, frozen=True, gc=False):
    """A label that arrives after its event; joined to the event by ``id``.

    A msgspec struct, like :class:`Event` and for the same reason: a label message decodes
    straight into it. ``y``'s default only lets msgspec pass a message without one to the
    precise path, which refuses it (``missing_y``): a decoded label has a ``y``.
    """

    id: _Id
    key: _Key = DEFAULT_KEY
    y: _Value = None  # type: ignore[assignment]  # see above: never None once decoded
    ts: float | _Int | str | None = None

    def __setstate__(self, state: list) -> None:
        _fill(self, state)


# The decoder fills a new message's key and time in place (nobody else holds it yet).
_force_setattr = msgspec.structs.force_setattr


def _fill(struct: Any, state: list) -> None:
    # Snapshots written while Event and Label were frozen dataclasses pickled each as a
    # bare object and then its field values; decode_snapshot rebuilds those through LEGACY.
    for name, value in zip(struct.__struct_fields__, state, strict=True):
        _force_setattr(struct, name, value)


def _pickled_before(struct: type) -> type:
    """``struct`` as an old snapshot names it: a dataclass pickle makes a bare object, then
    sets its fields (``__setstate__``); a struct cannot be made bare, so this hands over
    one with a placeholder id for the fields to fill. Calling it makes a ``struct``."""

    def __new__(cls: type, *fields: Any) -> Any:
        return struct(*fields) if fields else struct("-")

    return type(f"Legacy{struct.__name__}", (), {"__new__": __new__})


#: The classes an older release pickled as frozen dataclasses, by name, as they load now.
LEGACY = {cls.__name__: _pickled_before(cls) for cls in (Event, Label)}


def _type_name(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def _parse(raw: bytes, max_bytes: int) -> dict:
    if len(raw) > max_bytes:
        raise DecodeError("payload_too_large", f"{len(raw)} bytes; the limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        # orjson refuses numbers that overflow a double; name that precisely.
        if "infinity" in str(e):
            raise DecodeError("non_finite", f"a number is too large for a double: {e}") from None
        raise DecodeError("not_json", str(e)) from None
    if type(obj) is not dict:
        raise DecodeError("not_object", f"the message is {_type_name(obj)}; expected an object")
    return obj


def _id(obj: dict) -> str:
    id_ = obj.get("id")
    if type(id_) is str and 0 < len(id_) <= MAX_ID_CHARS:
        return id_
    if id_ is None:
        raise DecodeError("missing_id", "the message has no 'id'")
    if type(id_) is str:
        raise DecodeError("bad_id", f"id: length {len(id_)}; expected 1 to {MAX_ID_CHARS}")
    raise DecodeError("bad_id", f"id: value is {_type_name(id_)}; expected a string")


def _key(obj: dict) -> str:
    key = obj.get("key")
    if key is None:
        return DEFAULT_KEY
    if type(key) is str and 0 < len(key) <= MAX_KEY_CHARS and key.isprintable():
        return key
    if type(key) is not str:
        raise DecodeError("bad_key", f"key: value is {_type_name(key)}; expected a string")
    raise DecodeError(
        "bad_key", f"key: {key[:40]!r} must be 1 to {MAX_KEY_CHARS} printable characters"
    )


def _ts(obj: dict) -> float | None:
    ts = obj.get("ts")
    if ts is None:
        return None
    t = type(ts)
    if t is float or t is int:
        if math.isfinite(ts):
            return float(ts)
        raise DecodeError("bad_ts", f"ts: {ts} is not finite")
    if t is str:
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            raise DecodeError("bad_ts", f"ts: {ts[:40]!r} is not an ISO-8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise DecodeError(
        "bad_ts", f"ts: value is {_type_name(ts)}; expected epoch seconds or an ISO-8601 string"
    )


def _y(y: object) -> float | int | str | bool:
    t = type(y)
    if t is str or t is bool or t is int:
        return y  # type: ignore[return-value]
    if t is float:
        if math.isfinite(y):  # type: ignore[arg-type]
            return y  # type: ignore[return-value]
        raise DecodeError("non_finite", f"y: {y} is not finite")
    raise DecodeError("bad_label", f"y: value is {_type_name(y)}; expected number, string or bool")


_PLAIN_TYPES = frozenset((float, int, str, bool))


def _probe_orjson_infinity() -> bool:
    """True if this orjson turns 1e999 into inf instead of refusing it (older versions)."""
    try:
        orjson.loads(b"1e999")
    except orjson.JSONDecodeError:
        return False
    return True


_CHECK_FINITE = _probe_orjson_infinity()


def _x(
    obj: dict, max_features: int = MAX_FEATURES, max_name: int = MAX_FEATURE_NAME_CHARS
) -> dict[str, float | str | bool]:
    """Validate ``x`` precisely; the fast path in :func:`_event` only calls this when the
    quick checks fail, so it also owns the error messages."""
    x = obj.get("x")
    if type(x) is not dict:
        if x is None:
            raise DecodeError("missing_x", "the event has no 'x'")
        raise DecodeError("x_not_object", f"x: value is {_type_name(x)}; expected an object")
    nulls = []
    for name, v in x.items():
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                raise DecodeError("non_finite", f"x.{name[:80]}: {v} is not finite")
        elif v is None:
            nulls.append(name)
        elif t is not str and t is not int and t is not bool:
            raise DecodeError(
                "bad_feature",
                f"x.{name[:80]}: value is {_type_name(v)}; expected number, string or bool",
            )
    for name in nulls:
        del x[name]
    if len(x) > max_features:
        raise DecodeError("too_many_features", f"x: {len(x)} features; the limit is {max_features}")
    for name in x:
        if len(name) > max_name:
            raise DecodeError(
                "feature_name_too_long",
                f"x: the name {name[:40]!r}... has {len(name)} characters; the limit is {max_name}",
            )
    return x


def _long_name(x: dict, max_name: int) -> bool:
    return max(map(len, x), default=0) > max_name  # C loops: no generator frame per name


def _event(
    obj: dict, max_features: int = MAX_FEATURES, max_name: int = MAX_FEATURE_NAME_CHARS
) -> Event:
    # Fast path: straight-line checks of the common case; any doubt goes to the precise
    # helpers, which either accept the value or raise the right DecodeError.
    id_ = obj.get("id")
    if type(id_) is not str or not 0 < len(id_) <= MAX_ID_CHARS:
        id_ = _id(obj)
    key = obj.get("key")
    if key is None:
        key = DEFAULT_KEY
    elif type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS or not key.isprintable():
        key = _key(obj)
    ts = obj.get("ts")
    if ts is not None:
        if type(ts) is int:
            ts = float(ts)  # orjson's ints fit in 64 bits: this cannot overflow
        elif type(ts) is not float or _CHECK_FINITE:
            ts = _ts(obj)
    x = obj.get("x")
    if (
        type(x) is not dict
        or not _PLAIN_TYPES.issuperset(map(type, x.values()))
        or (_CHECK_FINITE and not all(map(math.isfinite, _floats(x))))
        or len(x) > max_features
        or _long_name(x, max_name)
    ):
        x = _x(obj, max_features, max_name)
    y = obj.get("y")
    if y is not None:
        y = _y(y)
    return Event(id_, key, x, y, ts)


_decode_event = msgspec.json.Decoder(Event).decode
_decode_label = msgspec.json.Decoder(Label).decode


@functools.cache
def _wire_event_decoder(max_features: int) -> Callable[[bytes], Event]:
    """msgspec's decoder of events of at most ``max_features`` features (one per bound).
    Event's own annotation holds the default bound; under another, an event beyond it is
    the precise path's to judge (refused here, or past a looser bound refused by msgspec)."""
    if max_features == MAX_FEATURES:
        return _decode_event

    def decode(raw: bytes) -> Event:
        event = _decode_event(raw)
        if event.x is not None and len(event.x) > max_features:
            raise msgspec.ValidationError("beyond the decoder's bound")
        return event

    return decode


# Malformed JSON and ValidationError alike; msgspec raises RecursionError for nesting deeper
# than it will follow, where orjson refuses the message (not_json).
_Refused = (msgspec.DecodeError, RecursionError)


def _wire_ts(ts: int | str) -> float:
    """An int or ISO ``ts`` in seconds (a float is final: msgspec refuses one out of range)."""
    if type(ts) is int:
        return float(ts)
    return _ts({"ts": ts})


def _message_path(
    max_bytes: int,
    precise: Callable[[dict], Any] = _event,
    decode: Callable[[bytes], Any] = _decode_event,
    route: tuple[dict[bytes, str], Callable[[bytes, str], str]] | None = None,
    max_name: int | None = MAX_FEATURE_NAME_CHARS,
) -> Callable[[bytes | None, bytes | None, int | None], Any]:
    """``message(value, raw_key, timestamp_ms)``: a message's event (or, with
    ``max_name=None``, its label), straight from msgspec when it can; ``precise`` decides
    what msgspec refused or passed without its ``x`` (a label: its ``y``), and an event
    with a feature name longer than ``max_name`` (both paths with the same bounds on
    features). Names are measured only in a message longer than ``max_name`` bytes: a
    shorter one cannot hold such a name. With ``route`` (the decoder's cache of message
    keys and its :meth:`RecordDecoder.key`) the message key routes it. A closure: its
    settings are read as cells, the cheapest reads per message (this is the hot path)."""
    known, key_of = route or ({}, None)
    events = max_name is not None

    def message(value: bytes | None, raw_key: bytes | None, timestamp_ms: int | None) -> Any:
        if value is None:
            raise DecodeError("not_json", "the message has no value (a tombstone)")
        if len(value) > max_bytes:
            raise DecodeError("payload_too_large", f"{len(value)} bytes; the limit is {max_bytes}")
        try:
            ev = decode(value)
        except _Refused:
            ev = precise(_parse(value, max_bytes))
        else:
            if events:
                x = ev.x
                if x is None or (len(value) > max_name and _long_name(x, max_name)):
                    ev = None  # the precise path's to judge
            elif ev.y is None:
                ev = None
            if ev is None:
                ev = precise(_parse(value, max_bytes))
            else:
                declared = ev.key
                if declared is not DEFAULT_KEY and not declared.isprintable():
                    _key({"key": declared})  # raises bad_key
                ts = ev.ts
                if ts is not None and type(ts) is not float:
                    _force_setattr(ev, "ts", _wire_ts(ts))
        if raw_key is not None:
            declared = ev.key
            key = known.get(raw_key)  # the common case: cached, and equal to the declared
            if key is not declared:
                if key is None or (key != declared and declared != DEFAULT_KEY):
                    key = key_of(raw_key, declared)  # not cached yet, or a mismatch to report
                # The cached string, even when equal: the batch's and the processor's dicts
                # and sets then find their keys by identity, hashed once.
                _force_setattr(ev, "key", key)
        if timestamp_ms is not None and ev.ts is None:
            _force_setattr(ev, "ts", timestamp_ms / 1000.0)
        return ev

    return message


class RecordDecoder:
    """Messages as Kafka delivers them (value bytes, message key, producer timestamp) as the
    core's inputs: one set of rules for the service and for a replay of its topics.

    - The message key routes: an event's own ``key`` may only repeat it or be absent
      (``key_mismatch``); a key that is not UTF-8 is ``bad_key``; a message without a
      value (a tombstone) is ``not_json``.
    - Event time is the producer's timestamp when the message carries no ``ts``, so label
      joins and time-based triggers run on one clock, live and in replays.

    The objects are decoded here and nobody else holds them yet, so their key and time are
    filled in place: a second frozen object would cost more than the rest of the routing.

    >>> d = RecordDecoder()
    >>> d.event(b'{"id": "e1", "x": {"a": 1}}', b"fraud", 1_700_000_000_000)
    Event(id='e1', key='fraud', x={'a': 1}, y=None, ts=1700000000.0)
    >>> d.label(b'{"id": "e1", "y": true, "ts": 1.5}', b"fraud", None)
    Label(id='e1', key='fraud', y=True, ts=1.5)
    """

    def __init__(
        self,
        max_bytes: int = MAX_EVENT_BYTES,
        max_keys: int = 100_000,
        *,
        max_features: int = MAX_FEATURES,
        max_name_chars: int = MAX_FEATURE_NAME_CHARS,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_features = max_features
        self.max_name_chars = max_name_chars
        self._keys: dict[bytes, str] = {}  # message key bytes -> str, bounded
        self._max_keys = max_keys
        precise = functools.partial(_event, max_features=max_features, max_name=max_name_chars)
        route = (self._keys, self.key)
        #: ``event(value, raw_key, timestamp_ms)``: a message's event, and ``label(...)``
        #: its label (each built per decoder as a closure over its bounds and key cache:
        #: see :func:`_message_path`).
        self.event = _message_path(
            max_bytes, precise, _wire_event_decoder(max_features), route, max_name_chars
        )
        self.label = _message_path(max_bytes, _label, _decode_label, route, None)

    def key(self, raw: bytes | None, declared: str) -> str:
        """The model key of a message whose body names ``declared`` (a command's too)."""
        if raw is None:
            return declared
        key = self._keys.get(raw)
        if key is None:
            try:
                key = raw.decode()
            except UnicodeDecodeError:
                raise DecodeError("bad_key", "the Kafka message key is not UTF-8") from None
            if len(self._keys) < self._max_keys:
                self._keys[raw] = key
        if declared != key and declared != DEFAULT_KEY:
            raise DecodeError(
                "key_mismatch",
                f"the message key {key[:40]!r} and the event's key {declared[:40]!r} differ",
            )
        return key

    def command(self, value: bytes | None, raw_key: bytes | None) -> Command:
        """A control message, its key checked against the message key like an event's
        (a command for every key, ``*``, is routed by its partition alone)."""
        cmd = decode_command(value)
        if cmd.key == ALL_KEYS:
            return cmd
        key = self.key(raw_key, cmd.key)
        return cmd if key == cmd.key else dataclasses.replace(cmd, key=key)


def _floats(x: dict) -> list[float]:
    return [v for v in x.values() if type(v) is float]


def _label(obj: dict) -> Label:
    id_ = _id(obj)
    y = obj.get("y")
    if y is None:
        raise DecodeError("missing_y", "the label has no 'y'")
    return Label(id_, _key(obj), _y(y), _ts(obj))


def decode_event(raw: bytes, *, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode one event message (features, optionally a label).

    >>> decode_event(b'{"id": "e1", "x": {"age": 42, "city": "Lyon"}, "y": true}')
    Event(id='e1', key='default', x={'age': 42, 'city': 'Lyon'}, y=True, ts=None)
    >>> decode_event(b'{"id": "e1", "x": [1, 2]}')
    Traceback (most recent call last):
    ...
    stream_learner.errors.DecodeError: x_not_object: x: value is a list; expected an object
    """
    return _module_path(max_bytes, "event")(raw, None, None)


def decode_label(raw: bytes, *, max_bytes: int = MAX_EVENT_BYTES) -> Label:
    """Decode one delayed-label message.

    >>> decode_label(b'{"id": "e1", "y": 0, "ts": "2024-01-01T00:00:00Z"}')
    Label(id='e1', key='default', y=0, ts=1704067200.0)
    """
    return _module_path(max_bytes, "label")(raw, None, None)


def decode(raw: bytes, *, max_bytes: int = MAX_EVENT_BYTES) -> Event | Label:
    """Decode a message that may be an event (has ``x``) or a delayed label (``id`` + ``y``)."""
    return _module_path(max_bytes, "either")(raw, None, None)


@functools.cache
def _module_path(max_bytes: int, kind: str) -> Callable[[bytes, None, None], Any]:
    """The module functions' paths: an ``event``, a ``label``, or ``either``."""
    if kind == "label":
        return _message_path(max_bytes, _label, _decode_label, max_name=None)
    return _message_path(max_bytes, _event_or_label if kind == "either" else _event)


def _event_or_label(obj: dict) -> Event | Label:
    if "x" in obj:
        return _event(obj)
    if obj.get("y") is not None:
        return _label(obj)
    _id(obj)  # a missing id is the more useful complaint
    raise DecodeError("missing_x", "the message has neither 'x' (an event) nor 'y' (a label)")


def check_label(y: object, task: str) -> None:
    """Raise ``DecodeError("bad_label")`` when ``y`` does not fit the model's task.

    - ``binary``: bool, or a number equal to 0 or 1. The positive class is ``True``/``1``,
      which River's binary models and metrics (LogisticRegression, F1, LogLoss) assume;
      string classes would all read as ``True`` there, so use ``multiclass`` for them.
    - ``multiclass``: str, int or bool (a float class would be an accident of encoding).
    - ``regression``: a finite int or float, not a bool.
    """
    t = type(y)
    if task == "binary":
        if t is bool or ((t is int or t is float) and (y == 0 or y == 1)):
            return
        expected = "bool or 0/1 (use task 'multiclass' for named classes)"
    elif task == "multiclass":
        if t is str or t is int or t is bool:
            return
        expected = "string, int or bool"
    elif task == "regression":
        if t is int or (t is float and math.isfinite(y)):  # type: ignore[arg-type]
            return
        expected = "a finite number"
    else:
        raise ConfigError(f"task: unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    shown = repr(y) if t in (bool, int, float, str) else _type_name(y)
    raise DecodeError(
        "bad_label", f"y: {shown[:40]} does not fit task {task!r}; expected {expected}"
    )

from __future__ import annotations

import copy
import doctest
import itertools
import json
import math
import pickle

import orjson
import pytest

from stream_learner.core import events
from stream_learner.core.events import (
    DEFAULT_KEY,
    MAX_EVENT_BYTES,
    MAX_FEATURE_NAME_CHARS,
    MAX_FEATURES,
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    REASONS,
    Event,
    Label,
    RecordDecoder,
    check_label,
    decode,
    decode_event,
    decode_label,
)
from stream_learner.errors import ConfigError, DecodeError


def _raw(obj: object) -> bytes:
    return orjson.dumps(obj)


def _reason(fn, raw: bytes, **kw) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        fn(raw, **kw)
    assert info.value.reason in REASONS
    return info.value


# -- good events ---------------------------------------------------------------------------


def test_labelled_event() -> None:
    raw = b'{"id": "e1", "key": "fraud", "ts": 1700000000, "x": {"age": 42.5, "n": 3}, "y": 1}'
    ev = decode_event(raw)
    assert ev == Event(id="e1", key="fraud", x={"age": 42.5, "n": 3}, y=1, ts=1700000000.0)
    assert type(ev.ts) is float
    assert ev.labelled


def test_prediction_request_missing_key_means_default() -> None:
    ev = decode_event(b'{"id": "e2", "x": {"a": 1.0}}')
    assert ev.key == DEFAULT_KEY == "default"
    assert ev.y is None and ev.ts is None
    assert not ev.labelled
    assert decode_event(b'{"id": "e2", "key": null, "x": {}, "y": null}').key == "default"


def test_unicode_names_bool_and_string_features() -> None:
    raw = _raw({"id": "é-1", "key": "modèle", "x": {"âge": 3, "ville": "Zürich", "vip": True}})
    ev = decode_event(raw)
    assert ev.x == {"âge": 3, "ville": "Zürich", "vip": True}
    assert ev.x["vip"] is True and ev.key == "modèle" and ev.id == "é-1"


def test_label_zero_and_false_are_labels() -> None:
    assert decode_event(b'{"id": "a", "x": {}, "y": 0}').labelled
    assert decode_event(b'{"id": "a", "x": {}, "y": false}').labelled
    assert decode_event(b'{"id": "a", "x": {}, "y": "cat"}').y == "cat"


def test_null_features_are_dropped_as_missing() -> None:
    ev = decode_event(b'{"id": "a", "x": {"a": 1, "b": null, "c": "z", "d": null}}')
    assert ev.x == {"a": 1, "c": "z"}


def test_unknown_top_level_fields_are_ignored() -> None:
    ev = decode_event(b'{"id": "a", "x": {"f": 1}, "schema": 3, "source": {"k": [1]}}')
    assert ev == Event("a", "default", {"f": 1})


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-01-01T00:00:00Z", 1704067200.0),
        ("2024-01-01T00:00:00+00:00", 1704067200.0),
        ("2024-01-01T02:00:00+02:00", 1704067200.0),
        ("2024-01-01T00:00:00.250Z", 1704067200.25),
        ("2024-01-01T00:00:00", 1704067200.0),  # no zone: read as UTC
        ("2024-01-01", 1704067200.0),
        (1704067200.5, 1704067200.5),
        (0, 0.0),
    ],
)
def test_ts_is_normalised_to_epoch_seconds(ts: object, expected: float) -> None:
    assert decode_event(_raw({"id": "a", "x": {}, "ts": ts})).ts == expected


def test_event_and_label_are_picklable_and_frozen() -> None:
    ev = decode_event(b'{"id": "a", "x": {"f": 1.5}, "y": true, "ts": 1}')
    assert pickle.loads(pickle.dumps(ev)) == ev
    assert copy.deepcopy(ev) == ev
    label = decode_label(b'{"id": "a", "y": true}')
    assert pickle.loads(pickle.dumps(label)) == label
    with pytest.raises(AttributeError):
        ev.y = False  # type: ignore[misc]


# -- labels and dispatch -------------------------------------------------------------------


def test_decode_label() -> None:
    label = decode_label(b'{"id": "e1", "key": "fraud", "y": false, "ts": "2024-01-01T00:00:00Z"}')
    assert label == Label(id="e1", key="fraud", y=False, ts=1704067200.0)
    assert decode_label(b'{"id": "e1", "y": 2.5}') == Label("e1", "default", 2.5, None)


def test_decode_dispatches_on_x() -> None:
    assert isinstance(decode(b'{"id": "a", "x": {}, "y": 1}'), Event)
    assert isinstance(decode(b'{"id": "a", "x": {}}'), Event)
    assert isinstance(decode(b'{"id": "a", "y": 1}'), Label)
    assert _reason(decode, b'{"id": "a"}').reason == "missing_x"
    assert _reason(decode, b'{"id": "a", "y": null}').reason == "missing_x"
    assert _reason(decode, b'{"y": 1}').reason == "missing_id"
    assert _reason(decode, b'{"x": {}}').reason == "missing_id"


# -- every reason code, from a real bad payload --------------------------------------------

BAD = [
    ("payload_too_large", decode_event, b'{"id": "a", "x": {"f": "' + b"a" * 5_000_000 + b'"}}'),
    ("not_json", decode_event, b'{"id": "a", "x": {'),
    ("not_json", decode_event, b'{"id": "a", "x": {"f": NaN}}'),
    ("not_json", decode_event, b'{"id": "a", "x": {"f": Infinity}}'),
    ("not_json", decode_event, b'{"id": "\xff", "x": {}}'),
    ("not_json", decode_event, b""),
    ("not_object", decode_event, b"[1, 2]"),
    ("not_object", decode_event, b'"text"'),
    ("missing_id", decode_event, b'{"x": {}}'),
    ("missing_id", decode_event, b'{"id": null, "x": {}}'),
    ("bad_id", decode_event, b'{"id": 7, "x": {}}'),
    ("bad_id", decode_event, b'{"id": "", "x": {}}'),
    ("bad_id", decode_event, _raw({"id": "i" * (MAX_ID_CHARS + 1), "x": {}})),
    ("bad_key", decode_event, b'{"id": "a", "key": 3, "x": {}}'),
    ("bad_key", decode_event, b'{"id": "a", "key": "", "x": {}}'),
    ("bad_key", decode_event, b'{"id": "a", "key": "a\\nb", "x": {}}'),
    ("bad_key", decode_event, _raw({"id": "a", "key": "k" * (MAX_KEY_CHARS + 1), "x": {}})),
    ("bad_ts", decode_event, b'{"id": "a", "ts": "yesterday", "x": {}}'),
    ("bad_ts", decode_event, b'{"id": "a", "ts": true, "x": {}}'),
    ("bad_ts", decode_event, b'{"id": "a", "ts": [1], "x": {}}'),
    ("missing_x", decode_event, b'{"id": "a", "y": 1}'),
    ("missing_x", decode_event, b'{"id": "a", "x": null}'),
    ("x_not_object", decode_event, b'{"id": "a", "x": [1, 2]}'),
    ("x_not_object", decode_event, b'{"id": "a", "x": "f=1"}'),
    ("bad_feature", decode_event, b'{"id": "a", "x": {"f": {"g": 1}}}'),
    ("bad_feature", decode_event, b'{"id": "a", "x": {"f": [1]}}'),
    (
        "too_many_features",
        decode_event,
        _raw({"id": "a", "x": {f"f{i}": i for i in range(MAX_FEATURES + 1)}}),
    ),
    (
        "feature_name_too_long",
        decode_event,
        _raw({"id": "a", "x": {"f" * (MAX_FEATURE_NAME_CHARS + 1): 1}}),
    ),
    ("non_finite", decode_event, b'{"id": "a", "x": {"f": 1e999}}'),
    ("non_finite", decode_event, b'{"id": "a", "x": {"f": -1e999}}'),
    ("non_finite", decode_event, b'{"id": "a", "x": {}, "y": 1e999}'),
    ("bad_label", decode_event, b'{"id": "a", "x": {}, "y": [1]}'),
    ("bad_label", decode_event, b'{"id": "a", "x": {}, "y": {"class": 1}}'),
    ("missing_y", decode_label, b'{"id": "a"}'),
    ("missing_y", decode_label, b'{"id": "a", "y": null}'),
    ("bad_label", decode_label, b'{"id": "a", "y": {}}'),
    ("missing_id", decode_label, b'{"y": 1}'),
]


@pytest.mark.parametrize(
    ("reason", "fn", "raw"), BAD, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD)]
)
def test_bad_payloads(reason: str, fn, raw: bytes) -> None:
    assert _reason(fn, raw).reason == reason


def test_every_reason_is_exercised() -> None:
    exercised = {r for r, _, _ in BAD}
    assert exercised == set(REASONS)


def test_payload_limit_is_checked_before_parsing() -> None:
    # Not JSON at all, but too large: the size wins, so nothing big is ever parsed.
    err = _reason(decode_event, b"x" * (MAX_EVENT_BYTES + 1))
    assert err.reason == "payload_too_large"
    assert err.detail == f"{MAX_EVENT_BYTES + 1} bytes; the limit is {MAX_EVENT_BYTES}"
    assert (
        _reason(decode_event, b'{"id": "a", "x": {}}', max_bytes=10).reason == "payload_too_large"
    )
    assert decode_event(b'{"id":"a","x":{}}', max_bytes=17).id == "a"


def test_details_are_precise() -> None:
    err = _reason(decode_event, b'{"id": "a", "x": {"age": [1, 2]}}')
    assert err.detail == "x.age: value is a list; expected number, string or bool"
    assert str(err) == "bad_feature: " + err.detail
    err = _reason(decode_event, b'{"id": "a", "x": {"ctx": {"k": 1}}}')
    assert err.detail == "x.ctx: value is an object; expected number, string or bool"
    assert _reason(decode_event, b'{"id": 7, "x": {}}').detail == (
        "id: value is int; expected a string"
    )
    assert _reason(decode_event, b"[1]").detail == "the message is a list; expected an object"
    assert "x.f" not in _reason(decode_event, b'{"id": "a", "x": {"f": 1e999}}').detail
    assert "too large for a double" in _reason(decode_event, b'{"id":"a","x":{"f":1e999}}').detail


# -- check_label ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "good", "bad"),
    [
        ("binary", [True, False, 0, 1, 1.0, 0.0], ["yes", 2, -1, 0.5]),
        ("multiclass", ["cat", 3, True], [2.5, 1.0]),
        ("regression", [1, -2.5, 0, 1e300], [True, False, "1.5", float("inf"), float("nan")]),
    ],
)
def test_check_label(task: str, good: list, bad: list) -> None:
    for y in good:
        check_label(y, task)
    for y in bad:
        with pytest.raises(DecodeError) as info:
            check_label(y, task)
        assert info.value.reason == "bad_label"
        assert f"does not fit task {task!r}" in info.value.detail


def test_check_label_detail_and_unknown_task() -> None:
    with pytest.raises(DecodeError) as info:
        check_label("yes", "binary")
    assert info.value.detail == (
        "y: 'yes' does not fit task 'binary'; "
        "expected bool or 0/1 (use task 'multiclass' for named classes)"
    )
    with pytest.raises(ConfigError, match="task: unknown task 'ranking'; choose one of: binary"):
        check_label(1, "ranking")


def test_doctests() -> None:
    result = doctest.testmod(events, raise_on_error=False)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize(
    ("obj", "reason", "detail"),
    [
        ({"id": "a", "x": {"f": math.inf}}, "non_finite", "x.f: inf is not finite"),
        ({"id": "a", "x": {"g": 1.0, "f": -math.inf}}, "non_finite", "x.f: -inf is not finite"),
        ({"id": "a", "x": {}, "y": math.nan}, "non_finite", "y: nan is not finite"),
        ({"id": "a", "x": {}, "ts": math.inf}, "bad_ts", "ts: inf is not finite"),
    ],
)
def test_non_finite_numbers_from_a_lenient_parser(monkeypatch, obj, reason, detail) -> None:
    """Older orjson versions turn 1e999 into inf; the import-time probe then turns the
    finiteness checks on. Simulate such a parser."""
    monkeypatch.setattr(events, "_CHECK_FINITE", True)
    monkeypatch.setattr(events, "_parse", lambda raw, max_bytes: copy.deepcopy(obj))
    err = _reason(decode_event, b"{}")
    assert (err.reason, err.detail) == (reason, detail)
    monkeypatch.setattr(events, "_parse", lambda raw, max_bytes: {"id": "a", "x": {"f": 1.5}})
    assert decode_event(b"{}").x == {"f": 1.5}


# -- records as Kafka delivers them: one set of rules for the service and its replays ------


def test_the_message_key_routes_and_the_producer_timestamp_fills_in_event_time():
    d = RecordDecoder()
    ev = d.event(b'{"id": "e1", "x": {"a": 1.0}}', b"fraud", 1_700_000_000_500)
    assert (ev.key, ev.ts) == ("fraud", 1_700_000_000.5)
    own = d.event(b'{"id": "e2", "key": "fraud", "ts": 5, "x": {}}', b"fraud", 9_000)
    assert (own.key, own.ts) == ("fraud", 5.0)  # the message's own time wins
    keyless = d.event(b'{"id": "e3", "x": {}}', None, None)
    assert (keyless.key, keyless.ts) == ("default", None)
    # A label with its own ts still takes the message key (not just its time).
    label = d.label(b'{"id": "e1", "y": true, "ts": 7}', b"fraud", 1_000)
    assert (label.key, label.ts) == ("fraud", 7.0)
    assert d.label(b'{"id": "e1", "y": false}', b"fraud", 2_000).ts == 2.0


@pytest.mark.parametrize(
    ("value", "raw_key", "reason"),
    [
        (None, b"k", "not_json"),  # a tombstone
        (b'{"id": "e1", "key": "other", "x": {}}', b"k", "key_mismatch"),
        (b'{"id": "e1", "x": {}}', b"\xff\xfe", "bad_key"),
        (b'{"id": "e1", "x": [1]}', b"k", "x_not_object"),
    ],
)
def test_what_the_service_dead_letters(value, raw_key, reason):
    with pytest.raises(DecodeError) as info:
        RecordDecoder().event(value, raw_key, None)
    assert info.value.reason == reason


def test_the_key_cache_is_bounded():
    d = RecordDecoder(max_keys=3)
    for i in range(10):
        assert d.key(f"k{i}".encode(), "default") == f"k{i}"
    assert len(d._keys) == 3


# -- the fast path (msgspec) against the precise path (orjson + checks) ----------------------

_MISSING = object()
_IDS = ["e1", "ééé", "", "i" * MAX_ID_CHARS, "i" * (MAX_ID_CHARS + 1), 5, None, _MISSING]
_KEYS = ["k", "k" * MAX_KEY_CHARS, "k" * (MAX_KEY_CHARS + 1), "", "a\nb", 3, None, _MISSING]
_TS = [_MISSING, None, 12, 1.5, "2024-01-01T00:00:00Z", "2024-01-01", "nope", 2**70, True, [1]]
_XS = [
    {},
    {"a": 1, "b": 1.5, "c": "s", "d": True},
    {"a": None, "b": 2},
    {"a": [1]},
    {"a": {}},
    {"a": 2**63 - 1, "b": -(2**63)},
    {"a": 2**63},
    {"a": 2**64 - 1},
    {"a": 2**64},
    {"a": -(2**63) - 1},
    {"a": 1e300, "b": -0.0},
    "s",
    [1],
    None,
    _MISSING,
]
_YS = [_MISSING, None, True, 0, 1, 0.5, "c", [1], {}, 2**70, 2**63]


def _outcome(fn, raw: bytes) -> tuple:
    """What a decoder makes of ``raw``, types of the values included (1 is not 1.0 here)."""
    try:
        out = fn(raw)
    except DecodeError as e:
        return ("refused", e.reason)
    values = out.x.values() if isinstance(out, Event) else ()
    return ("accepted", repr(out), [type(v).__name__ for v in values], type(out.y).__name__)


def _messages(**choices: list) -> list[bytes]:
    names = list(choices)
    out = []
    for combo in itertools.product(*choices.values()):
        obj = {n: v for n, v in zip(names, combo, strict=True) if v is not _MISSING}
        out.append(_dumps(obj))
    return out


def _dumps(obj: object) -> bytes:
    # orjson writes no integer beyond 64 bits; the standard library writes them all.
    return json.dumps(obj, ensure_ascii=False).encode()


_RAW_EDGES = [
    b'{"id": "e1", "x": {"a": 1e999}}',
    b'{"id": "e1", "x": {"a": 1}, "y": -1e400}',
    b'{"id": "e1", "x": {"a": 1}, "ts": 1e999}',
    b'{"id": "e1", "id": "e2", "x": {"a": 1, "a": 2}}',
    b'{"id": "e1", "x": {"a": NaN}}',
    b'{"id": "e1", "x": {"a": 1}} trailing',
    b'\xef\xbb\xbf{"id": "e1", "x": {}}',
    b'{"id": "\\ud800", "x": {}}',
    b'{"id": "e1", "x": {"\xff": 1}}',
    b'[{"id": "e1", "x": {}}]',
    b'"text"',
    b"",
    b"null",
    # Nesting deeper than msgspec follows (it raises RecursionError), in a feature and in an
    # unknown field: refused as not_json, never an exception the service does not expect.
    b'{"id": "e1", "x": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b'{"id": "e1", "x": {}, "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


def test_the_fast_path_decodes_every_event_as_the_precise_path_does() -> None:
    """Whatever msgspec accepts must come out exactly as orjson plus the checks make it, and
    whatever it refuses must get the precise path's verdict: for 100k+ shapes of event."""
    precise = lambda raw: events._event(events._parse(raw, MAX_EVENT_BYTES))  # noqa: E731
    raws = _messages(id=_IDS, key=_KEYS, ts=_TS, x=_XS, y=_YS) + _RAW_EDGES
    accepted = 0
    for raw in raws:
        want = _outcome(precise, raw)
        assert _outcome(decode_event, raw) == want, raw
        assert _outcome(lambda r: RecordDecoder().event(r, None, None), raw) == want, raw
        accepted += want[0] == "accepted"
    assert accepted > 1000  # the corpus exercises acceptance, not only refusals


_BOUNDED_XS = [
    *_XS,
    {"ab": 1},
    {"é": 1},
    {"éé": 1.5},
    {"a": 1, "b": None, "c": None},
    {"a": None, "b": None, "c": None, "d": 1},
    {"a": 1, "bb": None},
    {"a": 1, "b": 2, "c": "s"},
]


def test_both_paths_bound_features_alike() -> None:
    """The bounds on features per event and on name lengths, small enough to bite: msgspec
    refuses what passes them and the precise path has the same verdict (nulls aside)."""
    bounded = dict(max_features=2, max_name=1)
    precise = lambda raw: events._event(events._parse(raw, MAX_EVENT_BYTES), **bounded)  # noqa: E731
    decoder = RecordDecoder(max_features=2, max_name_chars=1)
    raws = _messages(id=["e1"], key=["k", _MISSING], ts=[_MISSING, 1.5], x=_BOUNDED_XS, y=_YS)
    raws.append(b'{"id": "e1", "x": {"a": 1, "a": 2, "a": 3}}')  # one feature, three times
    reasons = set()
    for raw in raws:
        want = _outcome(precise, raw)
        assert _outcome(lambda r: decoder.event(r, None, None), raw) == want, raw
        reasons.add(want[1] if want[0] == "refused" else "accepted")
    assert {"accepted", "too_many_features", "feature_name_too_long"} <= reasons
    three = b'{"id": "e1", "x": {"a": 1, "b": 2, "c": 3}}'
    assert "the limit is 2" in _reason(lambda r: decoder.event(r, None, None), three).detail
    assert decode_event(three).x == {"a": 1, "b": 2, "c": 3}  # the defaults: far from it


def test_bounds_looser_than_the_defaults_accept_what_the_defaults_refuse() -> None:
    """Event's annotation holds the default bound on features (past it msgspec refuses and
    the precise path judges) and the event path the bound on names: a looser decoder
    accepts what the defaults refuse."""
    many = {f"f{i}": 1 for i in range(MAX_FEATURES + 1)}
    long = {"n" * (MAX_FEATURE_NAME_CHARS + 1): 1.5}
    loose = RecordDecoder(max_features=MAX_FEATURES + 1, max_name_chars=MAX_FEATURE_NAME_CHARS + 1)
    for x in (many, long):
        raw = _dumps({"id": "e1", "x": x})
        assert loose.event(raw, b"k", 1_000).x == x
        assert _outcome(lambda r: RecordDecoder().event(r, b"k", 1_000), raw)[0] == "refused"


def test_a_feature_name_is_one_string_across_messages() -> None:
    """Each message's names are the same str objects (msgspec's cache of short keys), so a
    model's dict lookups find their hashes made; a bound on the names turned it off. The
    model key likewise."""
    raw = b'{"id": "e1", "x": {"amount": 1.5, "merchant_category": "food"}}'
    first, second = (RecordDecoder().event(raw, b"k", None) for _ in range(2))
    assert first.x == second.x
    assert all(a is b for a, b in zip(first.x, second.x, strict=True))
    # The routed key is the decoder's cached string, also when the message names it too.
    decoder = RecordDecoder()
    routed = decoder.event(raw, b"merchant-42", None).key
    declared = b'{"id": "e2", "key": "merchant-42", "x": {"amount": 1.5}}'
    assert decoder.event(declared, b"merchant-42", None).key is routed == "merchant-42"
    label = b'{"id": "e2", "key": "merchant-42", "y": true}'
    assert decoder.label(label, b"merchant-42", None).key is routed
    strict = RecordDecoder(max_name_chars=len("merchant_category") - 1)
    assert _reason(lambda r: strict.event(r, b"k", None), raw).reason == "feature_name_too_long"


def test_the_fast_path_decodes_every_label_as_the_precise_path_does() -> None:
    precise = lambda raw: events._label(events._parse(raw, MAX_EVENT_BYTES))  # noqa: E731
    raws = _messages(id=_IDS, key=_KEYS, ts=_TS, y=_YS) + _RAW_EDGES
    for raw in raws:
        want = _outcome(precise, raw)
        assert _outcome(decode_label, raw) == want, raw
        assert _outcome(lambda r: RecordDecoder().label(r, None, None), raw) == want, raw
    both = [_dumps({"id": "e1", "x": {"a": 1}, "y": 1}), _dumps({"id": "e1", "y": 1})]
    for raw in both + raws[:200]:
        assert _outcome(decode, raw) == _outcome(
            lambda r: events._event_or_label(events._parse(r, MAX_EVENT_BYTES)), raw
        )


def test_numbers_inside_unknown_fields_are_skipped_unread() -> None:
    """The one documented difference: the fast path does not parse what it ignores."""
    raw = b'{"id": "e1", "x": {"a": 1}, "extra": [1e999]}'
    assert decode_event(raw) == Event("e1", DEFAULT_KEY, {"a": 1})

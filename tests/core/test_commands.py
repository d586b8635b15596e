from __future__ import annotations

import orjson
import pytest

from stream_learner.core.commands import ALL_KEYS, Command, decode_command
from stream_learner.errors import DecodeError


def test_round_trip_and_defaults():
    cmd = Command("retrain", key="fraud", reason="backfill", requested_by="alice", ts=5.0)
    assert decode_command(cmd.to_json()) == cmd
    bare = decode_command(b'{"command": "pause"}')
    assert bare.key == ALL_KEYS and bare.applies_to("anything")
    assert not cmd.applies_to("other") and cmd.applies_to("fraud")
    staged = Command("rollback", key="fraud", version=3, staged=True)
    assert decode_command(staged.to_json()) == staged
    assert decode_command(b'{"command": "rollback", "key": "k", "version": 3}').staged is False


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"nope", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"command": "explode"}', "choose one of retrain"),
        (b'{"command": "retrain", "key": 3}', "key: expected a string"),
        (b'{"command": "rollback", "key": "k"}', "needs a 'version'"),
        (b'{"command": "rollback", "key": "k", "version": "2"}', "version: expected an integer"),
        (b'{"command": "retrain", "ts": "yesterday"}', "ts: expected epoch seconds"),
        (b'{"command": "rollback", "version": 2, "staged": 1}', "staged: expected true or false"),
        (orjson.dumps({"command": "retrain", "reason": "x" * 501}), "reason: expected a string"),
        (None, "empty or oversized"),
    ],
)
def test_bad_commands_name_the_problem(raw, detail):
    with pytest.raises(DecodeError) as exc:
        decode_command(raw)
    assert exc.value.reason == "bad_command"
    assert detail in exc.value.detail

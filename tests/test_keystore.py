"""The store of evicted keys (``stream_learner/keystore.py``): a bounded cache of encoded
snapshots in front of a second tier, and a replay under a key budget that reports what a
replay without one reports."""

from __future__ import annotations

import os
import pickle

import orjson
import pytest

from stream_learner.config import parse_config
from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.core.keystate import KeyState
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.retrain import RetrainConfig
from stream_learner.core.snapshot import SnapshotMeta
from stream_learner.errors import ConfigError
from stream_learner.keystore import CheckpointTier, EvictedKeys, SpillFile, _unpacked
from stream_learner.replay import read_history, replay, resolve_policy
from stream_learner.synth import demo_messages

KEY = b"k" * 32


class _Seen:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def evicted(self, size):
        self.events.append(("evicted", size > 0))

    def reloaded(self, source, seconds):
        self.events.append(("reloaded", source, seconds >= 0))

    def written(self, size):
        self.events.append(("written", size > 0))

    def cached(self, size, entries):
        self.events.append(("cached", entries))


def _meta(key, partition, state):
    return SnapshotMeta(
        key, "l1", 1, "evict", offsets={"events": {partition: 7}},
        extra={"partition": partition, "events_topic": "events"},
    )  # fmt: skip


def _keys(tier, cache_bytes, observer=None):
    return EvictedKeys(tier, _meta, cache_bytes=cache_bytes, observer=observer)


def test_the_cache_holds_the_newest_and_spills_the_oldest_to_the_topic():
    store = MemoryCheckpointStore(signing_key=KEY)
    seen = _Seen()
    one = len(pickle.dumps(KeyState({"weights": [0.0] * 50}), protocol=5)) + 512
    keys = _keys(CheckpointTier(store), cache_bytes=2 * one + 100, observer=seen)  # two fit
    for i in range(4):
        keys.save(f"k{i}", 0, KeyState({"weights": [float(i)] * 50}, paused=i == 2))
    assert list(keys.cache) == ["k2", "k3"]  # the oldest went to the topic, written first
    on_topic = store.read().keys()
    assert on_topic == [f"k{i}" for i in range(4 - len(keys.cache))]
    assert keys.load("k0") == KeyState({"weights": [0.0] * 50})  # from the topic
    assert keys.load("k3") == KeyState({"weights": [3.0] * 50})  # from the cache
    assert keys.reloads == {"cache": 1, "topic": 1}
    assert ("reloaded", "topic", True) in seen.events and ("reloaded", "cache", True) in seen.events
    # A round writes what the cache has not written yet, for its partition.
    assert keys.unwritten(0) and not keys.unwritten(1)
    assert keys.flush(0) == len(keys.cache)
    assert not keys.unwritten(0)
    assert "k2" in store.read().keys()  # noqa: SIM118 - a Catalog, not a dict
    header = store.read().versions("k2")[-1].header
    assert header["trigger"] == "evict" and header["offsets"] == {"events": {"0": 7}}
    assert keys.load("k2").paused


def test_what_goes_to_the_topic_is_signed_and_refused_under_another_key():
    store = MemoryCheckpointStore(signing_key=KEY)
    keys = _keys(CheckpointTier(store), cache_bytes=0)  # straight to the topic
    keys.save("k", 0, KeyState("state"))
    assert store.read().versions("k")[-1].header["signature"]
    other = MemoryCheckpointStore(signing_key=b"x" * 32)
    other.log = store.log
    with pytest.raises(LookupError):
        CheckpointTier(other).get("k")
    assert [r.reason for r in other.read().rejections] == ["bad_signature"]


def test_the_spill_file_reads_back_what_left_the_cache_and_forgets_discarded_keys():
    tier = SpillFile()
    keys = _keys(tier, cache_bytes=0)  # everything goes to the file at once
    keys.save("a", 0, KeyState("A"))
    keys.save("b", 1, KeyState("B"))
    assert not keys.cache and set(tier.index) == {"a", "b"}
    assert keys.load("b").learner == "B" and keys.reloads["disk"] == 1
    keys.discard(["a"])
    with pytest.raises(LookupError):
        keys.load("a")
    tier.close()


def test_with_a_local_file_what_left_the_cache_is_on_the_topic_and_read_back_from_disk(
    tmp_path,
):
    """The service's store: the topic for restarts, a local file for this process's reloads
    (reading one key from the topic reads the topic). What a restore evicts is on the topic
    already: it goes to the file at once, neither into the cache nor to the topic again."""

    class Counted(CheckpointTier):
        gets = 0

        def get(self, key):
            Counted.gets += 1
            return super().get(key)

    store = MemoryCheckpointStore(signing_key=KEY)
    local = SpillFile(str(tmp_path))
    assert not list(tmp_path.iterdir())  # no name: nothing left behind, however it ends
    keys = EvictedKeys(Counted(store), _meta, cache_bytes=0, local=local)
    for i in range(3):
        keys.save(f"k{i}", 0, KeyState({"weights": [float(i)] * 50}))
    assert not keys.cache and set(local.index) == {"k0", "k1", "k2"}
    assert store.read().keys() == ["k0", "k1", "k2"]  # on the topic, for a restart
    assert keys.load("k1") == KeyState({"weights": [1.0] * 50})
    assert keys.reloads == {"cache": 0, "disk": 1, "topic": 0} and Counted.gets == 0
    written, keys.restoring = keys.written_bytes, True
    keys.save("k1", 0, KeyState({"weights": [1.0] * 50}))
    keys.restoring = False
    assert "k1" in local.index and not keys.cache
    assert keys.written_bytes == written and store.read().keys() == ["k0", "k1", "k2"]
    keys.discard(["k0"])
    assert "k0" not in local.index
    with pytest.raises(LookupError):  # the memory store kept it: only the file forgot it
        local.get("k0")
    assert keys.load("k0") == KeyState({"weights": [0.0] * 50})  # the topic, as a fallback
    assert keys.reloads["topic"] == 1 and Counted.gets == 1
    keys.close()
    assert not list(tmp_path.iterdir())


def test_the_spill_file_reuses_the_slots_of_keys_read_back():
    tier = SpillFile()
    keys = _keys(tier, cache_bytes=0)
    for round_ in range(5):  # every key leaves and comes back each round
        for k in range(10):
            keys.save(f"k{k}", 0, KeyState({"weights": [float(round_ + k)] * 100}))
        for k in range(10):
            assert keys.load(f"k{k}").learner == {"weights": [float(round_ + k)] * 100}
    n = len(pickle.dumps(KeyState({"weights": [0.0] * 100})))
    assert tier.size <= 10 * tier._slot(n + n // 4)  # each slot with a quarter more room
    tier.close()


def test_a_flush_of_the_whole_cache_is_written_in_deliveries_of_bounded_size():
    """A checkpoint round or a shutdown writes every unwritten cached entry: in deliveries
    of about WRITE_BYTES, so the encoded snapshots of a 256 MB cache are never all held
    at once (nor the client's copies of them)."""

    class Counted(CheckpointTier):
        def __init__(self, store) -> None:
            super().__init__(store)
            self.puts: list[list[int]] = []

        def put(self, entries):
            self.puts.append([e.size for e in entries])
            super().put(entries)

    store = MemoryCheckpointStore(signing_key=KEY)
    tier = Counted(store)
    keys = EvictedKeys(tier, _meta, cache_bytes=10**9)
    keys.WRITE_BYTES = 20_000
    for i in range(60):
        keys.save(f"k{i}", i % 2, KeyState({"weights": [float(i)] * 300}))
    assert tier.puts == [] and keys.unwritten(0) and keys.unwritten(1)
    assert keys.flush() == 60
    sizes = [sum(put) for put in tier.puts]
    one = max(s for put in tier.puts for s in put)
    assert len(sizes) > 2 and all(size < keys.WRITE_BYTES + one for size in sizes)
    assert sum(len(put) for put in tier.puts) == 60
    assert not keys.unwritten(0) and not keys.unwritten(1)
    assert sorted(store.read().keys()) == sorted(f"k{i}" for i in range(60))


def test_past_its_bound_the_cache_sheds_its_oldest_below_it_in_one_write():
    """A long tail evicts a key after each input: the cache passes its bound at nearly
    every eviction. It sheds SLACK of its bound at once, the oldest first, one write."""

    class Counted(SpillFile):
        def __init__(self) -> None:
            super().__init__()
            self.puts: list[list[str]] = []

        def put(self, entries):
            self.puts.append([e.key for e in entries])
            super().put(entries)

    tier = Counted()
    one = len(pickle.dumps(KeyState("x" * 1000), protocol=5)) + 512
    keys = EvictedKeys(tier, None, cache_bytes=200 * one)  # no headers: a spill file's
    for i in range(1000):
        keys.save(f"k{i}", 0, KeyState("x" * 1000))
    assert all(entry.meta is None for entry in keys.cache.values())
    with pytest.raises(ValueError, match="headers"):  # the topic's entries need theirs
        EvictedKeys(CheckpointTier(MemoryCheckpointStore(signing_key=KEY)), None, cache_bytes=0)
    assert keys.bytes <= keys.cache_bytes and len(tier.puts) < 1000 // 3  # not one each
    assert [len(p) for p in tier.puts[1:]] == [len(tier.puts[1])] * (len(tier.puts) - 1)
    each = next(iter(keys.cache.values())).size + 512
    assert len(tier.puts[1]) * each > EvictedKeys.SLACK * keys.cache_bytes  # SLACK of it
    assert (len(tier.puts[1]) - 1) * each <= EvictedKeys.SLACK * keys.cache_bytes + each
    shed = [k for put in tier.puts for k in put]
    assert shed == [f"k{i}" for i in range(len(shed))]  # the oldest, in order
    assert list(keys.cache) == [f"k{i}" for i in range(len(shed), 1000)]
    assert all(keys.load(f"k{i}").learner == "x" * 1000 for i in (0, 999))
    tier.close()


def test_keys_whose_pickles_grow_or_shrink_across_a_slot_step_reuse_their_slots():
    """A young key's pickle is about 2 KB and grows ~100 bytes an event: across a step
    of SLOT bytes between its evictions. New slots have a quarter more room than their
    entry, and an entry takes the smallest free slot that fits: the file keeps the slots
    of the first round (before, the long tail's file grew from 2 to 4.3 GB so)."""
    tier = SpillFile()
    keys = _keys(tier, cache_bytes=0)
    for size in (900, 1100, 950, 1150):  # either side of a step of 1024 bytes
        for k in range(20):
            keys.save(f"k{k}", 0, KeyState("x" * size))
        assert tier.size == 20 * 2 * tier.SLOT  # the 20 slots of the first round, reused
        for k in range(20):
            assert keys.load(f"k{k}").learner == "x" * size
    tier.close()


def _codec():
    from stream_learner.core.codec import KeyCodec
    from stream_learner.core.learner import Learner
    from tests.core.specs import LINEAR

    return KeyCodec(lambda key: Learner(key, LINEAR))


def test_with_a_codec_the_cache_and_file_keep_its_bytes_and_the_topic_standard_snapshots():
    from stream_learner.core.events import Event

    codec = _codec()
    learner = codec.fresh("k0")
    for i in range(5):
        learner.learn(Event(str(i), "k0", {"u": float(i)}, i % 2 == 0, float(i)))
    state = KeyState(learner, paused=True)
    store = MemoryCheckpointStore(signing_key=KEY)
    keys = EvictedKeys(CheckpointTier(store, codec), _meta, cache_bytes=0, codec=codec)
    keys.save("k0", 0, state)  # straight to the topic, as a standard snapshot
    assert keys.evicted_bytes == len(codec.dumps(state))
    restored = store.read().load("k0")[1]  # a restore: no codec, signature verified
    assert restored.paused and restored.learner.index == 5
    assert keys.load("k0").learner.index == 5  # from the topic
    spill = SpillFile(codec=codec)
    keys = EvictedKeys(spill, _meta, cache_bytes=0, codec=codec)
    keys.save("k0", 0, state)
    with pytest.raises(pickle.UnpicklingError):  # the file holds the codec's bytes
        at, length, _ = _unpacked(spill.index["k0"])
        pickle.loads(os.pread(spill._fd, length, at))
    assert keys.load("k0").learner.spec is learner.spec
    spill.close()


CONFIG = """
[service]
retrain_apply_after = 50
{budget}

[model]
task = "binary"
pipeline = [
  {{ estimator = "preprocessing.StandardScaler" }},
  {{ estimator = "linear_model.LogisticRegression" }},
]

[policy]
warmup = 100
cooldown_events = 100

[retrain]
window = 200
holdout = 30
min_train = 60
margin = 0.0
"""


def test_a_replay_under_a_key_budget_reports_what_one_without_it_reports(tmp_path):
    keys = tuple(f"k{i}" for i in range(4))
    history = []
    for i, key in enumerate(keys):
        for m in demo_messages(
            400, change_at=200, keys=(key,), unlabelled_share=0.2, label_delay=25,
            seed=i, id_prefix=f"{key}-", t0=1_700_000_000.0,
        ):  # fmt: skip
            history.append(m)
    history.sort(key=lambda m: (m.value["ts"], m.value.get("key", ""), m.value["id"]))
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(m.value) + b"\n" for m in history))
    items = read_history(path)
    runs = {}
    for budget in ("", "max_keys = 2\nevicted_cache_mb = 0"):
        config = parse_config(_toml(CONFIG.format(budget=budget)))
        retrain = RetrainConfig.from_dict(config.retrain)
        policies = [
            resolve_policy("config", retrain, config=PolicyConfig.from_dict(config.policy)),
            resolve_policy("interval:150", retrain),
        ]
        out, served = [], []
        reports = replay(items, config, policies, learners=out, predictions=served)
        runs[budget] = (
            [r.to_dict() for r in reports],
            [{k: (lr.evaluator.values(), lr.index) for k, lr in o.items()} for o in out],
            served,
        )
    plain, budgeted = runs[""], runs["max_keys = 2\nevicted_cache_mb = 0"]
    for a, b in zip(plain[0], budgeted[0], strict=True):
        for timing in ("retrain_s", "events_per_s"):
            a.pop(timing), b.pop(timing)
        assert a == b
    assert sum(len(r["decisions"]) for r in plain[0]) > 5
    assert plain[1] == budgeted[1]
    assert [[(e.id, o.y_pred, o.proba) for e, o in s] for s in plain[2]] == [
        [(e.id, o.y_pred, o.proba) for e, o in s] for s in budgeted[2]
    ]


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_a_negative_budget_is_one_config_error_line():
    with pytest.raises(ConfigError, match=r"service.max_keys: -1; expected an integer >= 0"):
        parse_config({"service": {"max_keys": -1}})


def test_a_budget_without_checkpoints_is_one_config_error_line():
    from stream_learner.cli.service_cmd import build_service

    config = parse_config(
        _toml(CONFIG.format(budget="max_keys = 5") + "\n[checkpoints]\nenabled = false\n")
    )
    with pytest.raises(ConfigError, match=r"^service.max_keys: .* checkpoints.enabled = true"):
        build_service(config, "127.0.0.1:1")

"""Synthetic labelled streams with known change points, for the demo, tests and benchmarks.

Pure (River's generators, no Kafka). An abrupt concept drift chains two
generators, because ``river.datasets.synth.ConceptDriftStream`` overflows far
from its change point when its width is small.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from river.datasets import synth

GENERATORS = ("sea", "agrawal", "hyperplane", "stagger")


def concept(name: str, variant: int, seed: int):
    """One concept of a named generator; ``variant`` selects the concept."""
    if name == "sea":
        return synth.SEA(variant=variant % 4, seed=seed)
    if name == "agrawal":
        return synth.Agrawal(classification_function=variant % 10, seed=seed)
    if name == "hyperplane":
        # A new seed draws new weights: a different decision boundary.
        return synth.Hyperplane(seed=seed + 1000 * variant, n_features=10)
    if name == "stagger":
        return synth.STAGGER(classification_function=variant % 3, seed=seed)
    raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")


def abrupt(
    name: str, n: int, change_at: int | None, seed: int = 42
) -> Iterator[tuple[dict, object]]:
    """``n`` (x, y) pairs whose concept switches once at ``change_at`` (None: stationary)."""
    first = concept(name, 0, seed)
    if change_at is None or change_at >= n:
        return itertools.islice(iter(first), n)
    # SEA 0 -> 3 moves the threshold from 8 to 9.5: 13% of the label space flips.
    second = concept(name, {"sea": 3, "hyperplane": 1}.get(name, 2), seed + 1)
    return itertools.islice(
        itertools.chain(itertools.islice(iter(first), change_at), iter(second)), n
    )


@dataclass(frozen=True)
class Message:
    """One message to produce: to the events topic, or (a delayed label) to labels."""

    topic: str  # "events" or "labels"
    key: str
    value: dict


def demo_messages(
    n: int,
    *,
    generator: str = "sea",
    change_at: int | None = None,
    keys: tuple[str, ...] = ("default",),
    unlabelled_share: float = 0.0,
    label_delay: int = 200,
    seed: int = 42,
    t0: float | None = None,
    dt: float = 1.0,
    id_prefix: str = "e",
) -> Iterator[Message]:
    """Events for the service: labelled ones, and unlabelled requests whose label
    follows ``label_delay`` events later on the labels topic (delayed ground truth).

    Each key gets its own copy of the stream, interleaved round-robin. Event time starts
    at ``t0`` (default: ``n * dt`` seconds ago, so brokers do not expire the records).
    """
    if t0 is None:
        t0 = float(int(time.time() - n * dt))
    rng = random.Random(seed)
    streams = [abrupt(generator, n, change_at, seed) for _ in keys]
    pending: list[tuple[int, Message]] = []
    i = 0
    for pairs in zip(*streams, strict=True):
        for key, (x, y) in zip(keys, pairs, strict=True):
            event_id = f"{id_prefix}{i}"
            ts = t0 + i * dt
            x = {k if isinstance(k, str) else f"x{k}": v for k, v in x.items()}
            value = {"id": event_id, "key": key, "ts": ts, "x": x}
            if unlabelled_share and rng.random() < unlabelled_share:
                # The label is known label_delay events later, in the same event time.
                label = {"id": event_id, "key": key, "y": y, "ts": ts + label_delay * dt}
                pending.append((i + label_delay, Message("labels", key, label)))
            else:
                value["y"] = y
            yield Message("events", key, value)
            while pending and pending[0][0] <= i:
                yield pending.pop(0)[1]
            i += 1
    for _, message in pending:
        yield message

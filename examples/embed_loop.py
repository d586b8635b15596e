"""A plain confluent-kafka loop that learns with stream-learner: see docs/embedding.md."""

import sys

import orjson
from confluent_kafka import Consumer, Producer

from stream_learner import DecodeError, StreamLearner


def main(config: str, bootstrap: str, max_idle_s: float = 5.0) -> None:
    sl = StreamLearner.from_toml(config)  # the service's config: model, policy, topics
    topics, idle, conf = sl.topics, 0.0, {"bootstrap.servers": bootstrap}
    consumer = Consumer({**conf, "group.id": "embed-loop", "auto.offset.reset": "earliest"})
    producer = Producer(conf)
    consumer.subscribe([topics.events, topics.labels])
    while idle < max_idle_s:  # stops once nothing came for max_idle_s
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            idle += 0.5
            continue
        idle, feed = 0.0, sl.event if msg.topic() == topics.events else sl.label
        try:
            result = feed(msg.value(), key=msg.key(), timestamp_ms=msg.timestamp()[1])
        except DecodeError as exc:  # the service's reason: not_json, bad_label, ...
            headers = {"dlq.reason": exc.reason, "dlq.detail": exc.detail}
            producer.produce(topics.dead_letters, msg.value(), key=msg.key(), headers=headers)
            continue
        if result.prediction is not None:  # a request: publish what the service would
            producer.produce(topics.predictions, orjson.dumps(result.prediction), key=msg.key())
        for d in result.decisions:
            print(f"{d.key} {d.trigger} {d.action}: {d.reason}", flush=True)
    producer.flush(30)
    consumer.close()
    sl.close()


if __name__ == "__main__":  # python examples/embed_loop.py CONFIG.toml BOOTSTRAP [MAX_IDLE_S]
    main(sys.argv[1], sys.argv[2], *map(float, sys.argv[3:]))

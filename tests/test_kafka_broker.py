"""The broker under the integration tests is a real Kafka: partitions, keys, groups, offsets."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

import pytest

from cyberstream.kafka_io import ensure_topics, json_bytes, make_consumer, make_producer

pytestmark = pytest.mark.integration

PARTITIONS = 3
KEYS = [f"U{i}@DOM1 / C{i}$@DOM1" for i in range(12)]
PER_KEY = 25


def _consume_until(consumer, n: int, timeout: float = 30.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    return got


def test_keyed_messages_ordered_per_key_and_group_resumes_after_commit(kafka_bootstrap: str, topic_name: str):
    check_keyed_order_and_resume(kafka_bootstrap, topic_name)


def test_the_local_broker_too(local_kafka_bootstrap: str, topic_name: str):
    """The local broker's path stays alive when the session's broker is a container."""
    check_keyed_order_and_resume(local_kafka_bootstrap, topic_name)


def check_keyed_order_and_resume(kafka_bootstrap: str, topic_name: str) -> None:
    counts = ensure_topics(kafka_bootstrap, {topic_name: PARTITIONS})
    assert counts == {topic_name: PARTITIONS}

    producer = make_producer(kafka_bootstrap)
    sent = []
    for seq in range(PER_KEY):
        for key in KEYS:
            sent.append((key, seq))
            producer.send(topic_name, key=key.encode(), value=json_bytes({"key": key, "seq": seq}))
    producer.flush()
    producer.close()
    total = len(sent)
    half = total // 2

    group = f"g-{uuid.uuid4().hex[:8]}"
    first = make_consumer(kafka_bootstrap, topic_name, group_id=group, max_poll_records=7)
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < half and time.monotonic() < deadline:
        for records in first.poll(timeout_ms=500, max_records=7).values():
            seen.extend(records)
    assert len(seen) >= half
    # Commit exactly what was processed: per partition, one past the last record seen.
    from kafka.structs import OffsetAndMetadata, TopicPartition

    last: dict[int, int] = {}
    for r in seen:
        last[r.partition] = max(last.get(r.partition, -1), r.offset)
    first.commit({TopicPartition(topic_name, p): OffsetAndMetadata(o + 1, "", -1) for p, o in last.items()})
    first.close()

    second = make_consumer(kafka_bootstrap, topic_name, group_id=group)
    rest = _consume_until(second, total - len(seen))
    second.close()

    # Resumes after the committed offset: nothing read twice, nothing lost.
    ids = [(r.partition, r.offset) for r in seen + rest]
    assert len(ids) == len(set(ids)) == total
    for r in rest:
        assert r.offset > last.get(r.partition, -1)

    # Every message of a key on one partition, in the order sent.
    by_key_partitions: dict[str, set[int]] = defaultdict(set)
    by_key_seqs: dict[str, list[int]] = defaultdict(list)
    for r in sorted(seen + rest, key=lambda r: (r.partition, r.offset)):
        value = json.loads(r.value)
        assert r.key.decode() == value["key"]
        by_key_partitions[value["key"]].add(r.partition)
        by_key_seqs[value["key"]].append(value["seq"])
    assert set(by_key_seqs) == set(KEYS)
    for key in KEYS:
        assert len(by_key_partitions[key]) == 1
        assert by_key_seqs[key] == list(range(PER_KEY))
    # Several partitions were really used.
    assert len({p for ps in by_key_partitions.values() for p in ps}) > 1

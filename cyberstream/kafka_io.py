"""Kafka client helpers shared by the producer, the detector and the tests.

Clients are kafka-python's. Settings that matter for correctness live here once:
producers wait for all in-sync replicas (``acks='all'``) and retry; consumers never
auto-commit (the detector commits after its alerts are acknowledged); topics the project
creates keep records forever, because record timestamps are *event* time (base epoch +
``secs``), which time-based retention would treat as long expired.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from cyberstream import config

log = logging.getLogger(__name__)

#: Topic-level settings for every topic the project creates.
TOPIC_CONFIG: dict[str, str] = {"retention.ms": "-1", "retention.bytes": "-1"}


class BrokerUnavailable(RuntimeError):
    """No broker address could be found or reached; the message says what to do."""


def resolve_bootstrap(arg: str | None = None) -> str:
    """The broker address: ``arg``, else ``KAFKA_BOOTSTRAP_SERVERS``, else the local broker."""
    if arg:
        return arg
    value = config.env("KAFKA_BOOTSTRAP_SERVERS")
    if value:
        return value
    from cyberstream.broker import LocalBroker

    st = LocalBroker(config.state_dir()).state()
    if st is not None:
        return st.bootstrap
    raise BrokerUnavailable(
        "no Kafka broker given: pass --bootstrap-servers, set KAFKA_BOOTSTRAP_SERVERS, "
        "or start a local one with `cyberstream broker start`"
    )


def add_bootstrap_argument(parser: Any) -> None:
    """The ``--bootstrap-servers`` flag every Kafka-using subcommand shares."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers host:port (default: $KAFKA_BOOTSTRAP_SERVERS, "
        "else the local broker started by `cyberstream broker start`)",
    )


def json_bytes(obj: Any) -> bytes:
    """Compact JSON, the encoding of every message value the project writes."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def make_producer(bootstrap: str, **overrides: Any):
    """A reliable producer: acks=all, retries, idempotence, batching tuned for throughput."""
    from kafka import KafkaProducer

    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        retries=10,
        linger_ms=20,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=5,
        client_id="cyberstream-producer",
    )
    settings.update(overrides)
    return KafkaProducer(**settings)


def make_consumer(bootstrap: str, *topics: str, group_id: str | None, **overrides: Any):
    """A consumer that never auto-commits and reads from the earliest offset when new."""
    from kafka import KafkaConsumer

    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        client_id="cyberstream-consumer",
    )
    settings.update(overrides)
    return KafkaConsumer(*topics, **settings)


def make_admin(bootstrap: str, **overrides: Any):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cyberstream-admin", **overrides)


def topic_partitions(bootstrap: str, topic: str) -> int | None:
    """The number of partitions of ``topic``, or None if it does not exist."""
    admin = make_admin(bootstrap)
    try:
        meta = admin.describe_topics([topic])
    except Exception:  # kafka-python raises different errors for unknown topics across versions
        return None
    finally:
        admin.close()
    for t in meta:
        if (t.get("name") or t.get("topic")) == topic and not t.get("error_code"):
            return len(t.get("partitions") or []) or None
    return None


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 30.0) -> dict[str, int]:
    """Create the missing ``topics`` (name -> partitions); return every topic's partition count.

    An existing topic is left as it is; its real partition count is returned, so callers
    that need two topics co-partitioned can check.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = make_admin(bootstrap)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1, topic_configs=dict(TOPIC_CONFIG))
            for name, n in topics.items()
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process
            log.info("created topics %s", ", ".join(t.name for t in new))
    finally:
        admin.close()
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    for name in topics:
        while (n := topic_partitions(bootstrap, name)) is None:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"topic {name!r} did not appear within {timeout:.0f} s")
            time.sleep(0.2)
        counts[name] = n
    return counts


def dead_letter(source: str, reason: str, raw: bytes | str | None) -> bytes:
    """The dead-letter message for a record that could not be used: where, why, and the raw bytes.

    ``raw`` is kept as text when it decodes as UTF-8, else as hex, so nothing is lost.
    """
    if isinstance(raw, bytes):
        try:
            raw_text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raw_text, encoding = raw.hex(), "hex"
    else:
        raw_text, encoding = raw, "utf-8"
    return json_bytes(
        {"source": source, "reason": reason, "raw": raw_text, "raw_encoding": encoding, "at": round(time.time(), 3)}
    )


def at_end(consumer: Any, ends: Mapping[Any, int]) -> bool:
    """Whether ``consumer`` has read every assigned partition up to ``ends`` (partition -> offset)."""
    return all(consumer.position(tp) >= end for tp, end in ends.items())


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every message value of ``topic``, JSON-decoded, read from the start (no consumer group)
    up to the end offsets it has when the call begins: for scripts and tests.

    Raises :class:`TimeoutError` naming the topic when the topic does not exist or its
    records cannot all be read within ``timeout`` seconds: a partial list is never returned.
    """
    from kafka.structs import TopicPartition

    consumer = make_consumer(bootstrap, group_id=None, client_id="cyberstream-reader")
    values: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while not (parts := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic!r} did not appear within {timeout:.0f} s")
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while not at_end(consumer, ends):
            if time.monotonic() > deadline:
                got = sum(consumer.position(tp) for tp in tps)
                raise TimeoutError(f"read {got:,} of the {sum(ends.values()):,} records of {topic!r} "
                                   f"within {timeout:.0f} s")  # fmt: skip
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(json.loads(r.value) for r in records)
    finally:
        consumer.close()
    return values

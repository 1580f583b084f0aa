"""The detector's Kafka input: a consumer-group member that fetches in bulk.

It is librdkafka's consumer (confluent-kafka): fetching, decompression and record parsing
run in C on librdkafka's own threads, and a poll hands over up to ``max_records`` records
at once. kafka-python parses every record in Python (about 5-6 us each, two records per
event with its label), which alone would cap the detector far below the events/s that
the feature engine and the models sustain (see BENCHMARKS.md).

Rebalance callbacks run inside :meth:`GroupSource.poll` on the caller's thread, so the
detector can reposition and rebuild there; the new partitions start at the offsets the
callback returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

#: partition (topic, number)
Partition = tuple[str, int]


@dataclass
class Records:
    """One poll's records of one partition, in offset order."""

    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)  # ms (the producer's: event time)


def consumer_config(bootstrap: str, group_id: str, client_id: str, **overrides: object) -> dict[str, object]:
    """librdkafka settings: never auto-commit (offsets are committed with the checkpoint),
    read from the start when the group has no offset, large prefetch queues."""
    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # RangeAssignor gives the same partition numbers of the two co-partitioned topics
        # to the same member, so a detector owning events of partition p owns their labels.
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 600_000,
        "queued.max.messages.kbytes": 262_144,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
    }
    conf.update(overrides)
    return conf


class GroupSource:
    """A consumer-group member over some topics; see the module docstring.

    ``on_assign(partitions)`` returns the offset to start each new partition at (None:
    the beginning); ``on_revoke(partitions)`` is told which partitions are gone.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: list[str],
        client_id: str,
        on_assign: Callable[[list[Partition]], dict[Partition, int | None]],
        on_revoke: Callable[[list[Partition]], None],
    ) -> None:
        self.bootstrap = bootstrap
        self._consumer = Consumer(consumer_config(bootstrap, group_id, client_id))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.assigned: set[Partition] = set()
        self._closing = False
        self._consumer.subscribe(topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._revoke)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [(tp.topic, tp.partition) for tp in partitions]
        starts = self._on_assign(parts)
        positioned = []
        for topic, p in parts:
            start = starts.get((topic, p))
            positioned.append(TopicPartition(topic, p, OFFSET_BEGINNING if start is None else start))
        consumer.assign(positioned)
        self.assigned = set(parts)

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [(tp.topic, tp.partition) for tp in partitions]
        self.assigned -= set(parts)
        if not self._closing:  # leaving the group on close is not a hand-over of work
            self._on_revoke(parts)
        consumer.unassign()

    def poll(self, timeout: float, max_records: int) -> dict[Partition, Records]:
        """Up to ``max_records`` records, grouped by partition (rebalances happen in here)."""
        messages = self._consumer.consume(num_messages=max_records, timeout=timeout)
        out: dict[Partition, Records] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            key = (m.topic(), m.partition())
            recs = out.get(key)
            if recs is None:
                recs = out[key] = Records()
            recs.offsets.append(m.offset())
            recs.values.append(m.value())
            recs.keys.append(m.key())
            recs.timestamps.append(m.timestamp()[1])
        return out

    def committed(self, parts: list[Partition]) -> dict[Partition, int | None]:
        """The group's committed offsets (None where it has none)."""
        found = self._consumer.committed([TopicPartition(t, p) for t, p in parts], timeout=30)
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}

    def end_offsets(self) -> dict[Partition, int]:
        """The log-end offset of every assigned partition (asks the broker)."""
        ends = {}
        for topic, p in sorted(self.assigned):
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            ends[(topic, p)] = high
        return ends

    def positions(self) -> dict[Partition, int | None]:
        """The offset of the next record :meth:`poll` will hand over, per assigned partition."""
        if not self.assigned:
            return {}
        found = self._consumer.position([TopicPartition(t, p) for t, p in sorted(self.assigned)])
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit these next offsets for the group, synchronously."""
        if offsets:
            tps = [TopicPartition(t, p, off) for (t, p), off in offsets.items()]
            self._consumer.commit(offsets=tps, asynchronous=False)

    def close(self) -> None:
        self._closing = True
        self._consumer.close()


def read_partition(
    bootstrap: str, topic: str, partition: int, from_ms: int, end_offset: int, client_id: str
) -> Iterator[tuple[int, bytes | None]]:
    """(offset, value) of the partition's records from the first with a timestamp at or
    after ``from_ms`` up to ``end_offset`` (excluded), outside any consumer group."""
    reader = Consumer(consumer_config(bootstrap, f"{client_id}-reader", client_id))
    try:
        found = reader.offsets_for_times([TopicPartition(topic, partition, max(0, from_ms))], timeout=30)[0]
        start = found.offset if found.offset >= 0 else end_offset
        if start >= end_offset:
            return
        reader.assign([TopicPartition(topic, partition, start)])
        pos = start
        deadline = time.monotonic() + 120
        while pos < end_offset:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}]: offsets {pos}..{end_offset - 1} not readable in 120 s")
            for m in reader.consume(num_messages=10_000, timeout=1.0):
                if m.error() is not None:
                    continue
                if m.offset() >= end_offset:
                    return
                pos = m.offset() + 1
                yield m.offset(), m.value()
    finally:
        reader.close()


def last_timestamp(bootstrap: str, topic: str, partition: int, end_offset: int, client_id: str) -> int | None:
    """The timestamp (ms) of the record just before ``end_offset``, or None."""
    if end_offset <= 0:
        return None
    reader = Consumer(consumer_config(bootstrap, f"{client_id}-reader", client_id))
    try:
        reader.assign([TopicPartition(topic, partition, end_offset - 1)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for m in reader.consume(num_messages=1, timeout=0.5):
                if m.error() is None:
                    return m.timestamp()[1]
        return None
    finally:
        reader.close()

"""The detector's Kafka client: librdkafka (confluent-kafka) for everything on its hot path.

kafka-python parses every record in Python (about 5-6 us each, two records per event
with its label) and runs its network I/O on a Python thread that competes with the
detector for the GIL; that alone capped the detector far below the rate of its feature
engine and models (BENCHMARKS.md). librdkafka fetches, decompresses and parses in C on
its own threads, and one call hands over thousands of records.

* :class:`GroupSource`: a consumer-group member over the event and label topics. Its
  rebalance callbacks run inside :meth:`GroupSource.poll`, on the caller's thread, so the
  detector repositions and rebuilds its windows right there; every new partition starts
  at the offset the detector's ``on_assign`` returns (the checkpoint's, the group's, or
  the log start). It tracks, per partition, the offset after the last record handed over,
  which is what "caught up with the broker" is measured against.
* :func:`read_partition`: one partition's records from a timestamp on, outside any group
  (the detector's window rebuild after a restart).
* :class:`Sender`: a producer for alerts and dead letters (acks=all, idempotent); failed
  deliveries are collected and reported by the detector before it commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

log = logging.getLogger(__name__)

#: a partition: (topic, number)
Partition = tuple[str, int]


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
        # Quick heartbeats: a member notices a rebalance (a member joining or leaving) within
        # a quarter second, instead of processing on alone while the newcomer waits.
        "heartbeat.interval.ms": 250,
        "max.poll.interval.ms": 600_000,
        "queued.max.messages.kbytes": 262_144,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "fetch.wait.max.ms": 100,
    }
    conf.update(overrides)
    return conf


def take(consumer: Consumer, max_records: int, timeout: float,
         generation: Callable[[], int] | None = None) -> list[Message]:  # fmt: skip
    """Up to ``max_records`` messages: what is queued, at once; an empty queue waits up to
    ``timeout`` seconds for its first message only. (``consume`` with a timeout waits until
    the batch is full, which costs its whole timeout whenever fewer records are left.)

    ``generation`` (a group member's count of rebalances) guards the one place where two
    librdkafka calls are joined: when a rebalance runs in the second, the first message
    belongs to the old assignment. It is left out; the new assignment positions its
    partition again, so it is fetched again if the partition is still ours.
    """
    messages = consumer.consume(num_messages=max_records, timeout=0)
    if messages:
        return messages
    first = consumer.poll(timeout)
    if first is None:
        return []
    before = generation() if generation is not None else None
    rest = consumer.consume(num_messages=max_records - 1, timeout=0)
    if generation is not None and generation() != before:
        return rest
    return [first, *rest]


class GroupSource:
    """A consumer-group member over ``topics`` (see the module docstring).

    ``on_assign(partitions)`` returns the offset to start each new partition at (None:
    the log start); ``on_revoke(partitions)`` is told which partitions are gone.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: list[str],
        client_id: str,
        on_assign: Callable[[list[Partition]], dict[Partition, int | None]],
        on_revoke: Callable[[list[Partition]], None],
        **overrides: object,
    ) -> None:
        """``overrides``: librdkafka settings over :func:`consumer_config`'s."""
        self._consumer = Consumer(consumer_config(bootstrap, group_id, client_id, **overrides))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        #: assigned partition -> offset after the last record handed over (or its start)
        self.fetched: dict[Partition, int] = {}
        self._closing = False
        self._generation = 0  # assignments and revocations so far
        self._consumer.subscribe(topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._revoke)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._generation += 1
        parts = [(tp.topic, tp.partition) for tp in partitions]
        starts = self._on_assign(parts)
        positioned = []
        for topic, p in parts:
            start = starts.get((topic, p))
            if start is None:
                start, _high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
            positioned.append(TopicPartition(topic, p, start))
            self.fetched[(topic, p)] = start
        consumer.assign(positioned)

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._generation += 1
        parts = [(tp.topic, tp.partition) for tp in partitions]
        for part in parts:
            self.fetched.pop(part, None)
        if not self._closing:  # leaving the group on close is not a hand-over of work
            self._on_revoke(parts)
        consumer.unassign()

    def poll(self, timeout: float, max_records: int) -> dict[Partition, list[Message]]:
        """Up to ``max_records`` records, grouped by partition in offset order (rebalances
        happen in here). The records are librdkafka's messages: ``offset()``, ``value()``,
        ``key()``, ``timestamp()[1]`` (ms; the producer's, i.e. event time)."""
        messages = take(self._consumer, max_records, timeout, generation=lambda: self._generation)
        out: dict[Partition, list[Message]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                # librdkafka reports a fatal error (e.g. a fenced static member) as an _FATAL
                # event whose error is not flagged fatal itself: going on would leave a zombie.
                if err.fatal() or err.code() == KafkaError._FATAL:
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            key = (m.topic(), m.partition())
            recs = out.get(key)
            if recs is None:
                recs = out[key] = []
            recs.append(m)
        fetched = self.fetched
        for key, recs in list(out.items()):
            if key not in fetched:  # fetched before a revocation handled in this very call
                del out[key]
            else:
                fetched[key] = recs[-1].offset() + 1
        return out

    def committed(self, parts: list[Partition]) -> dict[Partition, int | None]:
        """The group's committed offsets (None where it has none)."""
        found = self._consumer.committed([TopicPartition(t, p) for t, p in parts], timeout=30)
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}

    def end_offsets(self) -> dict[Partition, int]:
        """The log-end offset of every assigned partition as of its latest fetch response
        (every response carries it, empty ones too); partitions not fetched yet are absent.

        Asking the broker instead costs a round trip queued behind the fetch long-poll."""
        ends = {}
        for topic, p in self.fetched:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            if high >= 0:
                ends[(topic, p)] = high
        return ends

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
            for m in take(reader, 10_000, 1.0):
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


class Sender:
    """A reliable producer (acks=all, idempotent) whose failed deliveries are collected in
    :attr:`errors` rather than lost; :meth:`flush` waits for every acknowledgement."""

    def __init__(self, bootstrap: str, client_id: str, **overrides: object) -> None:
        conf: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
        }
        conf.update(overrides)
        self._producer = Producer(conf)
        self.errors: list[BaseException] = []

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self.errors.append(KafkaException(err))

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one message (delivery reports are served here and in :meth:`flush`)."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued message is acknowledged or has failed."""
        left = self._producer.flush(timeout)
        if left:
            self.errors.append(TimeoutError(f"{left} messages not acknowledged within {timeout:g} s"))

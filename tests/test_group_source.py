"""The detector's consumer-group member against a real broker, where the group goes wrong:
partitions lost (not handed over) and a fatal consumer error."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException

from cyberstream.kafka_io import ensure_topics, make_producer
from detector.rdkafka_io import GroupSource, consumer_config
from tests.waits import wait_for

pytestmark = pytest.mark.integration


def _one_record_topic(bootstrap: str, topic: str) -> None:
    ensure_topics(bootstrap, {topic: 1})
    producer = make_producer(bootstrap)
    producer.send(topic, key=b"k", value=b"{}")
    producer.flush()
    producer.close()


def _member(bootstrap: str, group: str, topic: str, events: list, **overrides) -> GroupSource:
    def on_assign(parts):
        events.append(("assigned", sorted(parts)))
        return {}

    return GroupSource(bootstrap, group, [topic], f"{group}-member", on_assign=on_assign,
                       on_revoke=lambda parts: events.append(("revoked", sorted(parts))), **overrides)  # fmt: skip


def test_a_fenced_static_member_raises_the_fatal_error(kafka_bootstrap, topic_name):
    """A second consumer with the same group.instance.id fences the first: librdkafka's fatal
    error reaches the caller of poll (the detector then stops with it) instead of a warning."""
    _one_record_topic(kafka_bootstrap, topic_name)
    group, events = f"g-{uuid.uuid4().hex[:8]}", []
    source = _member(kafka_bootstrap, group, topic_name, events, **{"group.instance.id": "detector-1"})
    intruder = None
    try:
        got = []
        wait_for(lambda: got.extend(source.poll(0.2, 100).get((topic_name, 0), [])) or got,
                 "the first member's record", timeout=60)  # fmt: skip
        assert events == [("assigned", [(topic_name, 0)])]
        intruder = Consumer(consumer_config(kafka_bootstrap, group, f"{group}-intruder",
                                            **{"group.instance.id": "detector-1"}))  # fmt: skip
        intruder.subscribe([topic_name])
        with pytest.raises(KafkaException) as raised:
            wait_for(lambda: intruder.poll(0.1) and False or source.poll(0.2, 100) and False,
                     "the fenced member's fatal error", timeout=60)  # fmt: skip
        err = raised.value.args[0]
        assert err.code() == KafkaError._FATAL, err
        assert "Static consumer fenced by other consumer with same group.instance.id" in err.str(), err
    finally:
        if intruder is not None:
            intruder.close()
        source.close()


def test_lost_partitions_are_reported_and_their_records_no_longer_handed_over(kafka_bootstrap, topic_name):
    """A member that does not poll for longer than max.poll.interval.ms leaves the group: its
    partitions are lost, the detector is told (on_revoke, whose commit then fails and is
    redone by the next owner), and nothing fetched for them is handed over afterwards."""
    _one_record_topic(kafka_bootstrap, topic_name)
    group, events = f"g-{uuid.uuid4().hex[:8]}", []
    # The broker's minimum session timeout is 6 s; a poll interval may not be shorter.
    source = _member(kafka_bootstrap, group, topic_name, events,
                     **{"session.timeout.ms": 6000, "max.poll.interval.ms": 6000})  # fmt: skip
    try:
        got = []
        wait_for(lambda: got.extend(source.poll(0.2, 100).get((topic_name, 0), [])) or got,
                 "the member's record", timeout=60)  # fmt: skip
        assert source.fetched == {(topic_name, 0): 1}
        time.sleep(8)  # the fault injected: no poll for longer than max.poll.interval.ms (not a wait)
        wait_for(lambda: source.poll(0.2, 100) == {} and any(e[0] == "revoked" for e in events),
                 "the lost partitions' report", timeout=60)  # fmt: skip
        assert events[:2] == [("assigned", [(topic_name, 0)]), ("revoked", [(topic_name, 0)])], events
        # It rejoins and gets the partition back, from the log start (nothing was committed).
        wait_for(lambda: source.poll(0.2, 100) == {} and len(events) >= 3, "the re-assignment", timeout=60)
        assert events[2] == ("assigned", [(topic_name, 0)]), events
    finally:
        source.close()

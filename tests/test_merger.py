"""The event-time merger on its own: no broker, real Kafka messages built in memory."""

from __future__ import annotations

import json
import time

from confluent_kafka import Message

from cyberstream.schema import Event, LabelRecord
from detector.merger import EventTimeMerger
from detector.progress import Stats

EVENTS, LABELS = "ev", "lab"
BASE = 1_577_836_800


class Positions:
    """The broker's side of a consumer, as the merger asks it: each partition's end offset
    (``end_offsets()``) and how far this consumer has fetched it (``fetched``)."""

    def __init__(self) -> None:
        self.ends: dict[tuple[str, int], int] = {}
        self.fetched: dict[tuple[str, int], int] = {}

    def end_offsets(self) -> dict[tuple[str, int], int]:
        return dict(self.ends)



def caught_up(m: EventTimeMerger, topic: str, p: int, offset: int) -> None:
    """The consumer has fetched partition ``p`` to its end, ``offset``; the merger asks again
    (it asks the broker at most every 0.5 s)."""
    m.source.ends[(topic, p)] = m.source.fetched[(topic, p)] = offset
    m.end_offsets_at = 0.0


def event(log_id: int, secs: int, user: str = "U1") -> Event:
    return Event(log_id, secs, f"{user}@DOM1", "U1@DOM1", "C1", "C2", "NTLM", "Network", "LogOn", "Success")


def event_msg(p: int, offset: int, ev: Event) -> Message:
    return Message(topic=EVENTS, partition=p, offset=offset, key=b"k", value=ev.to_json(),
                   timestamp=(1, (BASE + ev.secs) * 1000))  # fmt: skip


def label_msg(p: int, offset: int, lab: LabelRecord, arrival: int) -> Message:
    return Message(topic=LABELS, partition=p, offset=offset, key=b"k", value=lab.to_json(),
                   timestamp=(1, (BASE + arrival) * 1000))  # fmt: skip


def merger(**kw) -> tuple[EventTimeMerger, list, Positions]:
    letters: list = []
    m = EventTimeMerger(EVENTS, LABELS, base_epoch=BASE, idle_grace_secs=kw.pop("idle_grace_secs", 60.0),
                        allowed_lateness_secs=kw.pop("allowed_lateness_secs", 60),
                        dead_letter=lambda *a: letters.append(a), stats=Stats())  # fmt: skip
    m.source = Positions()
    m.assign([(EVENTS, 0), (EVENTS, 1), (LABELS, 0), (LABELS, 1)], {}, lambda missing: {}, lambda *a: None)
    return m, letters, m.source


def test_seconds_come_out_in_event_time_order_across_partitions():
    m, _, _ = merger()
    m.enqueue({(EVENTS, 0): [event_msg(0, 0, event(0, 10)), event_msg(0, 1, event(1, 10)),
                             event_msg(0, 2, event(4, 12))],
               (EVENTS, 1): [event_msg(1, 0, event(2, 11)), event_msg(1, 1, event(3, 13))]})  # fmt: skip
    assert m.horizon() == 11  # both partitions hold a later event than 11
    seconds = []
    while (s := m.earliest()) is not None and s <= m.horizon():
        seconds.append((s, [(p, [ev.log_id for ev in evs]) for p, evs in m.take_second(s)]))
    assert seconds == [(10, [(0, [0, 1])]), (11, [(1, [2])])]
    assert m.processed_secs == 11
    assert m.offsets() == {"events": {0: 2, 1: 1}, "labels": {}}


def test_a_caught_up_partition_is_complete_after_the_grace_or_when_the_others_are_far_ahead():
    m, _, _ = merger(idle_grace_secs=0.5, allowed_lateness_secs=60)
    m.enqueue({(EVENTS, 0): [event_msg(0, 0, event(0, 10))], (EVENTS, 1): [event_msg(1, 0, event(1, 30))]})
    assert not m.complete_through(10)  # partition 0 could still be fetching second 10
    caught_up(m, EVENTS, 0, 1)
    caught_up(m, EVENTS, 1, 1)
    assert not m.complete_through(10)  # caught up, but a producer may still be writing it
    m.last_data = time.monotonic() - 1.0  # the stream paused for longer than the grace
    assert m.complete_through(10)
    m.last_data = time.monotonic()
    m.enqueue({(EVENTS, 1): [event_msg(1, 1, event(2, 71))]})
    caught_up(m, EVENTS, 1, 2)
    assert m.complete_through(10)  # partition 1 is more than 60 s of event time ahead


def test_late_events_are_dead_lettered_and_event_time_never_goes_back():
    m, letters, _ = merger()
    m.enqueue({(EVENTS, 0): [event_msg(0, 0, event(0, 20))], (EVENTS, 1): [event_msg(1, 0, event(1, 5))]})
    m.take_second(20)  # (as when partition 1 lagged behind)
    assert m.stats.late == 0  # 5 > -1: nothing was processed yet
    m.enqueue({(EVENTS, 1): [event_msg(1, 1, event(2, 7))]})
    taken = m.take_second(15)
    assert taken == [] and m.stats.late == 1
    source, reason, raw, key = letters[0]
    assert source == "ev[1]@1"
    assert reason.startswith("late event: secs 7 arrived after event time 20 was processed")
    assert json.loads(raw)["log_id"] == 2 and key is None
    assert m.processed_secs == 20  # not 15
    assert m.offsets()["events"] == {0: 1, 1: 2}  # the late event counts as processed


def test_a_malformed_record_is_processed_only_after_the_records_queued_before_it():
    m, letters, _ = merger()
    bad = Message(topic=EVENTS, partition=0, offset=1, key=b"k", value=b"not json", timestamp=(1, 0))
    m.enqueue({(EVENTS, 0): [event_msg(0, 0, event(0, 10)), bad]})
    assert m.stats.malformed == 1 and letters[0][0] == "ev[0]@1" and letters[0][2] == b"not json"
    assert m.offsets()["events"] == {}  # offset 0 is not processed yet, so neither is 1
    m.take_second(10)
    assert m.offsets()["events"] == {0: 2}
    m.enqueue({(EVENTS, 1): [Message(topic=EVENTS, partition=1, offset=4, value=b"{}", timestamp=(1, 0))]})
    assert m.offsets()["events"] == {0: 2, 1: 5}  # nothing queued before it: processed at once


def test_labels_come_out_by_arrival_before_a_boundary():
    m, _, _ = merger(idle_grace_secs=0.0)
    early, late = LabelRecord("a / b", 0, 10, False), LabelRecord("a / b", 1, 11, True)
    m.enqueue({(LABELS, 0): [label_msg(0, 0, early, 40), label_msg(0, 1, late, 70)]})
    assert not m.labels_complete_before(60)  # partition 1 has said nothing yet
    caught_up(m, LABELS, 1, 0)
    assert m.labels_complete_before(60)  # partition 0 holds a later label; 1 is caught up
    assert m.take_labels(60) == [(early, 40)]
    assert m.offsets()["labels"] == {0: 1}
    assert m.take_labels(71) == [(late, 70)]


def test_an_assignment_resumes_from_the_checkpoint_then_the_group_and_never_ahead_of_a_taken_over_partition():
    m, _, _ = merger()
    m.reset()
    m.processed_secs = 500  # restored from this member's checkpoint
    asked = []

    def committed(missing):
        asked.extend(missing)
        return {(EVENTS, 1): 7, (LABELS, 1): 2}

    assigned = [(EVENTS, 0), (EVENTS, 1), (LABELS, 0), (LABELS, 1)]
    starts = m.assign(assigned, {"events": {0: 5}, "labels": {0: 3}}, committed,
                      lambda topic, p, end: 450 if (topic, p, end) == (EVENTS, 1, 7) else None)  # fmt: skip
    assert asked == [(EVENTS, 1), (LABELS, 1)]  # the group is asked only what the checkpoint lacks
    assert starts == {(EVENTS, 0): 5, (EVENTS, 1): 7, (LABELS, 0): 3, (LABELS, 1): 2}
    assert m.offsets() == {"events": {0: 5, 1: 7}, "labels": {0: 3, 1: 2}}
    assert m.processed_secs == 450  # the other member had reached 450 on partition 1
    assert sorted(m.event_q) == [0, 1] and sorted(m.label_q) == [0, 1]

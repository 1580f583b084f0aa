"""The event-time merger: the assigned partitions' records merged into one event time.

Events and labels are buffered per partition as they are polled. Second ``s`` of event time
is complete once every events partition is known through ``s``: it holds a later event, or
it is caught up with the broker and either the stream paused for ``idle_grace_secs`` or
the other partitions are more than ``allowed_lateness_secs`` ahead. An event whose second
was already processed is late: it is dead-lettered, and event time never goes back.
Labels are merged the same way by their arrival (their record timestamp, in event time).

The merger also holds the positions: the next offset of every partition of both topics
(what a commit saves), set at an assignment from the checkpoint or the group's commits.
A dead-lettered record counts as processed once every record queued before it is.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cyberstream.schema import Event, LabelRecord, SchemaError, decode_event, decode_label
from detector.progress import Stats
from detector.rdkafka_io import Partition

log = logging.getLogger(__name__)

#: (source "topic[p]@offset", reason, raw value, key): sends one record to the dead-letter topic
DeadLetter = Callable[[str, str, bytes | None, bytes | None], None]


class EventTimeMerger:
    """Partition queues, event-time completeness, late events, positions (see the module docstring).

    ``source`` (set once the consumer exists) answers ``end_offsets()`` and ``fetched``: how
    far the broker's partitions go, and how far this consumer has read them.
    """

    def __init__(self, events_topic: str, labels_topic: str, *, base_epoch: int, idle_grace_secs: float,
                 allowed_lateness_secs: int, dead_letter: DeadLetter, stats: Stats):  # fmt: skip
        self.events_topic, self.labels_topic = events_topic, labels_topic
        self.base_epoch = base_epoch
        self.idle_grace_secs = idle_grace_secs
        #: a caught-up partition waits for its own next record (a finite replay with an end file)
        self.wait_for_records = False
        self.allowed_lateness_secs = allowed_lateness_secs
        self.dead_letter = dead_letter
        self.stats = stats
        self.source: Any = None
        self.end_offsets: dict[Partition, int] = {}
        self.end_offsets_at = 0.0
        self.last_data = time.monotonic()  # when records last came in
        self.reset()

    def reset(self) -> None:
        """No partition, nothing queued, no second processed (before an assignment)."""
        self.event_q: dict[int, deque] = {}  # partition -> (offset, Event)
        self.label_q: dict[int, deque] = {}  # partition -> (offset, LabelRecord, arrival secs)
        self.next_event_offset: dict[int, int] = {}
        self.next_label_offset: dict[int, int] = {}
        # partition -> offset after a dead-lettered record that sits behind unprocessed ones
        self.skipped_events: dict[int, int] = {}
        self.skipped_labels: dict[int, int] = {}
        self.processed_secs = -1  # last second fully processed

    # ------------------------------------------------------------------ positions
    def assign(self, assigned: list[Partition], saved: dict[str, dict[int, int]],
               committed: Callable[[list[Partition]], dict[Partition, int]],
               last_secs: Callable[[str, int, int], int | None]) -> dict[Partition, int | None]:  # fmt: skip
        """Queues and positions for a new assignment; return the offset each partition
        resumes at (None: the log start).

        ``saved`` is the checkpoint's offsets; ``committed`` gives the group's commits of the
        partitions the checkpoint lacks; ``last_secs(topic, p, end)`` the event time of the
        record before ``end``. Call after :meth:`reset` and after restoring :attr:`processed_secs`.
        """
        parts = sorted({p for topic, p in assigned if topic == self.events_topic})
        label_parts = sorted({p for topic, p in assigned if topic == self.labels_topic})
        if parts != label_parts:
            log.warning("events partitions %s and labels partitions %s differ: are the topics co-partitioned?",
                        parts, label_parts)  # fmt: skip
        for p in parts:
            self.event_q.setdefault(p, deque())
            self.label_q.setdefault(p, deque())
        for p in label_parts:
            self.label_q.setdefault(p, deque())
        key_of = {self.events_topic: "events", self.labels_topic: "labels"}  # the checkpoint's names
        missing = [(topic, p) for topic, p in assigned if saved.get(key_of[topic], {}).get(p) is None]
        from_group = committed(missing) if missing else {}
        starts: dict[Partition, int | None] = {}
        for topic, p in assigned:
            key = key_of[topic]
            start = saved.get(key, {}).get(p)
            if start is None:
                start = from_group.get((topic, p))
            starts[(topic, p)] = start
            if start is not None:
                (self.next_event_offset if key == "events" else self.next_label_offset)[p] = start
            if start and key == "events" and p not in saved.get("events", {}) and self.processed_secs >= 0:
                # Taken over from another member, who reached another event time: resume the
                # seconds from the earlier of the two, so its events are not taken for late ones.
                secs = last_secs(topic, p, start)
                if secs is not None:
                    self.processed_secs = min(self.processed_secs, secs)
        return starts

    def offsets(self) -> dict[str, dict[int, int]]:
        """The next offset of every partition: everything before it is processed."""
        return {"events": dict(self.next_event_offset), "labels": dict(self.next_label_offset)}

    # ------------------------------------------------------------------ input
    def enqueue(self, records: dict[Partition, list]) -> None:
        """Decode polled records into their partition's queue; dead-letter malformed ones."""
        self.last_data = time.monotonic()
        for (topic, p), recs in records.items():
            if topic == self.events_topic:
                q = self.event_q.setdefault(p, deque())
                for m in recs:
                    try:
                        q.append((m.offset(), decode_event(m.value())))
                    except SchemaError as exc:
                        self._malformed(topic, p, m.offset(), m.value(), m.key(), exc.reason)
                        _skip(self.next_event_offset, self.skipped_events, q, p, m.offset())
            else:
                q = self.label_q.setdefault(p, deque())
                base_epoch = self.base_epoch
                for m in recs:
                    try:
                        lab = decode_label(m.value())
                    except SchemaError as exc:
                        self._malformed(topic, p, m.offset(), m.value(), m.key(), exc.reason)
                        _skip(self.next_label_offset, self.skipped_labels, q, p, m.offset())
                        continue
                    # Arrival in event time: the record timestamp the producer stamped.
                    q.append((m.offset(), lab, m.timestamp()[1] // 1000 - base_epoch))

    def _malformed(self, topic: str, partition: int, offset: int, raw: bytes | None, key: bytes | None,
                   reason: str) -> None:  # fmt: skip
        self.stats.malformed += 1
        self.dead_letter(f"{topic}[{partition}]@{offset}", reason, raw, key)

    # ------------------------------------------------------------------ output, one second at a time
    def horizon(self) -> int:
        """A second up to which every second is complete without asking the broker (every
        partition holds a later event), or -1."""
        queues = list(self.event_q.values())
        return min(q[-1][1].secs for q in queues) - 1 if queues and all(queues) else -1

    def earliest(self) -> int | None:
        """The earliest queued second, or None when no event is queued."""
        heads = [q[0][1].secs for q in self.event_q.values() if q]
        return min(heads) if heads else None

    def complete_through(self, secs: int) -> bool:
        """Whether no events partition can still deliver an event of a second up to ``secs``."""
        return all(self._known_through(self.events_topic, q, p, secs, _event_secs) for p, q in self.event_q.items())

    def labels_complete_before(self, boundary: int) -> bool:
        """Whether every label arriving before ``boundary`` is queued."""
        return all(self._known_through(self.labels_topic, q, p, boundary - 1, _label_arrival)
                   for p, q in self.label_q.items())  # fmt: skip

    def take_second(self, s: int) -> list[tuple[int, list[Event]]]:
        """The queued events up to second ``s``, per partition, in partition and offset order;
        those of seconds already processed are dead-lettered as late. ``s`` is processed then."""
        closed = self.processed_secs
        taken = []
        for p, q in self.event_q.items():
            offset = None
            events = []
            while q and q[0][1].secs <= s:
                offset, ev = q.popleft()
                if ev.secs <= closed:  # its second is closed: featuretools' answer has changed
                    self._late(p, offset, ev)
                    continue
                events.append(ev)
            if offset is not None:
                self.next_event_offset[p] = offset + 1
            if not q:
                _drained(self.next_event_offset, self.skipped_events, p)
            if events:
                taken.append((p, events))
        # A second before the last one processed held only late events (dead-lettered above):
        # event time does not go back, or the next events of that partition would pass as on time.
        self.processed_secs = max(self.processed_secs, s)
        return taken

    def take_labels(self, boundary: int) -> list[tuple[LabelRecord, int]]:
        """The queued labels that arrived before ``boundary``, with their arrival, per partition."""
        taken = []
        for p, q in self.label_q.items():
            offset = None
            while q and q[0][2] < boundary:
                offset, lab, arrival = q.popleft()
                taken.append((lab, arrival))
            if offset is not None:
                self.next_label_offset[p] = offset + 1
            if not q:
                _drained(self.next_label_offset, self.skipped_labels, p)
        return taken

    def _late(self, partition: int, offset: int, ev: Event) -> None:
        self.stats.late += 1
        reason = (f"late event: secs {ev.secs} arrived after event time {self.processed_secs} was processed "
                  f"(beyond --allowed-lateness-secs {self.allowed_lateness_secs})")  # fmt: skip
        self.dead_letter(f"{self.events_topic}[{partition}]@{offset}", reason, ev.to_json(), None)

    # ------------------------------------------------------------------ the broker's side
    def _refresh_end_offsets(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.end_offsets_at < 0.5:
            return
        self.end_offsets = self.source.end_offsets()
        self.end_offsets_at = now

    def _partition_caught_up(self, topic: str, p: int) -> bool:
        end = self.end_offsets.get((topic, p))
        fetched = self.source.fetched.get((topic, p))
        return end is not None and fetched is not None and fetched >= end

    def caught_up(self, held: bool = False) -> bool:
        """Every assigned partition is read to its end offset, and every events partition
        processed (unless ``held``: events may remain queued, as a finite replay's last
        seconds are). Labels may wait in their queue for their arrival time."""
        if not self.event_q:  # not assigned yet (a rejoin can wait for a dead member's session)
            return False
        self._refresh_end_offsets(force=True)
        return all(self._partition_caught_up(self.events_topic, p) and (held or not self.event_q[p])
                   for p in self.event_q) and all(
            self._partition_caught_up(self.labels_topic, p) for p in self.label_q)  # fmt: skip

    def lag(self) -> int:
        """Events on the broker not yet processed."""
        if self.source is None:
            return 0
        self._refresh_end_offsets()
        total = 0
        for (topic, p), end in self.end_offsets.items():
            if topic == self.events_topic:
                total += max(0, end - self.next_event_offset.get(p, 0))
        return total

    def _known_through(self, topic: str, q: deque, p: int, secs: int, key: Callable) -> bool:
        """Whether partition ``p`` can hold no more records up to event time ``secs``.

        True when it has a later record. When it is caught up with the broker, a producer may
        still be writing to it (its partitions are written a few milliseconds apart), so it
        also needs the stream to have paused for ``idle_grace_secs`` (not with ``wait_for_records``:
        a finite replay ends with its end file), or the other partitions to be more than
        ``allowed_lateness_secs`` of event time ahead.
        """
        if q and key(q[-1]) > secs:
            return True
        self._refresh_end_offsets()
        if not self._partition_caught_up(topic, p):
            return False
        if not self.wait_for_records and time.monotonic() - self.last_data >= self.idle_grace_secs:
            return True
        queues = self.event_q if topic == self.events_topic else self.label_q
        ahead = max((key(other[-1]) for other in queues.values() if other), default=-1)
        return ahead > secs + self.allowed_lateness_secs


def _event_secs(item: tuple) -> int:
    return item[1].secs


def _label_arrival(item: tuple) -> int:
    return item[2]


def _skip(next_offset: dict[int, int], skipped: dict[int, int], q: deque, partition: int, offset: int) -> None:
    """A dead-lettered record counts as processed once every record queued before it is."""
    if q:
        skipped[partition] = offset + 1
    else:
        next_offset[partition] = offset + 1


def _drained(next_offset: dict[int, int], skipped: dict[int, int], partition: int) -> None:
    if partition in skipped:
        next_offset[partition] = max(next_offset.get(partition, 0), skipped.pop(partition))

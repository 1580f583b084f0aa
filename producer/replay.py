"""Replay a CyberFLTenDays CSV into Kafka in event-time order.

* Order: by ``secs``, stable (ties keep file order). A real LANL file and a generated one
  are already sorted; a quick first pass checks it (and counts rows for the progress bar).
  An unsorted file is sorted by an external merge sort (sorted runs of ``sort_chunk_rows``
  rows in temporary files, merged by ``(secs, log_id)``), so memory stays bounded; a
  warning says so.
* ``log_id`` is the row's number in the file (0-based, header excluded, CSV records as
  :mod:`csv` reads them), the same numbering ``training.data`` uses.
* Event message: key = connection id, value = :meth:`Event.to_json`, timestamp =
  ``(base_epoch + secs) * 1000``. Partition = kafka-python's default (murmur2 of the key),
  computed once per connection, so the label of an event lands on the same partition
  number of the (equally partitioned) label topic.
* Label message: :class:`~cyberstream.schema.LabelRecord`, same key, published when event
  time reaches ``secs + label_delay``, timestamp ``(base_epoch + secs + label_delay) * 1000``.
* Malformed rows: the dead-letter topic gets the raw row and the reason
  (:func:`cyberstream.kafka_io.dead_letter`, key = the ``log_id``); they are counted and
  the replay goes on. In a sorted file a malformed row belongs to the slice
  (``from_secs``/``until_secs``) of the rows around it; an unsorted file's malformed rows
  are all dead-lettered during the sorting pass.
* Delivery: acks=all with retries (:func:`cyberstream.kafka_io.make_producer`), every send
  has an error callback, the producer is flushed before the summary; anything lost makes
  :attr:`ReplaySummary.ok` false.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import pickle
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cyberstream import kafka_io
from cyberstream.connections import DEFAULT_CONNECTION, connection_id_of
from cyberstream.schema import (
    COLUMNS,
    HEADER,
    LABEL_CLEAN,
    LABEL_MALICIOUS,
    SchemaError,
    parse_row,
)

log = logging.getLogger(__name__)

DAY = 86_400
#: Dead-letter ``source`` of rows rejected by the producer.
DLQ_SOURCE = "producer"
#: Bytes read from the CSV at a time.
READ_BUFFER = 16 << 20
#: Synchronous send failures in a row after which the broker is considered gone.
MAX_CONSECUTIVE_SEND_ERRORS = 50


@dataclass
class ReplaySettings:
    """What to replay where, and how fast. ``speed=None`` means as fast as possible."""

    data: Path
    bootstrap: str
    events_topic: str
    labels_topic: str
    dlq_topic: str
    partitions: int
    base_epoch: int
    speed: float | None = None
    label_delay: int = 0
    from_secs: int | None = None
    until_secs: int | None = None  # exclusive
    connection_kind: str = DEFAULT_CONNECTION
    sort_chunk_rows: int = 1_000_000
    progress: bool = True
    producer_overrides: dict = field(default_factory=dict)


@dataclass
class ReplaySummary:
    """Counts of one replay."""

    rows: int = 0  # CSV records read (good and bad)
    events_sent: int = 0
    labels_sent: int = 0
    malicious_labels: int = 0
    dead_letters: int = 0
    skipped: int = 0  # outside --from-secs/--until-secs
    failed: int = 0  # messages the broker did not acknowledge
    sorted_input: bool = True
    first_secs: int | None = None
    last_secs: int | None = None
    elapsed: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.interrupted

    def lines(self) -> list[str]:
        rate = self.events_sent / self.elapsed if self.elapsed > 0 else 0.0
        span = (
            f"secs {self.first_secs:,} .. {self.last_secs:,}" if self.first_secs is not None else "no events"
        )
        out = [
            f"rows read       {self.rows:,}"
            + ("" if self.sorted_input else " (unsorted input, sorted externally)"),
            f"events sent     {self.events_sent:,} ({span}), {rate:,.0f} events/s over {self.elapsed:.1f} s",
            f"labels sent     {self.labels_sent:,} ({self.malicious_labels:,} malicious)",
            f"dead letters    {self.dead_letters:,} malformed rows",
            f"skipped         {self.skipped:,} rows outside the requested slice",
            f"failed          {self.failed:,} messages not acknowledged by the broker",
        ]
        if self.interrupted:
            out.append("interrupted before the end of the file")
        return out


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
#: One CSV record: (log_id, fields, raw text for the dead-letter topic).
Record = tuple[int, list[str], str]


def _check_header(path: Path, header: str) -> None:
    if [h.strip() for h in header.strip().split(",")] != list(COLUMNS):
        raise ValueError(f"{path}: first line must be the header {HEADER!r}, got {header.strip()[:200]!r}")


def read_records(path: Path) -> Iterator[Record]:
    """The records of ``path`` in file order; the first line must be the header."""
    # A large buffer means few read system calls; each one releases the GIL, which
    # kafka-python's sender thread may then hold for up to a switch interval (5 ms).
    with open(path, newline="", encoding="utf-8", errors="surrogateescape", buffering=READ_BUFFER) as fh:
        _check_header(path, fh.readline())
        consumed: list[str] = []

        def lines() -> Iterator[str]:
            for line in fh:
                consumed.append(line)
                yield line

        for log_id, fields in enumerate(csv.reader(lines())):
            raw = consumed[0].rstrip("\r\n") if len(consumed) == 1 else "".join(consumed).rstrip("\r\n")
            consumed.clear()
            yield log_id, fields, raw


def _leading_secs(line: str) -> int | None:
    head = line.split(",", 1)[0].strip()
    return int(head) if head.isdigit() and head.isascii() else None


def scan(path: Path) -> tuple[int, bool]:
    """(number of lines after the header, whether the rows with a valid ``secs`` are sorted).

    A cheap pass over the first field only; the row count may exceed the record count
    when quoted fields span lines (it only sizes the progress bar).
    """
    n, last, ordered = 0, -1, True
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        _check_header(path, fh.readline())
        for line in fh:
            n += 1
            if ordered:
                secs = _leading_secs(line)
                if secs is not None:
                    if secs < last:
                        ordered = False
                    last = secs
    return n, ordered


def _write_run(rows: list[tuple[int, int, list[str]]], directory: Path, index: int) -> Path:
    rows.sort(key=lambda r: (r[0], r[1]))
    path = directory / f"run-{index:05d}.pickle"
    with open(path, "wb") as fh:
        for i in range(0, len(rows), 10_000):
            pickle.dump(rows[i : i + 10_000], fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _read_run(path: Path) -> Iterator[tuple[int, int, list[str]]]:
    with open(path, "rb") as fh:
        while True:
            try:
                batch = pickle.load(fh)
            except EOFError:
                return
            yield from batch


def sorted_records(path: Path, chunk_rows: int) -> Iterator[Record]:
    """Records of an unsorted file in ``(secs, log_id)`` order, by an external merge sort.

    Sorted runs of ``chunk_rows`` good rows go to temporary files, then a k-way merge reads
    them back a batch at a time. Records that do not parse are yielded as they are met in
    the first pass (before any good record) so the caller dead-letters them.
    """
    with tempfile.TemporaryDirectory(prefix="cyberstream-sort-") as tmp:
        runs: list[Path] = []
        chunk: list[tuple[int, int, list[str]]] = []
        for log_id, fields, raw in read_records(path):
            try:
                event, _ = parse_row(fields, log_id)
            except SchemaError:
                yield log_id, fields, raw
                continue
            chunk.append((event.secs, log_id, fields))
            if len(chunk) >= chunk_rows:
                runs.append(_write_run(chunk, Path(tmp), len(runs)))
                chunk = []
        if chunk:
            runs.append(_write_run(chunk, Path(tmp), len(runs)))
            chunk = []
        log.info("sorted %s in %d run(s) of up to %s rows; merging", path, len(runs), f"{chunk_rows:,}")
        for _, log_id, fields in heapq.merge(*(_read_run(r) for r in runs), key=lambda r: (r[0], r[1])):
            yield log_id, fields, ""


# --------------------------------------------------------------------------------------
# Encoding (pre-encoded fragments: the per-event Python work stays small)
# --------------------------------------------------------------------------------------
class _Encoder:
    """Event and label JSON, byte-identical to ``Event.to_json`` and ``LabelRecord.to_json``."""

    MAX_CACHE = 1_000_000

    def __init__(self, partitions: int, kind: str):
        from kafka.partitioner.default import murmur2

        self._murmur2 = murmur2
        self.partitions = partitions
        self._connection_id = connection_id_of(kind)
        self._json: dict[str | None, str] = {None: "null"}
        self._keys: dict[str, tuple[bytes, int, str]] = {}

    def js(self, value: str | None) -> str:
        out = self._json.get(value)
        if out is None:
            if len(self._json) > self.MAX_CACHE:
                self._json = {None: "null"}
            out = self._json[value] = json.dumps(value)
        return out

    def key(self, event) -> tuple[bytes, int, str]:
        """(key bytes, partition, JSON of the connection id) of the event's connection."""
        conn = self._connection_id(event)
        out = self._keys.get(conn)
        if out is None:
            if len(self._keys) > self.MAX_CACHE:
                self._keys = {}
            key = conn.encode()
            partition = (self._murmur2(key) & 0x7FFFFFFF) % self.partitions
            out = self._keys[conn] = (key, partition, json.dumps(conn))
        return out

    def event(self, e) -> bytes:
        js = self.js
        return (
            f'{{"log_id":{e.log_id},"secs":{e.secs},"src_name":{js(e.src_name)},"dest_name":{js(e.dest_name)},'
            f'"src_host":{js(e.src_host)},"dest_host":{js(e.dest_host)},"auth_type":{js(e.auth_type)},'
            f'"login_type":{js(e.login_type)},"stage":{js(e.stage)},"result":{js(e.result)}}}'
        ).encode()

    @staticmethod
    def label(conn_json: str, log_id: int, secs: int, malicious: bool) -> bytes:
        label = LABEL_MALICIOUS if malicious else LABEL_CLEAN
        return f'{{"connection":{conn_json},"log_id":{log_id},"secs":{secs},"label":"{label}"}}'.encode()


# --------------------------------------------------------------------------------------
# The replay
# --------------------------------------------------------------------------------------
def _position(secs: int) -> str:
    d, rest = divmod(secs, DAY)
    return f"day {d} {rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


class BrokerGone(RuntimeError):
    """Sends keep failing synchronously: the broker is not reachable."""


class Replayer:
    """Sends one file's events, labels and dead letters; see the module docstring."""

    def __init__(self, settings: ReplaySettings, producer=None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):  # fmt: skip
        """``clock`` and ``sleep`` pace a replay with a speed (tests pass a simulated clock)."""
        self.s = settings
        self.summary = ReplaySummary()
        self._producer = producer
        self._clock, self._sleep = clock, sleep
        self._consecutive_errors = 0
        self._wall0: float | None = None
        self._secs0 = 0

    # -- sending ------------------------------------------------------------------------
    def _failed(self, _exc=None) -> None:
        self.summary.failed += 1

    def _send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None, ts_ms: int | None
    ) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, partition=partition, timestamp_ms=ts_ms)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError, BufferError...
            self._send_error(exc)
            return
        self._consecutive_errors = 0
        future.add_errback(self._failed)

    def _pace(self, secs: int) -> None:
        """With a speed, wait until wall time catches up with event time ``secs``."""
        if self.s.speed is None:
            return
        if self._wall0 is None:
            self._wall0, self._secs0 = self._clock(), secs
            return
        delay = self._wall0 + (secs - self._secs0) / self.s.speed - self._clock()
        if delay > 0:
            self._sleep(delay)

    def _dead_letter(self, log_id: int, raw: str, reason: str) -> None:
        value = kafka_io.dead_letter(DLQ_SOURCE, reason, raw.encode("utf-8", "surrogateescape"))
        self._send(self.s.dlq_topic, str(log_id).encode(), value, None, None)
        self.summary.dead_letters += 1
        if self.summary.dead_letters <= 10:
            log.warning("row %d (line %d) to the dead-letter topic: %s", log_id, log_id + 2, reason)

    def _prepare(self) -> tuple[int, bool, _Encoder]:
        s = self.s
        total, ordered = scan(s.data)
        self.summary.sorted_input = ordered
        if not ordered:
            log.warning(
                "%s is not sorted by secs: sorting it first (external merge sort in chunks of %s rows)",
                s.data, f"{s.sort_chunk_rows:,}",
            )  # fmt: skip
        topics = {s.events_topic: s.partitions, s.labels_topic: s.partitions, s.dlq_topic: s.partitions}
        counts = kafka_io.ensure_topics(s.bootstrap, topics)
        if counts[s.events_topic] != counts[s.labels_topic]:
            raise ValueError(
                f"topics {s.events_topic!r} ({counts[s.events_topic]} partitions) and {s.labels_topic!r} "
                f"({counts[s.labels_topic]}) must have the same partition count so a label lands on its "
                "event's partition number; delete one or choose other topic names"
            )
        if self._producer is None:
            self._producer = kafka_io.make_producer(s.bootstrap, **s.producer_overrides)
        return total, ordered, _Encoder(counts[s.events_topic], s.connection_kind)

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> ReplaySummary:
        s, summary = self.s, self.summary
        t_start = time.monotonic()
        own_producer = self._producer is None
        total, ordered, enc = self._prepare()
        bar = None
        if s.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=total, unit="ev", unit_scale=True, desc="produce", dynamic_ncols=True, mininterval=0.5
            )
        records = read_records(s.data) if ordered else sorted_records(s.data, s.sort_chunk_rows)
        lo = s.from_secs if s.from_secs is not None else 0
        hi = s.until_secs if s.until_secs is not None else float("inf")
        # Malformed rows of a sorted file belong to the slice of the rows around them; an
        # unsorted file's malformed rows come first, from the sorting pass, and all count.
        started = s.from_secs is None or not ordered
        events_topic, labels_topic, base, delay = s.events_topic, s.labels_topic, s.base_epoch, s.label_delay
        send, on_error, label_json, event_json, key_of = (
            self._producer.send, self._failed, enc.label, enc.event, enc.key,
        )  # fmt: skip
        pending: deque[tuple[int, bytes, int, bytes, bool]] = deque()  # labels waiting for their time
        rows = sent = labels = malicious_labels = skipped = tick = 0
        last_secs = -1
        try:
            for log_id, fields, raw in records:
                rows += 1
                tick += 1
                try:
                    event, malicious = parse_row(fields, log_id)
                except SchemaError as exc:
                    if started:
                        self._dead_letter(log_id, raw, exc.reason)
                    else:
                        skipped += 1
                    continue
                secs = event.secs
                if secs < lo or secs >= hi:
                    skipped += 1
                    if secs >= hi and ordered:
                        break  # sorted: the rest is past the slice too
                    continue
                started = True
                if secs != last_secs:
                    while pending and pending[0][0] <= secs:
                        labels, malicious_labels = self._send_label(
                            pending.popleft(), labels, malicious_labels
                        )
                    self._pace(secs)
                    if last_secs < 0:
                        summary.first_secs = secs
                    last_secs = secs
                key, partition, conn_json = key_of(event)
                ts = (base + secs) * 1000
                try:
                    send(
                        events_topic, key=key, value=event_json(event), partition=partition, timestamp_ms=ts
                    ).add_errback(on_error)
                    sent += 1
                    if delay == 0:
                        value = label_json(conn_json, log_id, secs, malicious)
                        send(
                            labels_topic, key=key, value=value, partition=partition, timestamp_ms=ts
                        ).add_errback(on_error)
                        labels += 1
                        malicious_labels += malicious
                    else:
                        pending.append(
                            (
                                secs + delay,
                                key,
                                partition,
                                label_json(conn_json, log_id, secs, malicious),
                                malicious,
                            )
                        )
                    self._consecutive_errors = 0
                except Exception as exc:  # counted, logged, and fatal when it persists
                    self._send_error(exc)
                if tick >= 5000 and bar is not None:
                    bar.update(tick)
                    tick = 0
                    bar.set_postfix_str(f"event time {_position(secs)}", refresh=False)
            while pending:  # the last verdicts, still paced in event time
                item = pending.popleft()
                self._pace(item[0])
                labels, malicious_labels = self._send_label(item, labels, malicious_labels)
        except KeyboardInterrupt:
            summary.interrupted = True
            log.warning("interrupted: flushing what was sent so far")
        finally:
            if bar is not None:
                bar.update(tick)
                bar.close()
            self._producer.flush()
            if own_producer:
                self._producer.close()
            summary.rows += rows
            summary.events_sent += sent
            summary.labels_sent += labels
            summary.malicious_labels += malicious_labels
            summary.skipped += skipped
            summary.last_secs = last_secs if last_secs >= 0 else None
            summary.elapsed = time.monotonic() - t_start
        return summary

    def _send_label(
        self, item: tuple[int, bytes, int, bytes, bool], labels: int, malicious: int
    ) -> tuple[int, int]:
        due, key, partition, value, is_malicious = item
        self._send(self.s.labels_topic, key, value, partition, (self.s.base_epoch + due) * 1000)
        return labels + 1, malicious + is_malicious

    def _send_error(self, exc: Exception) -> None:
        self.summary.failed += 1
        self._consecutive_errors += 1
        log.error("send failed: %s", exc)
        if self._consecutive_errors >= MAX_CONSECUTIVE_SEND_ERRORS:
            raise BrokerGone(f"{self._consecutive_errors} sends in a row failed, last: {exc}") from exc


def replay(settings: ReplaySettings, producer=None) -> ReplaySummary:
    """Replay ``settings.data`` into Kafka; see :class:`Replayer`."""
    return Replayer(settings, producer).run()

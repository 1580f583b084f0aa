"""Rebuilding a partition's feature window from the log (at a start or after a rebalance).

Record timestamps are event time, so the window's events are found by time, re-read and
fed to the feature engine without being scored. An engine with history features (which
count every event so far) replays the partition from its start instead, the events before
the window into its history state only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cyberstream.schema import SchemaError, decode_event
from detector.rdkafka_io import last_timestamp, read_partition

log = logging.getLogger(__name__)


def rebuild_window(engine: Any, bootstrap: str, topic: str, partition: int, end_offset: int, *,
                   processed_secs: int, window_secs: int, base_epoch: int, client_id: str) -> int:  # fmt: skip
    """Re-read ``partition``'s events of the window before ``end_offset`` into ``engine``;
    return how many. The window ends at ``processed_secs`` (or, before any second is
    processed, at the event time of the record before ``end_offset``)."""
    t0 = time.monotonic()
    if processed_secs >= 0:
        from_secs = processed_secs - window_secs + 1
    else:
        last_ms = last_timestamp(bootstrap, topic, partition, end_offset, client_id)
        from_secs = (last_ms // 1000 - base_epoch) - window_secs + 1 if last_ms is not None else 0
    n = 0
    start = None
    history = getattr(engine, "needs_history", False)
    from_ms = 0 if history else (base_epoch + max(0, from_secs)) * 1000
    for offset, value in read_partition(bootstrap, topic, partition, from_ms, end_offset, client_id):
        start = offset if start is None else start
        try:
            ev = decode_event(value)
        except SchemaError:
            continue
        if history and ev.secs < from_secs:
            engine.observe_history(ev)
        else:
            engine.observe(ev)
        n += 1
    if start is not None:
        log.info("partition %d: rebuilt the window from %d events (offsets %d..%d) in %.2f s", partition, n,
                 start, end_offset - 1, time.monotonic() - t0)  # fmt: skip
    return n

"""What the detector counts as it runs, its progress line and its end-of-run summary."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters every stage adds to (each field says which)."""

    events: int = 0
    malformed: int = 0
    late: int = 0
    labels: int = 0
    cutoffs: int = 0
    alerts: int = 0
    suppressed: int = 0
    learned: int = 0
    learned_positive: int = 0
    rebuilt: int = 0
    forgotten: int = 0  # idle connections forgotten beyond max_idle_connections
    feature_secs: float = 0.0
    model_secs: float = 0.0
    started: float = field(default_factory=time.monotonic)
    first_event_at: float | None = None  # wall-clock time (time.time) the first event was processed
    last_event_at: float | None = None
    #: the process's CPU time (every thread: the consumer's and producer's too) at the first
    #: event and after the last batch of events
    first_event_cpu: float = 0.0
    last_event_cpu: float = 0.0

    @property
    def busy_rate(self) -> float:
        """Events/s from the first processed event to the last (no start-up, no idle tail)."""
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.events / (self.last_event_at - self.first_event_at)

    @property
    def cpu_per_event(self) -> float:
        """CPU seconds (all threads) per event from the first processed event to the last:
        a measure of cost that other work on the machine does not blur."""
        return (self.last_event_cpu - self.first_event_cpu) / max(1, self.events)


def summary(s: Stats, *, active: int, idle: int, learned_total: int, dlq_topic: str, lag: int | None,
            event_time: int) -> str:  # fmt: skip
    """A readable end-of-run summary."""
    elapsed = max(1e-9, time.monotonic() - s.started)
    per_event = 1e6 / max(1, s.events)
    return "\n".join([
        "detector summary",
        f"  events processed   {s.events:,} in {elapsed:,.1f} s ({s.events / elapsed:,.0f} events/s; "
        f"{s.busy_rate:,.0f} events/s from the first event to the last)",
        f"  peak memory        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB",
        f"  windows rebuilt    {s.rebuilt:,} events re-read from the log",
        f"  connections        {active:,} active, {idle:,} idle (their counts kept; "
        f"{s.forgotten:,} forgotten beyond --max-idle-connections)",
        f"  cutoffs scored     {s.cutoffs:,} ({s.cutoffs / elapsed:,.0f} cutoffs/s)",
        f"  alerts published   {s.alerts:,} ({s.suppressed:,} more suppressed by the cooldown)",
        f"  labels applied     {s.labels:,}; online model learnt {s.learned:,} cutoffs "
        f"({s.learned_positive:,} positive; {learned_total:,} in total with the checkpoint)",
        f"  malformed records  {s.malformed:,}, late events {s.late:,} (sent to {dlq_topic})",
        f"  consumer lag       {'unknown' if lag is None else f'{lag:,}'} events",
        f"  time per event     features {s.feature_secs * per_event:.1f} us, models {s.model_secs * per_event:.1f} us; "
        f"CPU {s.cpu_per_event * 1e6:.1f} us (all threads, first event to last)",
        f"  event time reached {fmt_secs(event_time)}",
        f"  busy from          {s.first_event_at or 0:.3f} to {s.last_event_at or 0:.3f} (Unix time, first and last event)",
    ])


def progress_line(s: Stats, *, lag: int, event_time: int, final: bool = False) -> str:
    """The line logged every ``--log-every-secs``."""
    elapsed = max(1e-9, time.monotonic() - s.started)
    per_event = 1e6 / max(1, s.events)
    return (
        f"{'FINAL ' if final else ''}events {s.events:,} ({s.events / elapsed:,.0f}/s), "
        f"cutoffs {s.cutoffs:,} ({s.cutoffs / elapsed:,.0f}/s), alerts {s.alerts:,} "
        f"(+{s.suppressed:,} in cooldown), labels {s.labels:,}, learnt {s.learned:,} "
        f"({s.learned_positive:,} positive), malformed {s.malformed:,}, lag {lag:,}, "
        f"event time {fmt_secs(event_time)}, per event: features "
        f"{s.feature_secs * per_event:.1f} us, models {s.model_secs * per_event:.1f} us"
    )


def fmt_secs(secs: int) -> str:
    """Event time as ``day D HH:MM:SS`` (``-`` before the first second)."""
    if secs < 0:
        return "-"
    d, rem = divmod(int(secs), 86_400)
    return f"day {d + 1} {rem // 3600:02d}:{rem % 3600 // 60:02d}:{rem % 60:02d}"

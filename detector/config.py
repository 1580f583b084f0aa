"""The detector's settings (``cyberstream detect --help`` explains each one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.labels import LabelSpec


@dataclass
class DetectorConfig:
    """Everything the detector loop needs besides its models (see ``detect --help``)."""

    bootstrap: str
    group_id: str
    events_topic: str
    labels_topic: str
    alerts_topic: str
    dlq_topic: str
    checkpoint_path: Path
    kind: str = "session"
    window_secs: int = 86_400
    label_spec: LabelSpec = field(default_factory=LabelSpec)
    threshold: float = 0.5
    cooldown_secs: int = 3_600
    learn_every_secs: int = 300
    online_weight: float = 0.5
    online_warmup_positives: int = 20
    batch_size: int = 4_096
    checkpoint_every_secs: float = 10.0
    max_events: int | None = None
    idle_timeout: float | None = None
    #: a finite replay's end: once this file exists and every partition is read to its end, the
    #: detector processes what it holds and stops; until then a caught-up partition waits for its
    #: own next record (no idle grace: a stalled producer cannot make its records late)
    end_file: Path | None = None
    idle_drop_secs: int | None = None
    #: idle connections whose event counts are remembered (the oldest dropped are forgotten first)
    max_idle_connections: int = 1_000_000
    base_epoch: int = 1_577_836_800
    log_every_secs: float = 10.0
    poll_records: int = 20_000
    #: a caught-up partition counts as complete after this long without new records ...
    idle_grace_secs: float = 0.5
    #: ... or once other partitions are this far ahead in event time (later events are late)
    allowed_lateness_secs: int = 60
    #: write the features of every alerted cutoff and of one in N others to this JSON-lines
    #: file, for audits and for the parity check against featuretools.
    record_features: Path | None = None
    record_every: int = 50

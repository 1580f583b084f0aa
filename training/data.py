"""Read a CyberFLTenDays CSV into an events DataFrame, strictly, with an account of every rejected row.

Every row goes through :func:`cyberstream.schema.parse_row` (the one definition of the
event schema). A row that fails is not silently dropped: it is counted by reason, the first
few are kept as examples, and the caller decides (``cyberstream train`` logs them and, with
``--max-bad-rows``, refuses a file that has too many). The row number (0-based, header
excluded) is the ``log_id``, as the producer numbers events, so ids agree across commands.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cyberstream.schema import (
    ATTRIBUTE_FIELDS,
    COLUMNS,
    EVENT_FIELDS,
    HEADER,
    IDENTITY_FIELDS,
    SchemaError,
    parse_row,
)

log = logging.getLogger(__name__)

#: columns of the events DataFrame: the event fields plus the boolean label.
EVENT_COLUMNS: tuple[str, ...] = (*EVENT_FIELDS, "label")
MAX_EXAMPLES = 10


@dataclass
class ReadReport:
    """What reading a CSV found: good rows, rejected rows by reason, a few examples."""

    path: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows:,} rows, {self.accepted:,} accepted, {self.rejected:,} rejected"
        if self.reasons:
            text += " (" + "; ".join(f"{n:,} x {r}" for r, n in self.reasons.most_common(5)) + ")"
        return text

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(self.reasons.most_common()),
            "examples": [{"line": line, "reason": reason} for line, reason in self.examples],
        }


def _reason_key(reason: str) -> str:
    """Group reasons by kind (the part before the offending value) so counts stay readable."""
    return reason.split(", got ")[0]


def read_events(path: str | os.PathLike, *, progress: bool = True) -> tuple[pd.DataFrame, ReadReport]:
    """Parse ``path`` into an events DataFrame (``EVENT_COLUMNS``) and a :class:`ReadReport`.

    The first line must be the CyberFLTenDays header. Missing attribute values (``?``) are
    NaN; the label is a bool (True = malicious). Raises ``FileNotFoundError`` or
    ``ValueError`` (wrong header) with a message that says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; generate one with `cyberstream generate --out {path}` "
            "or pass the real CyberFLTenDays.csv with --data"
        )
    report = ReadReport(str(path))
    columns: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    size = path.stat().st_size
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh, tqdm(
        total=size, unit="B", unit_scale=True, desc="read CSV", disable=not progress, leave=False
    ) as bar:
        header = fh.readline()
        if [h.strip() for h in header.strip().split(",")] != list(COLUMNS):
            raise ValueError(f"{path}: first line must be the header {HEADER!r}, got {header.strip()[:200]!r}")
        bar.update(len(header))

        def lines():
            pending = 0
            for line in fh:
                pending += len(line)
                if pending >= 1 << 20:
                    bar.update(pending)
                    pending = 0
                yield line
            bar.update(pending)

        for log_id, fields in enumerate(csv.reader(lines())):
            report.rows += 1
            try:
                event, label = parse_row(fields, log_id)
            except SchemaError as exc:
                report.rejected += 1
                report.reasons[_reason_key(exc.reason)] += 1
                if len(report.examples) < MAX_EXAMPLES:
                    report.examples.append((log_id + 2, exc.reason))  # +2: 1-based, after the header
                continue
            for f in EVENT_FIELDS:
                columns[f].append(getattr(event, f))
            columns["label"].append(label)
    report.accepted = report.rows - report.rejected
    df = pd.DataFrame(columns)
    df["log_id"] = df["log_id"].astype("int64")
    df["secs"] = df["secs"].astype("int64")
    for f in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS):
        df[f] = df[f].astype(object)
    df["label"] = df["label"].astype(bool)
    return df, report

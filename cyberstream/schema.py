"""The authentication event: one line of CyberFLTenDays.csv, parsed strictly.

Columns (LANL auth.txt, first ten days, with a red-team label)::

    secs,src_name,dest_name,src_host,dest_host,auth_type,login_type,stage,result,label

The row number (0-based, header excluded) is the event's ``log_id``.

Missing values: LANL writes ``?`` for an unknown value.

* In the attribute fields (``auth_type``, ``login_type``, ``stage``, ``result``) ``?``
  means *missing*: ``None`` in Python, ``null`` in JSON, NaN in pandas, so featuretools
  treats it as missing (MODE and NUM_UNIQUE skip it).
* In the identity fields (``src_name``, ``dest_name``, ``src_host``, ``dest_host``) the
  token ``?`` is kept as the literal string ``"?"``: an unknown host is still a value a
  connection id is built from, and no row is dropped because of it. An *empty* identity
  field is an error.

Parsing never coerces: a row with the wrong number of columns, a non-integer or negative
``secs``, an empty identity field or an unknown label raises :class:`SchemaError` with a
reason a person can act on.

The alert the detector publishes has its JSON Schema in ``schemas/alert.schema.json``
(:func:`alert_schema`), the contract between the detector and the alert tools.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

COLUMNS: tuple[str, ...] = (
    "secs",
    "src_name",
    "dest_name",
    "src_host",
    "dest_host",
    "auth_type",
    "login_type",
    "stage",
    "result",
    "label",
)
HEADER = ",".join(COLUMNS)
MISSING = "?"
IDENTITY_FIELDS: tuple[str, ...] = ("src_name", "dest_name", "src_host", "dest_host")
ATTRIBUTE_FIELDS: tuple[str, ...] = ("auth_type", "login_type", "stage", "result")
#: Fields of an event as it travels on the event topic (the label never does).
EVENT_FIELDS: tuple[str, ...] = ("log_id", "secs", *IDENTITY_FIELDS, *ATTRIBUTE_FIELDS)
LABEL_CLEAN = "N"
LABEL_MALICIOUS = "A"
LABELS: dict[str, bool] = {LABEL_CLEAN: False, LABEL_MALICIOUS: True}


class SchemaError(ValueError):
    """A record that does not follow the event schema; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Event(NamedTuple):
    """One authentication event (without its label).

    A named tuple: immutable like a frozen dataclass, and built about 4x faster, which
    counts at one per record in the detector."""

    log_id: int
    secs: int
    src_name: str
    dest_name: str
    src_host: str
    dest_host: str
    auth_type: str | None
    login_type: str | None
    stage: str | None
    result: str | None

    def to_dict(self) -> dict[str, Any]:
        """The event as the JSON object sent on the event topic."""
        return {f: getattr(self, f) for f in EVENT_FIELDS}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def parse_secs(raw: str) -> int:
    """Parse ``secs``: a non-negative integer written in decimal digits."""
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise SchemaError(f"secs must be a non-negative integer, got {raw!r}")
    return int(text)


def parse_label(raw: str) -> bool:
    """``N`` -> False (clean), ``A`` -> True (malicious); anything else is an error."""
    try:
        return LABELS[raw.strip()]
    except KeyError:
        raise SchemaError(f"label must be one of {sorted(LABELS)}, got {raw!r}") from None


def _identity(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise SchemaError(f"{name} is empty")
    return value


def _attribute(raw: str) -> str | None:
    value = raw.strip()
    return None if value in (MISSING, "") else value


def parse_row(fields: list[str], log_id: int) -> tuple[Event, bool]:
    """Parse the fields of one CSV row into an event and its label (True = malicious)."""
    if len(fields) != len(COLUMNS):
        raise SchemaError(f"expected {len(COLUMNS)} columns ({HEADER}), got {len(fields)}")
    for f in fields:  # files are read with errors="surrogateescape": bad bytes become lone surrogates
        if not f.isascii():
            try:
                f.encode("utf-8")
            except UnicodeEncodeError:
                raise SchemaError("row is not valid UTF-8") from None
    secs = parse_secs(fields[0])
    ids = [_identity(n, v) for n, v in zip(IDENTITY_FIELDS, fields[1:5], strict=True)]
    attrs = [_attribute(v) for v in fields[5:9]]
    label = parse_label(fields[9])
    return Event(log_id, secs, *ids, *attrs), label


_FIELD_GETTER = itemgetter(*EVENT_FIELDS)


def event_from_dict(obj: Any) -> Event:
    """Validate a decoded event-topic JSON object and build the event from it."""
    if type(obj) is dict:  # fast path for well-formed events (the detector decodes every one)
        try:
            values = _FIELD_GETTER(obj)
        except KeyError:
            values = None
        if values is not None:
            log_id, secs, sn, dn, sh, dh, at, lt, st, rs = values
            str_ = str
            if (type(log_id) is int and type(secs) is int and log_id >= 0 and secs >= 0
                    and type(sn) is str_ and type(dn) is str_ and type(sh) is str_ and type(dh) is str_
                    and sn and dn and sh and dh
                    and not (sn.isspace() or dn.isspace() or sh.isspace() or dh.isspace())
                    and (at is None or type(at) is str_) and (lt is None or type(lt) is str_)
                    and (st is None or type(st) is str_) and (rs is None or type(rs) is str_)):  # fmt: skip
                return Event(*values)
    if not isinstance(obj, dict):
        raise SchemaError(f"event must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in EVENT_FIELDS if f not in obj]
    if missing:
        raise SchemaError(f"event lacks field(s) {missing}")
    log_id, secs = obj["log_id"], obj["secs"]
    if not isinstance(log_id, int) or isinstance(log_id, bool) or log_id < 0:
        raise SchemaError(f"log_id must be a non-negative integer, got {log_id!r}")
    if not isinstance(secs, int) or isinstance(secs, bool) or secs < 0:
        raise SchemaError(f"secs must be a non-negative integer, got {secs!r}")
    ids = []
    for f in IDENTITY_FIELDS:
        v = obj[f]
        if not isinstance(v, str) or not v.strip():
            raise SchemaError(f"{f} must be a non-empty string, got {v!r}")
        ids.append(v)
    attrs = []
    for f in ATTRIBUTE_FIELDS:
        v = obj[f]
        if v is not None and not isinstance(v, str):
            raise SchemaError(f"{f} must be a string or null, got {v!r}")
        attrs.append(v)
    return Event(log_id, secs, *ids, *attrs)


def decode_event(raw: bytes) -> Event:
    """Decode an event-topic message value; malformed input raises :class:`SchemaError`."""
    try:
        obj = orjson.loads(raw)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"value is not valid JSON: {exc}") from None
    return event_from_dict(obj)


class LabelRecord(NamedTuple):
    """An analyst's verdict on one event, as it travels on the label topic.

    The message is keyed by the connection id, like the event, and its Kafka timestamp is
    the event time at which the verdict was published (``base_epoch + secs + label delay``).
    """

    connection: str
    log_id: int
    secs: int
    malicious: bool

    def to_json(self) -> bytes:
        label = LABEL_MALICIOUS if self.malicious else LABEL_CLEAN
        obj = {"connection": self.connection, "log_id": self.log_id, "secs": self.secs, "label": label}
        return json.dumps(obj, separators=(",", ":")).encode()


def decode_label(raw: bytes) -> LabelRecord:
    """Decode a label-topic message value; malformed input raises :class:`SchemaError`."""
    try:
        obj = orjson.loads(raw)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"value is not valid JSON: {exc}") from None
    if type(obj) is dict and len(obj) == 4:  # fast path for well-formed labels
        conn, log_id, secs, label = obj.get("connection"), obj.get("log_id"), obj.get("secs"), obj.get("label")
        if (type(conn) is str and conn and type(log_id) is int and type(secs) is int and log_id >= 0
                and secs >= 0 and (label == LABEL_CLEAN or label == LABEL_MALICIOUS)):  # fmt: skip
            return LabelRecord(conn, log_id, secs, label == LABEL_MALICIOUS)
    if not isinstance(obj, dict):
        raise SchemaError(f"label must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in ("connection", "log_id", "secs", "label") if f not in obj]
    if missing:
        raise SchemaError(f"label lacks field(s) {missing}")
    conn, log_id, secs, label = obj["connection"], obj["log_id"], obj["secs"], obj["label"]
    if not isinstance(conn, str) or not conn:
        raise SchemaError(f"connection must be a non-empty string, got {conn!r}")
    for name, v in (("log_id", log_id), ("secs", secs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise SchemaError(f"{name} must be a non-negative integer, got {v!r}")
    if label not in LABELS:
        raise SchemaError(f"label must be one of {sorted(LABELS)}, got {label!r}")
    return LabelRecord(conn, log_id, secs, LABELS[label])


@cache
def alert_schema() -> dict[str, Any]:
    """The JSON Schema of an alert, shipped in the package."""
    return json.loads(resources.files("cyberstream").joinpath("schemas/alert.schema.json").read_text())

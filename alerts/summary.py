"""How good were the alerts? Join an alert run with the ground truth, without Kafka.

:func:`summarize` takes the alert objects as read from the alert topic (any JSON values:
invalid ones are counted, not fatal) and the ground-truth events (the DataFrame of
:func:`training.data.read_events`) and returns a :class:`Summary` of plain numbers;
:func:`format_summary` prints it. ``cyberstream alerts --summary`` and ``cyberstream demo``
both use them.

Definitions (also printed with the summary):

* An alert is valid when it follows ``cyberstream/schemas/alert.schema.json``.
  Duplicates (at-least-once delivery) are dropped by ``alert_id``, keeping the first.
* A connection is *malicious* when any of its events is labelled ``A``. By connection, a
  true positive is an alerted malicious connection, a false positive an alerted clean one.
* A cutoff is *positive* when the label function of training
  (:func:`training.labels.label_times`) says so: any malicious event among events
  ``k+L .. k+L+W-1`` of the connection, ``k`` being the cutoff's event. Alerted cutoffs
  whose label window runs off the end of the data have no label and are counted apart.
* Detection delay of a malicious connection: from its first malicious event to its first
  alert, in events (positions in ``(secs, log_id)`` order) and in seconds of event time.
  A first alert *before* the first malicious event is an early warning and counts as
  delay 0; how many there were is reported, with how many came ``L+W`` or more events
  early (too early for the label of their cutoff to have been positive).
* A campaign is a run of malicious events from one ``src_host`` (the attacker's host) with
  no pause longer than the campaign gap (the model's window, default one day: after such a
  pause the detector's window holds nothing of the previous burst). Its alerts are the
  alerts on its connections from one gap before its first malicious event to one gap
  after its last.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from cyberstream.connections import DEFAULT_CONNECTION, SEPARATOR, connection_fields
from cyberstream.schema import alert_schema
from training.labels import LabelSpec, label_times

DAY = 86_400
DEFAULT_CAMPAIGN_GAP_SECS = DAY
POSITIVE, NEGATIVE, UNLABELLED, UNKNOWN = "positive", "negative", "no label", "not a cutoff of the truth"


# --------------------------------------------------------------------------------------
# Validation and de-duplication
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    schema = alert_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def alert_problem(obj: Any) -> str | None:
    """Why ``obj`` is not a valid alert (the first schema violation), or None if it is."""
    if not isinstance(obj, dict):
        return f"not a JSON object: {repr(obj)[:80]}"
    error = next(iter(sorted(_validator().iter_errors(obj), key=lambda e: list(e.path))), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.path) or "(root)"
    return f"{where}: {error.message[:200]}"


@dataclass
class CleanAlerts:
    """Valid, de-duplicated alerts and what was dropped on the way."""

    alerts: list[dict]
    messages: int
    invalid: int
    duplicates: int
    invalid_reasons: Counter


def clean_alerts(objs: list[Any]) -> CleanAlerts:
    """Validate every object against the alert schema and drop repeated ``alert_id``s (first wins)."""
    seen: set[str] = set()
    kept: list[dict] = []
    reasons: Counter = Counter()
    invalid = duplicates = 0
    for obj in objs:
        problem = alert_problem(obj)
        if problem is not None:
            invalid += 1
            reasons[problem] += 1
            continue
        if obj["alert_id"] in seen:
            duplicates += 1
            continue
        seen.add(obj["alert_id"])
        kept.append(obj)
    return CleanAlerts(kept, len(objs), invalid, duplicates, reasons)


# --------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------
@dataclass
class CampaignResult:
    """One campaign (see the module docstring) and how the alerts met it."""

    number: int
    src_host: str
    start_secs: int
    end_secs: int
    malicious_events: int
    connections: int
    connections_detected: int
    alerts: int
    first_alert_secs: int | None
    delay_secs: int | None  # first alert - first malicious event, 0 if earlier; None: not detected


@dataclass
class Summary:
    """The figures of one alert run against the ground truth (see the module docstring)."""

    kind: str
    spec: LabelSpec
    campaign_gap_secs: int
    # what was read
    messages: int
    invalid: int
    duplicates: int
    alerts: int  # valid and unique
    # by connection
    connections_alerted: int
    malicious_connections: int
    connection_tp: int  # alerted and malicious
    connection_fp: int  # alerted and clean
    connection_unknown: int  # alerted but absent from the truth
    connection_missed: int  # malicious and never alerted
    recall: float | None  # connection_tp / malicious_connections
    precision_connections: float | None  # connection_tp / (connection_tp + connection_fp)
    # by cutoff
    cutoff_tp: int
    cutoff_fp: int
    cutoff_unlabelled: int  # label window runs off the end of the data
    cutoff_unknown: int  # (connection, cutoff_secs) is not an eligible cutoff of the truth
    positive_cutoffs: int  # positive cutoffs in the whole truth
    precision_cutoffs: float | None  # cutoff_tp / (cutoff_tp + cutoff_fp)
    recall_cutoffs: float | None  # cutoff_tp / positive_cutoffs
    # detection delay of the detected malicious connections
    early_alerts: int  # first alert before the first malicious event (delay 0)
    early_beyond_horizon: int  # ... of those, L+W or more events before it (their cutoff label is negative)
    median_delay_events: float | None
    median_delay_secs: float | None
    # rate
    days: float
    alerts_per_day: float
    false_alerts_per_day: float  # cutoff false positives per day
    campaigns: list[CampaignResult] = field(default_factory=list)
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    #: one row per unique alert with its truth (for the report)
    alert_table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False, compare=False)
    #: the malicious events with their connection and campaign number (for the report)
    malicious_events: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False, compare=False)
    #: one row per detected malicious connection: first malicious event, first alert, delays
    delays: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (no tables)."""
        out = {k: v for k, v in asdict(self).items() if not isinstance(v, pd.DataFrame)}
        out["spec"] = self.spec.to_dict()
        return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _median(values: pd.Series) -> float | None:
    return float(np.median(values)) if len(values) else None


def _connection_ids(truth: pd.DataFrame, kind: str) -> pd.Series:
    fields = connection_fields(kind)
    conn = truth[fields[0]].astype(str)
    for f in fields[1:]:
        conn = conn + SEPARATOR + truth[f].astype(str)
    return conn


def _truth_labels(truth: pd.DataFrame) -> pd.Series:
    """The boolean label column; ``A``/``N`` strings are accepted, anything else is an error."""
    label = truth["label"]
    if label.dtype == bool:
        return label
    mapping = {"A": True, "N": False, True: True, False: False}
    bad = ~label.isin(list(mapping))
    if bad.any():
        raise ValueError(f"truth label must be boolean or A/N, got {label[bad].iloc[0]!r}")
    return label.map(mapping).astype(bool)


def _alert_kind(alerts: list[dict], kind: str | None) -> str:
    kinds = {a["connection_kind"] for a in alerts}
    if kind is None:
        if len(kinds) > 1:
            raise ValueError(f"alerts of several connection kinds {sorted(kinds)}; pass the kind to summarise")
        kind = kinds.pop() if kinds else DEFAULT_CONNECTION
    elif kinds - {kind}:
        raise ValueError(f"alerts are of connection kind {sorted(kinds)}, not {kind!r}")
    connection_fields(kind)  # a clear error for an unknown kind
    return kind


def find_campaigns(malicious: pd.DataFrame, gap_secs: int) -> pd.Series:
    """Campaign number (1, 2, ... by start time) of each malicious event (``src_host``, ``secs``)."""
    if malicious.empty:
        return pd.Series(dtype="int64", index=malicious.index)
    m = malicious.sort_values(["src_host", "secs"], kind="stable")
    new = (m["src_host"] != m["src_host"].shift()) | (m["secs"].diff() > gap_secs)
    raw = new.cumsum()
    starts = m.groupby(raw)["secs"].min().sort_values(kind="stable")
    renumber = {r: i + 1 for i, r in enumerate(starts.index)}
    return raw.map(renumber).reindex(malicious.index).astype("int64")


def summarize(
    alerts: list[Any],
    truth: pd.DataFrame,
    *,
    spec: LabelSpec | None = None,
    kind: str | None = None,
    campaign_gap_secs: int = DEFAULT_CAMPAIGN_GAP_SECS,
) -> Summary:
    """Join the alert objects of a run with the ground-truth events and compute the figures.

    ``alerts``: the alert objects as read (invalid ones and duplicates are counted and
    dropped). ``truth``: events with ``log_id``, ``secs``, the identity fields and a
    boolean (or ``A``/``N``) ``label``. ``kind``: the connection kind; by default the one
    the alerts name. ``spec``: the label definition the model was trained with (default:
    training's default :class:`~training.labels.LabelSpec`).
    """
    spec = spec or LabelSpec()
    clean = clean_alerts(alerts)
    kind = _alert_kind(clean.alerts, kind)

    truth_conns = _connection_ids(truth, kind)
    truth_label = _truth_labels(truth).to_numpy()
    ev = pd.DataFrame(
        {
            "connection": truth_conns.to_numpy(),
            "secs": truth["secs"].astype("int64").to_numpy(),
            "log_id": truth["log_id"].astype("int64").to_numpy(),
            "src_host": truth["src_host"].astype(str).to_numpy(),
            "label": truth_label,
        }
    )
    ev = ev.sort_values(["connection", "secs", "log_id"], kind="stable").reset_index(drop=True)
    malicious_conns = set(ev.loc[ev["label"], "connection"])
    known_conns = set(ev["connection"])

    columns = ["alert_id", "connection", "cutoff_secs", "log_id", "score", "batch_score", "online_score", "threshold"]
    al = pd.DataFrame([{c: a.get(c) for c in columns} for a in clean.alerts], columns=columns)
    al["cutoff_secs"] = al["cutoff_secs"].astype("int64")
    al["online_score"] = al["online_score"].astype(float)
    alerted = set(al["connection"])

    # -- by connection ------------------------------------------------------------------
    tp_conns = alerted & malicious_conns
    unknown_conns = alerted - known_conns
    fp_conns = alerted - malicious_conns - unknown_conns
    al["connection_malicious"] = al["connection"].map(lambda c: c in malicious_conns)
    al["connection_known"] = al["connection"].isin(known_conns)

    # -- by cutoff: the label function of training, on the connections that matter ------
    wanted = truth_conns.isin(alerted | malicious_conns).to_numpy()
    sub = truth.loc[wanted, [*connection_fields(kind), "secs", "log_id"]].assign(label=truth_label[wanted])
    lt = label_times(sub, kind=kind, spec=spec) if len(sub) else None
    positive_cutoffs = int(lt["label"].fillna(False).sum()) if lt is not None else 0
    if lt is not None and not al.empty:
        keyed = lt.set_index(["connection_id", "cutoff_secs"])["label"]
        idx = pd.MultiIndex.from_arrays([al["connection"], al["cutoff_secs"]])
        found = idx.isin(keyed.index)
        lab = keyed.reindex(idx)
        al["cutoff_label"] = np.select(
            [~found, lab.isna().to_numpy(), lab.fillna(False).to_numpy(dtype=bool)],
            [UNKNOWN, UNLABELLED, POSITIVE],
            NEGATIVE,
        )
    else:
        al["cutoff_label"] = pd.Series([UNKNOWN] * len(al), dtype=object)
    counts = al["cutoff_label"].value_counts()
    cutoff_tp, cutoff_fp = int(counts.get(POSITIVE, 0)), int(counts.get(NEGATIVE, 0))

    # -- detection delay ----------------------------------------------------------------
    first_alert = al.groupby("connection")["cutoff_secs"].min()
    al["first_of_connection"] = al["cutoff_secs"].to_numpy() == first_alert.reindex(al["connection"]).to_numpy()
    rows = []
    for conn, g in ev[ev["connection"].isin(tp_conns)].groupby("connection", sort=True):
        secs = g["secs"].to_numpy()
        m = int(np.flatnonzero(g["label"].to_numpy())[0])
        t = int(first_alert[conn])
        k = int(np.searchsorted(secs, t, side="right")) - 1  # the cutoff's event: last with secs <= t
        rows.append(
            {
                "connection": conn,
                "first_malicious_secs": int(secs[m]),
                "first_alert_secs": t,
                "events_early": max(m - k, 0),
                "delay_events": max(k - m, 0),
                "delay_secs": max(t - int(secs[m]), 0),
            }
        )
    delays = pd.DataFrame(
        rows,
        columns=["connection", "first_malicious_secs", "first_alert_secs", "events_early", "delay_events", "delay_secs"],
    )
    early = delays["events_early"] > 0

    # -- rate ---------------------------------------------------------------------------
    days = (int(ev["secs"].max()) - int(ev["secs"].min()) + 1) / DAY if len(ev) else 0.0

    # -- campaigns ----------------------------------------------------------------------
    mal = ev[ev["label"]].copy()
    mal["campaign"] = find_campaigns(mal, campaign_gap_secs)
    campaigns = []
    for number, g in mal.groupby("campaign", sort=True):
        start, end = int(g["secs"].min()), int(g["secs"].max())
        conns = set(g["connection"])
        hit = al[
            al["connection"].isin(conns)
            & (al["cutoff_secs"] >= start - campaign_gap_secs)
            & (al["cutoff_secs"] <= end + campaign_gap_secs)
        ]
        first = int(hit["cutoff_secs"].min()) if len(hit) else None
        campaigns.append(
            CampaignResult(
                number=int(number),
                src_host=str(g["src_host"].iloc[0]),
                start_secs=start,
                end_secs=end,
                malicious_events=len(g),
                connections=len(conns),
                connections_detected=int(hit["connection"].nunique()),
                alerts=len(hit),
                first_alert_secs=first,
                delay_secs=None if first is None else max(first - start, 0),
            )
        )

    return Summary(
        kind=kind,
        spec=spec,
        campaign_gap_secs=int(campaign_gap_secs),
        messages=clean.messages,
        invalid=clean.invalid,
        duplicates=clean.duplicates,
        alerts=len(al),
        connections_alerted=len(alerted),
        malicious_connections=len(malicious_conns),
        connection_tp=len(tp_conns),
        connection_fp=len(fp_conns),
        connection_unknown=len(unknown_conns),
        connection_missed=len(malicious_conns - alerted),
        recall=_ratio(len(tp_conns), len(malicious_conns)),
        precision_connections=_ratio(len(tp_conns), len(tp_conns) + len(fp_conns)),
        cutoff_tp=cutoff_tp,
        cutoff_fp=cutoff_fp,
        cutoff_unlabelled=int(counts.get(UNLABELLED, 0)),
        cutoff_unknown=int(counts.get(UNKNOWN, 0)),
        positive_cutoffs=positive_cutoffs,
        precision_cutoffs=_ratio(cutoff_tp, cutoff_tp + cutoff_fp),
        recall_cutoffs=_ratio(cutoff_tp, positive_cutoffs),
        early_alerts=int(early.sum()),
        early_beyond_horizon=int((delays["events_early"] >= spec.horizon).sum()),
        median_delay_events=_median(delays["delay_events"]),
        median_delay_secs=_median(delays["delay_secs"]),
        days=days,
        alerts_per_day=len(al) / days if days else 0.0,
        false_alerts_per_day=cutoff_fp / days if days else 0.0,
        campaigns=campaigns,
        invalid_reasons=dict(clean.invalid_reasons.most_common()),
        alert_table=al,
        malicious_events=mal.reset_index(drop=True),
        delays=delays,
    )


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------
def event_time(secs: int | float) -> str:
    """``secs`` as ``day D hh:mm:ss`` of event time (day 0 is the first day of the data)."""
    secs = int(secs)
    d, rest = divmod(secs, DAY)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"day {d} {h:02d}:{m:02d}:{s:02d}"


def duration(secs: float | None) -> str:
    """A readable length of event time: ``42 s``, ``3.5 min``, ``2.1 h``, ``1.5 d``."""
    if secs is None:
        return "-"
    if secs < 60:
        return f"{secs:.0f} s"
    if secs < 3600:
        return f"{secs / 60:.1f} min"
    if secs < DAY:
        return f"{secs / 3600:.1f} h"
    return f"{secs / DAY:.1f} d"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def label_definition(spec: LabelSpec) -> str:
    """The cutoff label definition, in words, with its parameters."""
    return (
        f"a cutoff (per connection and second, at its last event k, after at least N={spec.min_events} "
        f"earlier events) is positive when any of events k+{spec.lead} .. k+{spec.horizon - 1} of the "
        f"connection (L={spec.lead}, W={spec.window}) is malicious (training/labels.py)"
    )


def format_summary(s: Summary) -> str:
    """The summary as the readable text ``cyberstream alerts --summary`` prints."""
    lines = [
        f"alerts summary ({s.kind} connections, {s.days:.2f} days of event time)",
        f"  alerts read              {s.messages:,} messages: {s.invalid:,} invalid, "
        f"{s.duplicates:,} duplicate ids dropped -> {s.alerts:,} alerts",
        f"  connections alerted      {s.connections_alerted:,}: {s.connection_tp:,} malicious (TP), "
        f"{s.connection_fp:,} clean (FP)" + (f", {s.connection_unknown:,} not in the truth" if s.connection_unknown else ""),
        f"  malicious connections    {s.malicious_connections:,}: {s.connection_tp:,} alerted, "
        f"{s.connection_missed:,} missed",
        f"  recall (connections)     {_pct(s.recall)}",
        f"  precision (connections)  {_pct(s.precision_connections)}",
        f"  cutoffs alerted          {s.alerts:,}: {s.cutoff_tp:,} positive (TP), {s.cutoff_fp:,} negative (FP), "
        f"{s.cutoff_unlabelled:,} without a label" + (f", {s.cutoff_unknown:,} not a cutoff of the truth" if s.cutoff_unknown else ""),
        f"  precision (cutoffs)      {_pct(s.precision_cutoffs)}",
        f"  recall (cutoffs)         {_pct(s.recall_cutoffs)} of {s.positive_cutoffs:,} positive cutoffs "
        "(the per-connection cooldown keeps this low by design)",
        "  detection delay          "
        + (
            f"median {s.median_delay_events:g} events, {duration(s.median_delay_secs)} of event time, from the "
            f"first malicious event to the first alert ({s.connection_tp:,} detected connections)"
            if s.median_delay_events is not None
            else "- (no malicious connection alerted)"
        ),
        f"  early warnings           {s.early_alerts:,} detected connections were first alerted before their first "
        f"malicious event (delay 0); {s.early_beyond_horizon:,} of them L+W={s.spec.horizon} or more events before",
        f"  alerts per day           {s.alerts_per_day:,.1f} ({s.false_alerts_per_day:,.1f} on negative cutoffs)",
    ]
    if s.campaigns:
        gap = duration(s.campaign_gap_secs)
        lines.append(f"  campaigns                {len(s.campaigns)} (malicious events of one src_host, pauses <= {gap})")
        for c in s.campaigns:
            found = f"first alert after {duration(c.delay_secs)}" if c.delay_secs is not None else "not detected"
            lines.append(
                f"    #{c.number} {c.src_host:<10} {event_time(c.start_secs)} .. {event_time(c.end_secs)}: "
                f"{c.malicious_events:,} malicious events, {c.connections_detected}/{c.connections} connections "
                f"alerted, {c.alerts:,} alert{'s' if c.alerts != 1 else ''}, {found}"
            )
    if s.invalid_reasons:
        lines.append("  invalid alerts           " + "; ".join(f"{n:,} x {r}" for r, n in list(s.invalid_reasons.items())[:3]))
    lines.append(f"  cutoff label: {label_definition(s.spec)}")
    return "\n".join(lines)

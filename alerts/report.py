"""The HTML report of an alert run: the summary and three plots, in one self-contained file.

The plots are matplotlib figures embedded as base64 PNG, so the file can be mailed or
opened anywhere:

1. alerts over event time (per hour) against the malicious events (per hour);
2. score distributions of the alerted cutoffs, clean (negative label) against malicious
   (positive label). The detector publishes only alerts, so these are the scores of
   *alerted* cutoffs: everything below the threshold is not seen here;
3. a detection timeline per campaign: its malicious events and the alerts on its
   connections (see :mod:`alerts.summary` for what a campaign is).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from alerts.summary import (
    DAY,
    NEGATIVE,
    POSITIVE,
    UNKNOWN,
    UNLABELLED,
    Summary,
    duration,
    event_time,
    format_summary,
    label_definition,
)

DEFAULT_REPORT = Path("reports") / "alerts.html"
COLORS = {POSITIVE: "#2ca02c", NEGATIVE: "#7f7f7f", UNLABELLED: "#bcbd22", UNKNOWN: "#17becf"}
MALICIOUS_COLOR = "#d62728"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _hour_bins(s: Summary) -> np.ndarray:
    secs = [s.alert_table["cutoff_secs"], s.malicious_events["secs"]]
    top = max([int(x.max()) for x in secs if len(x)] + [int(s.days * DAY)])
    return np.arange(0, top + 3600, 3600) / DAY


def plot_alerts_over_time(s: Summary) -> Figure:
    """Malicious events per hour (top) and alerts per hour by cutoff label (bottom)."""
    fig = Figure(figsize=(11, 5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    bins = _hour_bins(s)
    top.hist(s.malicious_events["secs"] / DAY, bins=bins, color=MALICIOUS_COLOR)
    top.set_ylabel("malicious\nevents / h")
    al = s.alert_table
    groups = [(lab, al.loc[al["cutoff_label"] == lab, "cutoff_secs"] / DAY) for lab in COLORS]
    groups = [(lab, x) for lab, x in groups if len(x)]
    if groups:
        bottom.hist([x for _, x in groups], bins=bins, stacked=True, color=[COLORS[lab] for lab, _ in groups],
                    label=[f"{lab} cutoff ({len(x)})" for lab, x in groups])  # fmt: skip
        bottom.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("alerts / h")
    bottom.set_xlabel("event time (days)")
    top.set_title("Alerts over event time against the malicious events")
    return fig


def plot_score_distributions(s: Summary) -> Figure:
    """Combined scores of alerted cutoffs by label, and batch against online scores."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    al = s.alert_table
    bins = np.linspace(0, 1, 41)
    for lab, name in ((NEGATIVE, "clean (negative) cutoffs"), (POSITIVE, "malicious (positive) cutoffs")):
        x = al.loc[al["cutoff_label"] == lab, "score"]
        if len(x):
            left.hist(x, bins=bins, alpha=0.6, color=COLORS[lab], label=f"{name} ({len(x)})")
    if len(al):
        left.axvline(float(al["threshold"].median()), color="black", linestyle="--", linewidth=1, label="threshold")
        left.legend(fontsize=8)
    left.set_xlabel("combined score")
    left.set_ylabel("alerted cutoffs")
    left.set_title("Scores of alerted cutoffs (only alerts are published)", fontsize=10)
    for lab, color in COLORS.items():
        g = al[(al["cutoff_label"] == lab) & al["online_score"].notna()]
        if len(g):
            right.scatter(g["batch_score"], g["online_score"], s=10, alpha=0.6, color=color, label=lab)
    if al["online_score"].notna().any():
        right.legend(fontsize=8)
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("batch score")
    right.set_ylabel("online score")
    right.set_title("Batch against online score (alerts with an online score)", fontsize=10)
    return fig


def plot_campaign_timeline(s: Summary) -> Figure:
    """One row per campaign: malicious events (red ticks) and alerts on its connections."""
    n = max(len(s.campaigns), 1)
    fig = Figure(figsize=(11, 1.6 + 0.5 * n), layout="constrained")
    ax = fig.subplots()
    mal, al = s.malicious_events, s.alert_table
    gap = s.campaign_gap_secs
    labelled = set()
    for row, c in enumerate(s.campaigns):
        y = n - row
        ev = mal[mal["campaign"] == c.number]
        ax.scatter(ev["secs"] / DAY, np.full(len(ev), y), marker="|", s=120, color=MALICIOUS_COLOR,
                   label=None if "m" in labelled else "malicious event")  # fmt: skip
        labelled.add("m")
        conns = set(ev["connection"])
        hit = al[al["connection"].isin(conns) & al["cutoff_secs"].between(c.start_secs - gap, c.end_secs + gap)]
        for lab, g in hit.groupby("cutoff_label"):
            ax.scatter(g["cutoff_secs"] / DAY, np.full(len(g), y + 0.25), marker="v", s=30, color=COLORS[lab],
                       label=None if lab in labelled else f"alert ({lab} cutoff)")  # fmt: skip
            labelled.add(lab)
        found = f"first alert +{duration(c.delay_secs)}" if c.delay_secs is not None else "missed"
        ax.annotate(f"{c.connections_detected}/{c.connections} conn., {found}", (c.end_secs / DAY, y),
                    xytext=(6, -3), textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_yticks([n - i for i in range(len(s.campaigns))], [f"#{c.number} {c.src_host}" for c in s.campaigns])
    ax.set_ylim(0.4, n + 0.8)
    ax.set_xlabel("event time (days)")
    ax.set_title("Detection timeline per campaign")
    if s.campaigns:
        lo = min(c.start_secs for c in s.campaigns) - gap
        hi = max(c.end_secs for c in s.campaigns) + gap
        ax.set_xlim(lo / DAY, hi / DAY + 0.12 * (hi - lo) / DAY)  # room for the annotations
        fig.legend(loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no malicious events in the truth", transform=ax.transAxes, ha="center")
    return fig


def _campaign_table(s: Summary) -> str:
    head = ("campaign", "src_host", "first malicious", "last malicious", "malicious events",
            "connections alerted", "alerts", "detection delay")  # fmt: skip
    rows = []
    for c in s.campaigns:
        cells = (f"#{c.number}", c.src_host, event_time(c.start_secs), event_time(c.end_secs), f"{c.malicious_events:,}",
                 f"{c.connections_detected}/{c.connections}", f"{c.alerts:,}",
                 duration(c.delay_secs) if c.delay_secs is not None else "not detected")  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return (
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    )


def render_report(s: Summary, title: str = "cyberstream alerts") -> str:
    """The report as one HTML string with the plots embedded."""
    figures = [
        ("Alerts over event time", plot_alerts_over_time(s),
         "Top: malicious (label A) events per hour of event time. Bottom: alerts per hour, coloured by the "
         "label of the alerted cutoff."),
        ("Score distributions", plot_score_distributions(s),
         "The detector publishes only alerts, so these are the scores of alerted cutoffs (at or above the "
         "threshold): clean = cutoffs whose label is negative, malicious = positive. Cutoffs below the "
         "threshold are not seen by the alert consumer."),
        ("Detection timeline per campaign", plot_campaign_timeline(s),
         f"A campaign is a run of malicious events from one src_host with no pause longer than "
         f"{duration(s.campaign_gap_secs)}. Red ticks: its malicious events; triangles: alerts on its "
         f"connections from {duration(s.campaign_gap_secs)} before its first malicious event to "
         f"{duration(s.campaign_gap_secs)} after its last."),
    ]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        f"<pre>{html.escape(format_summary(s))}</pre>",
        f"<p>Cutoff label: {html.escape(label_definition(s.spec))}.</p>",
    ]
    for heading, fig, caption in figures:
        parts += [
            f"<h2>{html.escape(heading)}</h2>",
            f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{_png(fig)}'>",
            f"<p>{html.escape(caption)}</p>",
        ]
    parts += ["<h2>Campaigns</h2>", _campaign_table(s), "</body></html>"]
    return "\n".join(parts)


def write_report(s: Summary, path: str | os.PathLike = DEFAULT_REPORT, title: str = "cyberstream alerts") -> Path:
    """Write the HTML report to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(s, title), encoding="utf-8")
    tmp.replace(path)
    return path

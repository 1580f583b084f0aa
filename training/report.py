"""``report.html``: what training did and how well the model does, readable without any tool.

One self-contained HTML file: the metrics table (model, baseline and the comparisons),
ROC and PR curves on the validation cutoffs, the top feature importances (permutation
importance on validation, PR AUC drop), the cutoff counts, the dropped features and the
definitions used. Figures are matplotlib PNGs embedded as base64.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_COLUMNS = ("roc_auc", "pr_auc", "precision", "recall", "alerts_per_day", "threshold")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def curve_figures(curves: Mapping[str, Mapping[str, Sequence[float]]], prevalence: float | None) -> tuple[str, str]:
    """ROC and PR curves, one line per scorer; returns two base64 PNGs."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, validation cutoffs")
    ax.legend(loc="lower right", fontsize=8)
    roc = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, c in curves.items():
        ax.step(c["recall"], c["precision"], where="post", label=name)
    if prevalence is not None:
        ax.axhline(prevalence, linestyle=":", color="grey", label=f"chance ({prevalence:.2%})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, validation cutoffs", ylim=(0, 1.02))
    ax.legend(loc="upper right", fontsize=8)
    return roc, _png(fig)


def importance_figure(importances: Sequence[Mapping[str, Any]], top: int = 20) -> str:
    rows = list(importances)[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.32 * max(len(rows), 1) + 1))
    ax.barh([r["feature"] for r in rows], [r["mean"] for r in rows], xerr=[r["std"] for r in rows], color="#4a7ab5")
    ax.set(xlabel="drop in validation PR AUC when the feature is shuffled", title=f"Top {len(rows)} features")
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def _metrics_table(rows: Mapping[str, Mapping[str, Any] | None]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("scorer", *METRIC_COLUMNS))
    body = []
    for name, m in rows.items():
        if m is None:
            continue
        body.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in METRIC_COLUMNS)
                    + "</tr>")  # fmt: skip
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _kv_table(items: Mapping[str, Any]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in items.items()) + "</table>"


def write_report(
    path: str | Path,
    metadata: Mapping[str, Any],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    importances: Sequence[Mapping[str, Any]],
    prevalence: float | None = None,
) -> Path:
    """Write the report for a trained model (``metadata`` as saved in metadata.json)."""
    path = Path(path)
    roc, pr = curve_figures(curves, prevalence)
    rows: dict[str, Any] = {f"model: {metadata['classifier']}": metadata["validation"], "baseline: " + metadata["baseline"]["score"]: metadata["baseline"]}
    for name, m in metadata.get("comparisons", {}).items():
        rows[name] = m
    counts = metadata["cutoffs"]
    cutoff_rows = {
        f"{split}: {k}": v for split in ("train", "valid") for k, v in counts.get(split, {}).items()
    }
    cutoff_rows["eligible cutoffs (all)"] = counts.get("eligible")
    cutoff_rows["labelled cutoffs (all)"] = counts.get("labelled")
    spec = metadata["label_spec"]
    sections = [
        "<h1>cyberstream: batch model report</h1>",
        f"<p>Data <code>{html.escape(str(metadata['data']['path']))}</code>: {_fmt(metadata['data']['rows'])} rows "
        f"({_fmt(metadata['data']['rejected'])} rejected), connection kind <b>{html.escape(metadata['connection_kind'])}</b>, "
        f"training window {_fmt(metadata['window_secs'])} s. Trained on cutoffs whose label was known by "
        f"secs {_fmt(metadata['training_span']['train_until_secs'])}; validated on the cutoffs after it "
        f"({_fmt(metadata['training_span']['valid_days'])} days). Never shuffled.</p>",
        "<h2>Validation metrics</h2>",
        _metrics_table(rows),
        f"<p>Threshold {_fmt(metadata['threshold'])}: {html.escape(metadata['threshold_method'])}. "
        "Figures are weighted by each sampled negative's sampling rate, so they estimate every cutoff the "
        "detector scores. The classifier and the threshold were chosen on these validation cutoffs, so "
        "precision and recall at the threshold are optimistic; ROC AUC and PR AUC do not depend on it.</p>",
        "<p>Comparisons: <i>shuffled split</i> trains and validates the same pipeline on a random split of the "
        "same cutoffs (what the original demo did): the future leaks into training. <i>time features</i> rows show "
        "the other choice for features over absolute time (see below).</p>",
        f"<div>{_img(roc, 'ROC curves')} {_img(pr, 'PR curves')}</div>",
        "<h2>Feature importances</h2>",
        _img(importance_figure(importances), "feature importances") if importances else "<p>(none computed)</p>",
        "<h2>Candidates (validation PR AUC)</h2>",
        _kv_table({k: v.get("pr_auc") for k, v in metadata.get("candidates", {}).items()}),
        "<h2>Cutoffs</h2>",
        _kv_table(cutoff_rows),
        f"<p>Label: order a connection's events by (secs, log_id); a cutoff at the last event k of each second "
        f"with at least N={spec['min_events']} earlier events; label = any of events k+{spec['lead']} .. "
        f"k+{spec['lead'] + spec['window'] - 1} malicious; no label with fewer than two of them.</p>",
        "<h2>Features</h2>",
        f"<p>{len(metadata['feature_names'])} features saved (engine: {html.escape(metadata['feature_engine'])}, "
        f"absolute-time features: {html.escape(metadata['time_features'])}).</p>",
        _kv_table(metadata.get("dropped_features", {})),
        "<h2>Timing</h2>",
        _kv_table(metadata.get("timing", {})),
        "<h2>Metadata</h2>",
        f"<pre>{html.escape(json.dumps({k: v for k, v in metadata.items() if k != 'feature_names'}, indent=1, default=str))}</pre>",
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "pre{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:80%}")  # fmt: skip
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>cyberstream model report</title>"
                    f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")  # fmt: skip
    return path

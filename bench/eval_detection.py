"""Detection on several data sets, end to end through a real broker: DETECTION.md's figures.

For each data set (generated: a seed and a scenario), the script

1. generates the ten days (``cyberstream generate``);
2. trains on days 1-8 only (a copy of the file cut at day 8: training's own time split,
   model choice and alert-budget threshold never see days 9-10), into its own model
   directory, with the history features on (and, with ``--compare-window-only``, off);
3. replays the ten days through a real broker with the detector running
   (``cyberstream demo --keep-broker``), then reads every alert back (``cyberstream alerts --json``);
4. judges days 9-10: an alert is TRUE when its connection has a malicious event in the
   cutoff's own second or among its next L+W (=12) events, FALSE otherwise. It reports the
   recall of malicious connections (those with a malicious event in days 9-10), false
   alerts per day, and per campaign (the malicious events of one source host) whether and
   how soon after its first malicious event of days 9-10 it got a true alert;
5. puts the unseen-edge rule beside it on the same data and days: an alert on every event
   whose (user, source host, destination host) was never seen before.

Slow (minutes per data set): a benchmark, not a test. Usage:

    .venv/bin/python bench/eval_detection.py --out var/eval [--sets default-7,default-1,default-2,hard-0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

JUDGE_FROM = 8 * 86_400
JUDGE_DAYS = 2.0
HORIZON = 12  # L + W of the label definition


def sh(*args: str, out: Path | None = None) -> str:
    """Run a command, fail loudly with its output."""
    p = subprocess.run(list(args), capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    if out is not None:
        out.write_text(p.stdout)
    return p.stdout


def truth_table(csv: Path) -> pd.DataFrame:
    ev = pd.read_csv(csv)
    ev["log_id"] = np.arange(len(ev))
    ev["connection"] = ev["src_name"] + " / " + ev["dest_name"]
    ev["bad"] = ev["label"] == "A"
    ev = ev.sort_values(["connection", "secs", "log_id"], kind="stable").reset_index(drop=True)
    # per event: is there a malicious event in its own second or among the next HORIZON events of its connection
    bad = ev["bad"].to_numpy()
    conn = ev["connection"].to_numpy()
    ahead = np.zeros(len(ev), dtype=bool)
    for k in range(HORIZON + 1):
        shifted = np.r_[bad[k:], np.zeros(k, dtype=bool)]
        same = np.r_[conn[k:] == conn[: len(conn) - k], np.zeros(k, dtype=bool)]
        ahead |= shifted & same
    second_bad = ev.groupby(["connection", "secs"])["bad"].transform("any").to_numpy()
    ev["true_if_alerted"] = ahead | second_bad
    return ev


def judge(ev: pd.DataFrame, alerts: pd.DataFrame) -> dict:
    """Recall, false alerts per day and campaigns of days 9-10 for alerts (connection, cutoff_secs)."""
    last = ev.groupby(["connection", "secs"]).tail(1).set_index(["connection", "secs"])["true_if_alerted"]
    a = alerts[alerts["cutoff_secs"] >= JUDGE_FROM].copy()
    a["true"] = [bool(last.get((c, int(t)), False)) for c, t in zip(a["connection"], a["cutoff_secs"], strict=True)]
    bad = ev[ev["bad"] & (ev["secs"] >= JUDGE_FROM)]
    mal = set(bad["connection"])
    caught = set(a.loc[a["true"], "connection"]) & mal
    campaigns = []
    for host, g in bad.groupby("src_host"):
        hits = a[a["true"] & a["connection"].isin(set(g["connection"]))]
        first = int(g["secs"].min())
        campaigns.append({"src_host": host, "malicious_events": len(g), "connections": g["connection"].nunique(),
                          "detected": not hits.empty,
                          "first_alert_after_secs": int(hits["cutoff_secs"].min() - first) if not hits.empty else None})
    return {"malicious_connections": len(mal), "caught": len(caught),
            "recall": len(caught) / len(mal) if mal else None,
            "alerts": len(a), "false_alerts_per_day": float((~a["true"]).sum() / JUDGE_DAYS),
            "campaigns": campaigns}


def unseen_edge_rule(ev: pd.DataFrame) -> pd.DataFrame:
    """Alerts of the rule: every event whose (user, source host, destination host) is new."""
    order = ev.sort_values(["secs", "log_id"], kind="stable")
    new = ~order.duplicated(["src_name", "src_host", "dest_host"])
    hit = order[new]
    return pd.DataFrame({"connection": hit["connection"], "cutoff_secs": hit["secs"]}).drop_duplicates()


def run_set(name: str, out: Path, compare: bool) -> dict:
    scenario, seed = name.rsplit("-", 1)
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    csv = d / "events.csv"
    if not csv.exists():
        sh("cyberstream", "generate", "--seed", seed, "--scenario", scenario, "--out", str(csv), "--no-progress")
    train_csv = d / "days-1-8.csv"
    if not train_csv.exists():
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
        raw[raw["secs"].astype(int) < JUDGE_FROM].to_csv(train_csv, index=False)
    ev = truth_table(csv)
    result = {"set": name, "rule": judge(ev, unseen_edge_rule(ev))}
    for history in ("on", "off") if compare else ("on",):
        model = d / f"model-history-{history}"
        if not (model / "metadata.json").exists():
            sh("cyberstream", "train", "--data", str(train_csv), "--out", str(model), "--history-features", history,
               "--no-progress", out=d / f"train-{history}.txt")
        sh("cyberstream", "demo", "--data", str(csv), "--model-dir", str(model), "--quiet", "--keep-broker",
           "--report", str(d / f"alerts-{history}.html"), out=d / f"demo-{history}.txt")
        raw = sh("cyberstream", "alerts", "--json", "--quiet", "--idle-timeout", "5")
        sh("cyberstream", "broker", "stop")
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        alerts = pd.DataFrame(rows, columns=["connection", "cutoff_secs"]) if rows else pd.DataFrame(
            columns=["connection", "cutoff_secs"])
        alerts = alerts.drop_duplicates()
        result[f"detector_history_{history}"] = judge(ev, alerts)
    (d / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("var/eval"))
    ap.add_argument("--sets", default="default-7,default-1,default-2,hard-0",
                    help="comma-separated SCENARIO-SEED data sets (default %(default)s)")
    ap.add_argument("--compare-window-only", action="store_true",
                    help="also train and run a model without the history features")
    args = ap.parse_args()
    for name in args.sets.split(","):
        r = run_set(name.strip(), args.out, args.compare_window_only)
        for key in [k for k in r if k != "set"]:
            m = r[key]
            camp = m["campaigns"]
            delays = [c["first_alert_after_secs"] for c in camp if c["detected"]]
            print(f"{r['set']:10} {key:22} recall {m['caught']}/{m['malicious_connections']} "
                  f"({(m['recall'] or 0):.2f}), false alerts/day {m['false_alerts_per_day']:.1f}, campaigns "
                  f"{sum(c['detected'] for c in camp)}/{len(camp)} detected, first alert after "
                  f"{[d // 60 for d in delays]} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

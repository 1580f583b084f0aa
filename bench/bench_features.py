"""Benchmark of the feature engines on generated LANL-like traffic (not part of the test suite).

Prints, measured in one run:

* features alone, compiled engine, every cutoff (per connection and distinct second):
  - the detector's way: ``observe(Event)`` per event, ``features_at`` for the seconds a poll
    batch closes, ``advance`` to the watermark (events/s, time split);
  - the training way: ``feature_matrix`` over a DataFrame (events/s);
* the naive featuretools path on a sample of the same cutoffs, one ``calculate_feature_matrix``
  per cutoff (on the window's events of that connection, and on all the window's events),
  and the ratio;
* memory per active connection (the engine's own estimate and the process RSS growth);
* events/s and memory for windows of 1 hour, 1 day and 3 days, and for more connections.

Usage: ``python bench/bench_features.py [--days 3] [--events-per-day 200000] [--events 300000]``.
Wall-clock rates depend on what else runs on the machine: CPU seconds are printed as well.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import featuretools as ft
import numpy as np
import pandas as pd
import psutil

from cyberstream.features import CompiledEngine, feature_matrix
from cyberstream.features.entityset import build_entityset
from cyberstream.features.oracle import calculate_with_featuretools
from cyberstream.schema import ATTRIBUTE_FIELDS, EVENT_FIELDS, IDENTITY_FIELDS, Event
from producer.generator import GeneratorConfig, generate

HOUR, DAY = 3600, 86_400


def load_events(days: int, events_per_day: int, seed: int, limit: int | None) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.csv"
        generate(GeneratorConfig(days=days, events_per_day=events_per_day, seed=seed), path)
        df = pd.read_csv(
            path,
            dtype={f: str for f in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS)},
            na_values={a: ["?"] for a in ATTRIBUTE_FIELDS},
            keep_default_na=False,
            nrows=limit,
        )
    df.insert(0, "log_id", np.arange(len(df)))
    return df.drop(columns=["label"])


def cutoffs_of(df: pd.DataFrame) -> list[tuple[str, int]]:
    """Per connection and distinct second (the lead's cutoff definition)."""
    conn = (df.src_name + " / " + df.dest_name).to_numpy()
    cut = pd.DataFrame({"c": conn, "t": df.secs.to_numpy()}).drop_duplicates(keep="last")
    return list(zip(cut.c.tolist(), cut.t.tolist(), strict=True))


def feature_defs(df: pd.DataFrame, tmp: Path) -> list[ft.FeatureBase]:
    es = build_entityset(df.iloc[:20_000])
    defs = ft.dfs(entityset=es, target_dataframe_name="sessions", max_depth=3, trans_primitives=[], features_only=True)
    ft.save_features(defs, str(tmp / "features.json"))
    return ft.load_features(str(tmp / "features.json"))


def as_events(df: pd.DataFrame) -> list[Event]:
    cols = [df[f].to_numpy(dtype=object) for f in EVENT_FIELDS]
    out = []
    for row in zip(*cols, strict=True):
        vals = [None if isinstance(v, float) and math.isnan(v) else v for v in row]
        vals[0], vals[1] = int(vals[0]), int(vals[1])
        out.append(Event(*vals))
    return out


def stream(defs, warm: list[Event], events: list[Event], window: int, batch: int = 2000) -> dict:
    """The detector's loop: poll batches, cutoffs when a second closes, watermark behind.

    ``warm`` events go through the same loop first, untimed, so that the window is full.
    """
    engine = CompiledEngine(defs, window, max_events_per_connection=None)
    rss0 = psutil.Process().memory_info().rss
    _loop(engine, warm, batch)
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    t_obs, t_feat, t_adv, cutoffs = _loop(engine, events, batch)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    st = engine.stats()
    return {
        "events/s": len(events) / wall,
        "events/s (cpu)": len(events) / cpu,
        "cutoffs": cutoffs,
        "observe %": 100 * t_obs / wall,
        "features_at %": 100 * t_feat / wall,
        "advance %": 100 * t_adv / wall,
        "connections": st.connections,
        "pairs": st.pairs,
        "window events": st.window_events,
        "bytes/connection": st.bytes_per_connection,
        "rss growth MB": (psutil.Process().memory_info().rss - rss0) / 2**20,
    }


def _loop(engine: CompiledEngine, events: list[Event], batch: int) -> tuple[float, float, float, int]:
    t_obs = t_feat = t_adv = 0.0
    cutoffs = 0
    open_conns: dict[int, set[str]] = {}
    for start in range(0, len(events), batch):
        t0 = time.perf_counter()
        for ev in events[start : start + batch]:
            engine.observe(ev)
            open_conns.setdefault(ev.secs, set()).add(f"{ev.src_name} / {ev.dest_name}")
        t1 = time.perf_counter()
        last = events[min(start + batch, len(events)) - 1].secs
        done = start + batch >= len(events)
        closed = sorted(s for s in open_conns if s < last or done)
        ask = [(c, s) for s in closed for c in sorted(open_conns.pop(s))]
        if ask:
            engine.features_at(ask)
            cutoffs += len(ask)
        t2 = time.perf_counter()
        if closed:
            engine.advance(closed[-1])
        t3 = time.perf_counter()
        t_obs, t_feat, t_adv = t_obs + t1 - t0, t_feat + t2 - t1, t_adv + t3 - t2
    return t_obs, t_feat, t_adv, cutoffs


def naive(defs, df: pd.DataFrame, cutoffs, window: int, sample: int, whole_window: bool) -> float:
    """Seconds per cutoff of one featuretools call per cutoff."""
    rng = np.random.default_rng(0)
    pick = [cutoffs[i] for i in rng.choice(len(cutoffs), sample, replace=False)]
    conn = (df.src_name + " / " + df.dest_name).to_numpy()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c, t in pick:
            sel = (df.secs.to_numpy() <= t) & (df.secs.to_numpy() > t - window)
            if not whole_window:
                sel &= conn == c
            calculate_with_featuretools(defs, df[sel], [(c, t)], window)
    return (time.perf_counter() - t0) / sample


def line(label: str, r: dict) -> None:
    print(
        f"  {label:<26} {r['events/s']:>9,.0f} ev/s  ({r['events/s (cpu)']:>9,.0f} per cpu-s)  "
        f"conns {r['connections']:>7,}  pairs {r['pairs']:>7,}  window ev {r['window events']:>9,}  "
        f"{r['bytes/connection']:>7,.0f} B/conn  rss +{r['rss growth MB']:.0f} MB  "
        f"[observe {r['observe %']:.0f}% features {r['features_at %']:.0f}% advance {r['advance %']:.0f}%]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=3, help="days of traffic to generate (default 3)")
    ap.add_argument("--events-per-day", type=int, default=200_000, help="mean benign events per day")
    ap.add_argument("--events", type=int, default=300_000, help="events streamed per measurement")
    ap.add_argument("--naive-sample", type=int, default=15, help="cutoffs timed on the featuretools path")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore", FutureWarning)

    df = load_events(args.days, args.events_per_day, args.seed, None)
    with tempfile.TemporaryDirectory() as tmp:
        defs = feature_defs(df, Path(tmp))
    # measure on the last day's events, after the earlier days went through untimed
    start = (args.days - 1) * DAY
    sub = df[df.secs >= start].iloc[: args.events]
    warm_df = df[df.secs < start]
    cut = cutoffs_of(sub)
    print(f"{len(df):,} events generated ({args.days} days x {args.events_per_day:,}/day); "
          f"{len(defs)} DFS features; measuring {len(sub):,} events of day {args.days}, {len(cut):,} cutoffs "
          f"(after {len(warm_df):,} warm-up events)")

    print("\nfeatures alone, compiled engine, every cutoff, window 1 day:")
    warm, events = as_events(warm_df), as_events(sub)
    r = stream(defs, warm, events, DAY)
    line("detector loop (observe)", r)
    both = pd.concat([warm_df, sub])
    wall0, cpu0 = time.perf_counter(), time.process_time()
    feature_matrix(both, cutoffs_of(both), defs, DAY, chunk_events=20_000)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"  {'feature_matrix (training)':<26} {len(both) / wall:>9,.0f} ev/s  ({len(both) / cpu:>9,.0f} per cpu-s)"
          f"  [all {args.days} days, every cutoff]")

    print(f"\nnaive featuretools path, one calculate_feature_matrix per cutoff ({args.naive_sample} sampled):")
    per_cut = naive(defs, both, cut, DAY, args.naive_sample, whole_window=False)
    per_cut_all = naive(defs, both, cut, DAY, max(3, args.naive_sample // 5), whole_window=True)
    ev_per_cut = len(sub) / len(cut)
    for label, sec in (("window of the connection", per_cut), ("whole window (all conns)", per_cut_all)):
        rate = ev_per_cut / sec
        print(f"  {label:<26} {sec * 1000:>7.0f} ms/cutoff = {rate:>7,.1f} ev/s;  compiled / naive = {r['events/s'] / rate:,.0f}x")

    print("\nwindow length (detector loop):")
    for label, w in (("1 hour", HOUR), ("1 day", DAY), ("3 days", 3 * DAY)):
        gc.collect()
        line(label, stream(defs, warm, events, w))

    print("\nnumber of connections (detector loop, 1-day window, same event count; 25,000/day is the"
          " default ten days'):")
    n = min(len(sub), args.events // 2)
    for epd in (25_000, args.events_per_day // 4, args.events_per_day, args.events_per_day * 4):
        more = load_events(2, epd, args.seed, None)
        warm_more, more = more[more.secs < DAY], more[more.secs >= DAY].iloc[:n]
        gc.collect()
        line(f"{epd:,} events/day", stream(defs, as_events(warm_more), as_events(more), DAY))


if __name__ == "__main__":
    main()

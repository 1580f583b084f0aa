"""The compiled feature engine as the detector drives it: streaming, bounded, exact."""

from __future__ import annotations

import logging
import math
import warnings

import featuretools as ft
import numpy as np
import pandas as pd
import pytest
from featuretools.primitives import Median

from cyberstream.features import (
    CompiledEngine,
    feature_matrix,
    feature_names,
    features_equal,
    load_feature_defs,
)
from cyberstream.features.entityset import build_entityset
from cyberstream.features.oracle import calculate_with_featuretools
from cyberstream.schema import EVENT_FIELDS, Event
from tests.test_features_parity import random_stream


def events_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows (secs, src_name, dest_name, src_host, dest_host, auth, login, stage, result) -> events."""
    df = pd.DataFrame(rows, columns=list(EVENT_FIELDS[1:]))
    df.insert(0, "log_id", range(len(df)))
    return df


def dfs_defs(events: pd.DataFrame, tmp_path, extra=()) -> list[ft.FeatureBase]:
    es = build_entityset(events)
    defs = ft.dfs(entityset=es, target_dataframe_name="sessions", max_depth=3, trans_primitives=[], features_only=True)
    defs = [*defs, *(make(es) for make in extra)]
    path = tmp_path / "features.json"
    ft.save_features(defs, str(path))
    return load_feature_defs(path)


def oracle(defs, events, cutoffs, window) -> pd.DataFrame:
    """featuretools per cutoff time, on the EntitySet of the events so far."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in sorted({t for _, t in cutoffs}):
            conns = [c for c, tt in cutoffs if tt == t]
            out.append(calculate_with_featuretools(defs, events[events.secs <= t], [(c, t) for c in conns], window))
        return pd.concat(out)


def to_events(df: pd.DataFrame) -> list[Event]:
    return [
        Event(**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        for row in df[list(EVENT_FIELDS)].to_dict("records")
    ]


def stream_like_the_detector(engine: CompiledEngine, events: pd.DataFrame) -> tuple[list, pd.DataFrame]:
    """observe() one event at a time, cutoffs when a second closes, advance() lagging behind."""
    asked, got = [], []
    open_second, open_conns, lagging = None, set(), []
    for ev in to_events(events):
        if open_second is not None and ev.secs > open_second:
            batch = sorted((c, open_second) for c in open_conns)
            asked += batch
            got.append(engine.features_at(batch))
            lagging.append(open_second)
            if len(lagging) > 3:  # the watermark trails the cutoffs by a few seconds
                engine.advance(lagging.pop(0))
            open_conns = set()
        engine.observe(ev)
        open_second = ev.secs
        open_conns.add(f"{ev.src_name} / {ev.dest_name}")
    return asked, pd.concat(got)


def test_streaming_like_the_detector_equals_the_batch_path(tmp_path):
    events = random_stream(21, n_events=500, n_sessions=30)
    defs = dfs_defs(events, tmp_path)
    window = 7
    asked, streamed = stream_like_the_detector(CompiledEngine(defs, window), events)
    batch = feature_matrix(events, asked, defs, window, chunk_events=64)
    assert len(streamed) == len(asked) > 300
    for name in feature_names(defs):
        for x, y in zip(streamed[name].astype(object), batch[name].astype(object), strict=True):
            assert features_equal(x, y, rel_tol=1e-12, abs_tol=0), name


def test_pools_that_start_tiny_grow_and_compact_without_changing_a_value(tmp_path, monkeypatch):
    """Every growth path (slots, lanes, pair lists, store compaction) taken many times."""
    from cyberstream.features import compiled

    events = random_stream(23, n_events=700, n_sessions=40)
    defs = dfs_defs(events, tmp_path)
    asked, want = stream_like_the_detector(CompiledEngine(defs, 30), events)
    monkeypatch.setattr(compiled, "INITIAL_SLOTS", 2)
    monkeypatch.setattr(compiled, "INITIAL_POOL", 8)
    # Watch every store compaction: the window's events move to the front intact, the evicted
    # ones are gone, and logical indexes (physical + BASE) stay valid.
    compactions = []
    real_compact = compiled.CompiledEngine._compact

    def watched_compact(self, force: bool = False) -> None:
        meta, S = self._meta, self.S
        base, evict, size = (int(meta[i]) for i in (compiled.k.BASE, compiled.k.EVICT, compiled.k.SIZE))
        before = {name: getattr(S, name)[evict - base : size - base].copy() for name in ("secs", "pair", "conn", "dead")}
        real_compact(self, force)
        if int(meta[compiled.k.BASE]) == base:
            return  # not due
        live = size - evict
        assert int(meta[compiled.k.BASE]) == evict and int(meta[compiled.k.SIZE]) == size
        for name, values in before.items():
            np.testing.assert_array_equal(getattr(S, name)[:live], values, err_msg=name)
        secs = S.secs[:live]
        assert np.all(np.diff(secs) >= 0) and (live == 0 or secs[0] > meta[compiled.k.LIVE] - self.window_secs)
        assert not S.dead[:live].any() and live == int(self.C.n.sum())  # no cap: every live event counts
        compactions.append((evict - base, live))

    monkeypatch.setattr(compiled.CompiledEngine, "_compact", watched_compact)
    engine = CompiledEngine(defs, 30)
    asked_tiny, got = stream_like_the_detector(engine, events)
    assert asked_tiny == asked and len(asked) > 300
    assert len(engine._lanes["P"][0]) > 8 and len(engine._lanes["C"][0]) > 8 and len(engine._lists[0]) > 8
    assert engine.P.capacity > 2 and engine.S.capacity > 2
    assert len(compactions) >= 5, compactions
    assert sum(dead for dead, _ in compactions) > len(events) // 2, "most events were compacted away"
    for name in feature_names(defs):
        for x, y in zip(got[name].astype(object), want[name].astype(object), strict=True):
            assert features_equal(x, y, rel_tol=0, abs_tol=0), name


def test_std_and_skew_stay_exact_after_a_million_updates():
    """1,000,000 events of one session at secs ~ 8.6e5 slide through a 1-day window."""
    rng = np.random.default_rng(5)
    n = 1_000_000
    secs = np.sort(rng.integers(0, 864_000, n)) + 8_600  # the last window sits at ~8.6e5
    secs[-2000:] = secs[-2000]  # a burst: a tiny spread far from the window's start
    secs[-1000:] += rng.integers(0, 3, 1000)
    secs.sort()
    events = pd.DataFrame(
        {
            "log_id": np.arange(n),
            "secs": secs,
            "src_name": "U1@DOM1",
            "dest_name": "U1@DOM1",
            "src_host": rng.choice(["C1", "C2", "C3"], n),
            "dest_host": "C9",
            "auth_type": "NTLM",
            "login_type": None,
            "stage": "LogOn",
            "result": "Success",
        }
    )
    defs = [f for f in dfs_defs(events.iloc[:200], _TmpDir()) if f.get_name() in ("STD(log.secs)", "SKEW(log.secs)",
                                                                                    "MEAN(name_host_pairs.STD(log.secs))")]
    cutoffs = [("U1@DOM1 / U1@DOM1", int(t)) for t in (secs[n // 2], secs[-1500], secs[-1])]
    for window in (86_400, 2):
        fm = feature_matrix(events, cutoffs, defs, window, chunk_events=250_000)
        for (_, t), (_, row) in zip(cutoffs, fm.iterrows(), strict=True):
            inside = events[(events.secs <= t) & (events.secs > t - window)]
            want_std, want_skew = inside.secs.std(), inside.secs.skew()
            assert features_equal(row["STD(log.secs)"], want_std, abs_tol=0), (window, t)
            assert features_equal(row["SKEW(log.secs)"], want_skew, abs_tol=0), (window, t)
            per_pair = inside.groupby("src_host").secs.std().mean()
            assert features_equal(row["MEAN(name_host_pairs.STD(log.secs))"], per_pair, abs_tol=0)


class _TmpDir:
    """A throwaway directory path for the feature JSON of the million-event test."""

    def __truediv__(self, name):
        import tempfile
        from pathlib import Path

        return Path(tempfile.mkdtemp()) / name


S = "A / B"
EVICTION_ROWS = [
    (10, "A", "B", "h1", "d1", "NTLM", None, "LogOn", "Success"),
    (20, "A", "B", "h2", "d2", "Kerberos", None, "TGS", "Success"),
    (20, "A", "B", "h2", "d2", "Kerberos", None, "TGS", "Fail"),
    (30, "A", "B", "h1", "d1", None, None, "TGS", "Success"),
    (55, "A", "B", "h3", "d1", "NTLM", "Network", "LogOff", "Fail"),
    (61, "A", "B", "h2", "d2", "NTLM", "Network", "LogOn", "Success"),
]


@pytest.mark.parametrize("advance_every", [None, 1])
def test_min_max_and_counts_follow_evictions(tmp_path, advance_every):
    events = events_frame(EVICTION_ROWS)
    defs = dfs_defs(events, tmp_path)
    engine = CompiledEngine(defs, 30)
    want = {  # window (t - 30, t]
        20: dict(cnt=3, mn=10, mx=20, pairs=2, min_pair_max=10, max_pair_min=20),
        30: dict(cnt=4, mn=10, mx=30, pairs=2, min_pair_max=20, max_pair_min=20),
        55: dict(cnt=2, mn=30, mx=55, pairs=2, min_pair_max=30, max_pair_min=55),
        61: dict(cnt=2, mn=55, mx=61, pairs=2, min_pair_max=55, max_pair_min=61),
        95: dict(cnt=0, mn=math.nan, mx=math.nan, pairs=0, min_pair_max=math.nan, max_pair_min=math.nan),
    }
    for ev in to_events(events):
        engine.observe(ev)
    for t, exp in want.items():
        row = engine.features_at([(S, t)]).iloc[0]
        assert row["COUNT(log)"] == exp["cnt"]
        assert features_equal(row["MIN(log.secs)"], exp["mn"])
        assert features_equal(row["MAX(log.secs)"], exp["mx"])
        assert row["COUNT(name_host_pairs)"] == exp["pairs"]
        assert features_equal(row["MIN(name_host_pairs.MAX(log.secs))"], exp["min_pair_max"])
        assert features_equal(row["MAX(name_host_pairs.MIN(log.secs))"], exp["max_pair_min"])
        if advance_every:
            engine.advance(t)
    assert not mismatch(engine_rows(defs, events, list(want)), oracle(defs, events, [(S, t) for t in want], 30))
    if advance_every:
        assert engine.stats().connections == 0 and engine.stats().window_events == 0


def engine_rows(defs, events, times):
    return feature_matrix(events, [(S, t) for t in times], defs, 30, chunk_events=1)


def mismatch(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    return [
        f"{n}@{i}: {x!r} != {y!r}"
        for n in b.columns
        for i, (x, y) in enumerate(zip(a[n].astype(object), b[n].astype(object), strict=True))
        if not features_equal(x, y)
    ]


def test_mode_ties_go_to_the_smallest_value_as_in_featuretools(tmp_path):
    rows = [
        (1, "Z", "Z", "h9", "h9", "NTLM", None, "TGS", "Success"),  # TGS seen first, elsewhere
        (2, "A", "B", "h2", "d2", "NTLM", "Network", "TGS", "Success"),
        (3, "A", "B", "h1", "d1", "Kerberos", "Network", "LogOn", "Fail"),
        (3, "A", "B", "h1", "d1", "Kerberos", None, "LogOn", "Fail"),
        (4, "A", "B", "h2", "d2", "NTLM", None, "TGS", "Fail"),
        (5, "A", "B", "h3", "d0", None, None, "ZZZ", "Fail"),
    ]
    events = events_frame(rows)
    defs = dfs_defs(events, tmp_path)
    got = feature_matrix(events, [(S, 5)], defs, 100).iloc[0]
    assert got["MODE(log.stage)"] == "LogOn"  # LogOn 2, TGS 2
    assert got["MODE(log.auth_type)"] == "Kerberos"  # Kerberos 2, NTLM 2
    assert got["MODE(name_host_pairs.MODE(log.stage))"] == "LogOn"  # LogOn, TGS, ZZZ once each
    assert got["MODE(name_host_pairs.src_host)"] == "h1"  # h1, h2, h3
    assert got["MODE(log.name_host_pairs.dest_host)"] == "d1"  # d1 2 rows, d2 2 rows
    assert got["NUM_UNIQUE(log.login_type)"] == 1
    assert not mismatch(feature_matrix(events, [(S, 5)], defs, 100), oracle(defs, events, [(S, 5)], 100))


def test_state_is_bounded_cap_idle_and_late_events(tmp_path):
    events = random_stream(3, n_events=400, n_sessions=20)
    defs = dfs_defs(events, tmp_path)
    engine = CompiledEngine(defs, 86_400, max_events_per_connection=5)
    engine.observe_frame(events)
    last = int(events.secs.max())
    engine.advance(last)
    st = engine.stats()
    assert st.capped_events > 0
    assert st.window_events <= 5 * st.connections
    with pytest.raises(ValueError, match="late event"):
        engine.observe(to_events(events.iloc[:1])[0])
    with pytest.raises(ValueError, match="before the watermark"):
        engine.features_at([(S, last - 1)])
    engine.advance(last + 86_400)  # everything leaves the window
    st = engine.stats()
    assert (st.connections, st.pairs, st.window_events, st.pending_events) == (0, 0, 0, 0)
    row = engine.features_at([("U1@DOM1 / U1@DOM1", last + 86_401)]).iloc[0]
    assert row["COUNT(log)"] == 0 and pd.isna(row["MEAN(log.secs)"]) and pd.isna(row["src_name"])


def test_a_feature_it_cannot_compile_falls_back_to_featuretools(tmp_path, caplog):
    events = random_stream(8, n_events=120, n_sessions=8)
    median = lambda es: ft.Feature(es["log"].ww["secs"], parent_dataframe_name="sessions", primitive=Median)  # noqa: E731
    defs = dfs_defs(events, tmp_path, extra=[median])
    with caplog.at_level(logging.WARNING):
        engine = CompiledEngine(defs, 50)
    assert "MEDIAN(log.secs)" in caplog.text and "not compiled" in caplog.text
    assert [f.get_name() for f in engine.plan.fallback] == ["MEDIAN(log.secs)"]
    conns = sorted((events.src_name + " / " + events.dest_name).unique())
    t = int(events.secs.iloc[80])
    cut = [(c, t) for c in conns]
    got = feature_matrix(events, cut, defs, 50, chunk_events=40)
    assert got["MEDIAN(log.secs)"].notna().any()
    assert not mismatch(got, oracle(defs, events, cut, 50))

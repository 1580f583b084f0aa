"""Parity: every history feature of the streaming engine equals featuretools at every cutoff.

The history features (:mod:`cyberstream.features.history`) describe the cutoff's event
through its user, hosts and edges over every event so far, and over the recent window.
Random streams (several seeds, recent windows down to a few seconds so that events and
first sightings leave the window between cutoffs, ties in ``secs``, ``?`` identities,
missing attributes) go through the engine in small chunks; the oracle is
``calculate_feature_matrix`` on the history EntitySet of the events so far, target ``log``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cyberstream.features import features_equal, make_engine
from cyberstream.features.history import HistoryEngine, history_oracle_matrix
from tests.test_features_parity import random_stream
from training import dfs
from training.model import load_model, save_model


def _defs(recent_secs: int, tmp_path) -> list:
    """The saved history definitions, through the save/load round trip of a model directory."""
    features, _ = dfs.history_feature_definitions(random_stream(99, n_events=300), recent_secs=recent_secs)
    import featuretools as ft

    path = tmp_path / f"history-{recent_secs}.json"
    ft.save_features(features, str(path))
    return list(ft.load_features(str(path)))


def _cutoffs(events: pd.DataFrame, seed: int, n_times: int) -> list[tuple[str, int]]:
    """Every connection active at each of ``n_times`` random event seconds, plus some idle ones."""
    rng = np.random.default_rng(seed)
    conn = (events["src_name"] + " / " + events["dest_name"]).to_numpy()
    secs = events["secs"].to_numpy()
    times = np.sort(rng.choice(np.unique(secs[len(secs) // 5 :]), n_times, replace=False))
    out = []
    for t in times:
        active = list(dict.fromkeys(conn[secs == t]))
        seen = np.unique(conn[secs <= t])
        idle = [c for c in rng.choice(seen, min(8, len(seen)), replace=False) if c not in active]
        out += [(c, int(t)) for c in active + idle]
    return out


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> list[str]:
    bad = []
    for name in want.columns:
        for i, (a, b) in enumerate(zip(got[name].astype(object), want[name].astype(object), strict=True)):
            if not features_equal(a, b):
                bad.append(f"{name} at {got.index[i]}: engine {a!r}, featuretools {b!r}")
    return bad


@pytest.mark.parametrize("seed,recent_secs", [(1, 30), (2, 900), (4, 86_400)])
def test_history_engine_equals_featuretools(seed: int, recent_secs: int, tmp_path) -> None:
    defs = _defs(recent_secs, tmp_path)
    events = random_stream(seed, n_events=900, n_sessions=60)
    cutoffs = _cutoffs(events, seed, n_times=14)
    assert len(cutoffs) > 120
    engine = HistoryEngine(defs, 86_400)
    assert engine.window_secs == recent_secs  # the primitives' window, saved with them
    rows, parts, pos = [], [], 0
    secs = events["secs"].to_numpy()
    for t in sorted({t for _, t in cutoffs}):
        end = int(np.searchsorted(secs, t, side="right"))
        chunk = events.iloc[pos:end]
        # in small chunks, as the detector feeds it: pending events, then cutoffs, then advance
        for a in range(0, len(chunk), 7):
            engine.observe_frame(chunk.iloc[a : a + 7])
        pos = end
        asked = [c for c in cutoffs if c[1] == t]
        parts.append(engine.features_at(asked))
        rows += asked
        engine.advance(t)
    got = pd.concat(parts)
    want = history_oracle_matrix(events, rows, defs)
    bad = _compare(got, want)
    assert not bad, f"{len(bad)} of {want.size} values differ, e.g. " + "; ".join(bad[:5])
    # the values are not trivial: distinct counts and first sightings vary across the cutoffs
    counts = want[[c for c in want.columns if "NUM_" in c]].astype(float)
    assert (counts.nunique() >= 2).sum() >= len(counts.columns) // 2 and counts.nunique().max() > 5

def test_cap_forgets_idle_entries_and_counts_them(tmp_path) -> None:
    defs = _defs(30, tmp_path)
    events = random_stream(5, n_events=900, n_sessions=60)
    engine = HistoryEngine(defs, 86_400, max_keys=20)
    engine.observe_frame(events)
    engine.advance(int(events["secs"].max()))
    sizes = engine.map_sizes()
    assert engine.forgotten > 0
    for name, n in sizes.items():
        if "<-" not in name:
            # within the cap, except for entries still active in the window (never forgotten)
            assert n <= 20 + engine.over_cap, (name, n)
    # an edge forgotten is new again: its count restarts; the engine still answers
    last = events.iloc[-1]
    fm = engine.features_at([(f"{last.src_name} / {last.dest_name}", int(last.secs))])
    assert int(fm["name_host_pairs.COUNT(log)"].iloc[0]) >= 1


def test_combined_engine_and_model_directory_round_trip(tmp_path) -> None:
    """Window and history features through one engine, in saved order, and a model directory
    that stores both feature files and loads them back in the same order."""
    from sklearn.dummy import DummyClassifier

    events = random_stream(6, n_events=500)
    window, _ = dfs.feature_definitions(events.head(300))
    history, _ = dfs.history_feature_definitions(events.head(300))
    features = window + history
    engine = make_engine("compiled", features, 3_600)
    engine.observe_frame(events)
    last = events.iloc[-1]
    fm = engine.features_at([(f"{last.src_name} / {last.dest_name}", int(last.secs))])
    assert list(fm.columns) == [f.get_name() for f in features]
    save_model(tmp_path, DummyClassifier().fit([[0], [1]], [0, 1]), features, {"threshold": 0.5})
    assert (tmp_path / "history_features.json").is_file()
    loaded = load_model(tmp_path)
    assert [f.get_name() for f in loaded.features] == [f.get_name() for f in features]
    engine2 = make_engine("compiled", loaded.features, 3_600)
    engine2.observe_frame(events)
    fm2 = engine2.features_at([(f"{last.src_name} / {last.dest_name}", int(last.secs))])
    assert not _compare(fm2, fm)


def test_a_model_whose_history_primitives_do_not_load_is_refused_with_advice(tmp_path) -> None:
    """Definitions naming a primitive this version does not have (e.g. saved before a module
    moved) give ModelLoadError with what to do, not a featuretools traceback."""
    import json

    from sklearn.dummy import DummyClassifier

    from training.model import ModelLoadError, sha256_file

    events = random_stream(7, n_events=300)
    features = dfs.feature_definitions(events.head(200))[0] + dfs.history_feature_definitions(events.head(200))[0]
    save_model(tmp_path, DummyClassifier().fit([[0], [1]], [0, 1]), features, {"threshold": 0.5})
    path = tmp_path / "history_features.json"
    path.write_text(path.read_text().replace("cyberstream.features.primitives", "gone.module"))
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta["history_features_sha256"] = sha256_file(path)  # a consistent directory, only the primitive is unknown
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="do not load with this version.*retrain"):
        load_model(tmp_path)

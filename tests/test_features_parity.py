"""Parity: every compiled feature equals featuretools at every cutoff checked.

Random streams (several seeds and windows, down to 1 s so that events leave the window
between cutoffs; ties in ``secs``; ``?`` identities and missing attributes; sessions with
several name-host pairs, pairs that recur) go through the compiled engine in small chunks
(pending, commit and eviction paths all used). The oracle is the definition itself:
``calculate_feature_matrix`` on the EntitySet of the window's events at ``t``, with all
connections asked at the same ``t`` in one call (cheap enough to check thousands of cutoffs).
Cutoffs are taken at event seconds, so most connections are asked while active and some
long after their last event (absent rows: COUNT 0, NaN elsewhere).
"""

from __future__ import annotations

import warnings

import featuretools as ft
import numpy as np
import pandas as pd
import pytest

from cyberstream.connections import connection_fields
from cyberstream.features import CompiledEngine, feature_matrix, features_equal
from cyberstream.features.entityset import build_entityset, target_dataframe
from cyberstream.features.oracle import calculate_with_featuretools
from cyberstream.schema import EVENT_FIELDS

NAMES = [f"U{i}@DOM1" for i in range(10)] + [f"C{i}$@DOM1" for i in range(5)] + ["ANONYMOUS LOGON@C586", "?"]
HOSTS = [f"C{i}" for i in range(7)] + ["?"]
VALUES = {
    "auth_type": ["NTLM", "Kerberos", "Negotiate"],
    "login_type": ["Network", "Service", "Batch", "Interactive"],
    "stage": ["LogOn", "LogOff", "TGS", "TGT"],
    "result": ["Success", "Fail"],
}
GAPS = np.array([0, 0, 0, 1, 1, 2, 3, 5, 11, 40, 300])
DENSE_GAPS = np.array([0, 0, 0, 0, 0, 1, 1, 2])


def random_stream(seed: int, n_events: int = 700, n_sessions: int = 45, gaps: np.ndarray = GAPS) -> pd.DataFrame:
    """A small LANL-shaped stream, sorted by secs, secs around 8.6e5."""
    rng = np.random.default_rng(seed)
    sessions = list({(rng.choice(NAMES), rng.choice(NAMES)) for _ in range(n_sessions)})
    pairs = [[(rng.choice(HOSTS), rng.choice(HOSTS)) for _ in range(rng.integers(1, 5))] for _ in sessions]
    weight = rng.pareto(1.2, len(sessions)) + 0.2
    missing = {a: rng.uniform(0.05, 0.6) for a in VALUES}
    secs = 860_000 + np.cumsum(rng.choice(gaps, n_events))
    which = rng.choice(len(sessions), n_events, p=weight / weight.sum())
    rows = []
    for i, (t, s) in enumerate(zip(secs, which, strict=True)):
        src_host, dest_host = pairs[s][rng.integers(len(pairs[s]))]
        attrs = [None if rng.random() < missing[a] else str(rng.choice(v)) for a, v in VALUES.items()]
        rows.append((i, int(t), *sessions[s], src_host, dest_host, *attrs))
    return pd.DataFrame(rows, columns=list(EVENT_FIELDS))


@pytest.fixture(scope="module")
def feature_defs(tmp_path_factory) -> list[ft.FeatureBase]:
    """The DFS convention's definitions, through the saved-JSON round trip."""
    es = build_entityset(random_stream(99, n_events=400))
    defs = ft.dfs(entityset=es, target_dataframe_name="sessions", max_depth=3, trans_primitives=[], features_only=True)
    path = tmp_path_factory.mktemp("defs") / "features.json"
    ft.save_features(defs, str(path))
    return ft.load_features(str(path))


def oracle_at(defs, events: pd.DataFrame, conns: list[str], t: int, window: int) -> pd.DataFrame:
    in_window = events[(events.secs <= t) & (events.secs > t - window)]
    return calculate_with_featuretools(defs, in_window, [(c, t) for c in conns], window)


def mismatches(compiled: pd.DataFrame, oracle: pd.DataFrame) -> list[str]:
    bad = []
    for name in oracle.columns:
        a = compiled[name].astype(object).to_numpy()
        b = oracle[name].astype(object).to_numpy()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if not features_equal(x, y):
                bad.append(f"{name} at {compiled.index[i]}: compiled {x!r} != featuretools {y!r}")
    return bad


CASES = [(1, 1), (2, 2), (3, 5), (4, 30), (5, 400), (6, 86_400)]


def busy_seconds(events: pd.DataFrame, window: int, k: int, rng: np.random.Generator) -> list[int]:
    """Event seconds where many connections are active in the window, and a few random ones."""
    conn = (events.src_name + " / " + events.dest_name).to_numpy()
    secs = events.secs.to_numpy()
    cand = np.unique(secs)
    active = np.array([len(set(conn[(secs <= t) & (secs > t - window)])) for t in cand])
    busy = cand[np.argsort(-active, kind="stable")[: k - 3]]
    spare = rng.choice(np.setdiff1d(cand, busy), 3, replace=False)
    return sorted(int(t) for t in np.r_[busy, spare])


@pytest.mark.parametrize(("seed", "window"), CASES)
def test_every_compiled_feature_equals_featuretools(feature_defs, seed, window):
    events = random_stream(seed, n_sessions=60, gaps=DENSE_GAPS if window <= 30 else GAPS)
    conns = sorted((events.src_name + " / " + events.dest_name).unique())
    times = busy_seconds(events, window, 12, np.random.default_rng(seed))
    cutoffs = [(c, t) for t in times for c in conns]
    compiled = feature_matrix(events, cutoffs, feature_defs, window, chunk_events=23)
    names = [f.get_name() for f in feature_defs]
    assert list(compiled.columns) == names
    bad, active = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, t in enumerate(times):
            want = oracle_at(feature_defs, events, conns, t, window)
            got = compiled.iloc[k * len(conns) : (k + 1) * len(conns)]
            if k == 0:
                assert list(got.dtypes.astype(str)) == list(want.dtypes.astype(str))
            bad += mismatches(got, want)
            active += int((want["COUNT(log)"] > 0).sum())
    assert not bad, f"{len(bad)} mismatches, first: " + "\n".join(bad[:10])
    # each t is an event second, so some connection is active at it; others are absent
    assert active >= len(times)
    assert active < len(cutoffs) or window == 86_400


def test_window_entityset_gives_the_features_of_all_events_so_far(feature_defs):
    """The oracle's shortcut (only the window's events) equals the definition (all events <= t)."""
    events = random_stream(11, n_events=300)
    conns = sorted((events.src_name + " / " + events.dest_name).unique())
    window = 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in (int(events.secs.iloc[150]), int(events.secs.iloc[-1])):
            full = calculate_with_featuretools(feature_defs, events[events.secs <= t], [(c, t) for c in conns], window)
            short = oracle_at(feature_defs, events, conns, t, window)
            assert not mismatches(short, full)


@pytest.mark.parametrize("kind", ["name_host_pair", "src_name", "dest_pair"])
def test_other_connection_kinds_compile_and_match(kind, tmp_path):
    """Every connection kind of the EntitySet shape compiles fully and matches featuretools."""
    events = random_stream(4, n_events=300, n_sessions=20)
    es = build_entityset(events, kind)
    defs = ft.dfs(entityset=es, target_dataframe_name=target_dataframe(kind), max_depth=3, trans_primitives=[],
                  features_only=True)
    ft.save_features(defs, str(tmp_path / "f.json"))
    defs = ft.load_features(str(tmp_path / "f.json"))
    assert not CompiledEngine(defs, 20, kind=kind).plan.fallback
    conns = sorted(events[list(connection_fields(kind))].astype(str).agg(" / ".join, axis=1).unique())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in (int(events.secs.iloc[100]), int(events.secs.iloc[250])):
            got = feature_matrix(events, [(c, t) for c in conns], defs, 20, kind=kind, chunk_events=31)
            in_window = events[(events.secs <= t) & (events.secs > t - 20)]
            want = calculate_with_featuretools(defs, in_window, [(c, t) for c in conns], 20, kind=kind)
            assert not mismatches(got, want)

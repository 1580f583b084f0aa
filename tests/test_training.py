"""Training: strict CSV reading, cutoff sampling, feature definitions and values, the artifact, `train` end to end."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import featuretools as ft
import numpy as np
import pandas as pd
import pytest
from woodwork.logical_types import Boolean, Categorical

from cyberstream.cli import main as cli_main
from cyberstream.features.entityset import build_entityset, log_frame, to_time
from cyberstream.schema import HEADER
from training import cutoffs as cut
from training import dfs, model
from training.data import read_events
from training.labels import label_times

DAY = 86_400
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # featuretools 1.31 on pandas 2.3


def synthetic_rows(days: int = 5, seed: int = 1) -> list[str]:
    """A small LANL-like CSV body: machines, service logons, users, and a red team on days 1, 2 and 4.

    The attacker host C17693 uses compromised user accounts (whose sessions also carry their
    ordinary clean traffic) to reach many destinations with NTLM network logons.
    """
    rng = random.Random(seed)
    rows = []
    for day in range(days):
        base = day * DAY
        for m in range(12):  # computer accounts to domain controllers, Kerberos
            for _ in range(rng.randint(15, 40)):
                s = base + rng.randrange(DAY)
                stage = rng.choice(["TGS", "TGT", "LogOn", "LogOff"])
                rows.append((s, f"C{m}$@DOM1", f"C{m}$@DOM1", f"C{m}", f"C{rng.choice([625, 586])}",
                             "Kerberos" if stage != "LogOff" else "?", "Network", stage, "Success", "N"))
        for h in range(6):  # service logons on the host itself
            for _ in range(rng.randint(5, 15)):
                rows.append((base + rng.randrange(DAY), f"SYSTEM@C{h}", f"SYSTEM@C{h}", f"C{h}", f"C{h}",
                             "Negotiate", "Service", "LogOn", "Success", "N"))
        for u in range(10):  # users from their workstation to a few servers
            for _ in range(rng.randint(8, 25)):
                s = base + 8 * 3600 + rng.randrange(10 * 3600)
                rows.append((s, f"U{u}@DOM1", f"U{u}@DOM1", f"C{100 + u}", f"C{rng.choice([625, 529, 467])}",
                             rng.choice(["Kerberos", "Kerberos", "NTLM"]), "Network", rng.choice(["LogOn", "LogOff"]),
                             "Success" if rng.random() > 0.02 else "Fail", "N"))
        if day in (1, 2, 4):  # red team: two bursts a day, compromised U0..U3, fan-out to many hosts
            for _burst in range(2):
                start = base + rng.randrange(DAY - 3600)
                for u in rng.sample(range(4), 2):
                    for j in range(rng.randint(4, 8)):
                        rows.append((start + 20 * j + rng.randrange(5), f"U{u}@DOM1", f"U{u}@DOM1", "C17693",
                                     f"C{rng.randrange(200, 400)}", "NTLM", "Network", "LogOn", "Success", "A"))
                        if rng.random() < 0.3:  # some clean traffic of the same user in between
                            rows.append((start + 20 * j + 7, f"U{u}@DOM1", f"U{u}@DOM1", f"C{100 + u}", "C625",
                                         "Kerberos", "Network", "LogOn", "Success", "N"))
    rows.sort(key=lambda r: r[0])
    return [",".join(str(x) for x in r) for r in rows]


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    path.write_text(HEADER + "\n" + "\n".join(synthetic_rows()) + "\n")
    return path


@pytest.fixture(scope="module")
def events(data_csv) -> pd.DataFrame:
    df, report = read_events(data_csv, progress=False)
    assert report.rejected == 0
    return df


# ----------------------------------------------------------------------------- data


def test_read_events_counts_and_explains_rejected_rows(tmp_path):
    good = synthetic_rows(days=1)[:5]
    bad = ["x,U1@DOM1,U1@DOM1,C1,C2,?,?,?,?,N", "5,U1@DOM1,,C1,C2,?,?,?,?,N", "7,U1@DOM1,U1@DOM1,C1,C2,?,?,?,?,Q",
           "1,2,3", "-4,U1@DOM1,U1@DOM1,C1,C2,?,?,?,?,N"]  # fmt: skip
    path = tmp_path / "mixed.csv"
    path.write_text(HEADER + "\n" + "\n".join(good[:2] + bad + good[2:]) + "\n")
    df, report = read_events(path, progress=False)
    assert (report.rows, report.accepted, report.rejected) == (10, 5, 5)
    assert report.reasons["secs must be a non-negative integer"] == 2
    assert report.reasons["dest_name is empty"] == 1
    assert sum(report.reasons.values()) == 5
    assert [line for line, _ in report.examples] == [4, 5, 6, 7, 8]
    # log_id is the row number, so the good rows after the bad ones keep their numbers
    assert df.log_id.tolist() == [0, 1, 7, 8, 9]
    assert df.label.dtype == bool and df.auth_type.isna().sum() == sum("?" in g.split(",")[5] for g in good)


def test_read_events_refuses_a_file_without_the_header(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text("\n".join(synthetic_rows(days=1)[:3]) + "\n")
    with pytest.raises(ValueError, match="header"):
        read_events(path, progress=False)


# ----------------------------------------------------------------------------- cutoffs


def test_time_split_never_lets_a_training_label_see_the_validation_period(events):
    lt = label_times(events)
    until = cut.default_train_until(events.secs)
    st = cut.split_by_time(lt, until)
    train, valid = st[st.split == cut.TRAIN], st[st.split == cut.VALID]
    assert train.label_end_secs.max() <= until < valid.cutoff_secs.min()
    assert train.label.any() and valid.label.any()
    # cutoffs before the split whose label window crosses it are in neither
    crossing = lt[lt.label.notna() & (lt.cutoff_secs <= until) & (lt.label_end_secs > until)]
    assert len(crossing) > 0 and len(st) == lt.label.notna().sum() - len(crossing)


def test_sampling_keeps_every_positive_and_weights_negatives(events):
    st = cut.split_by_time(label_times(events), cut.default_train_until(events.secs))
    s = cut.sample_cutoffs(st, cut.SamplingPlan(negatives_per_positive=3, valid_negatives=100, seed=0))
    for name, g in st.groupby("split"):
        got = s[s.split == name]
        n_pos, n_neg = int(g.label.sum()), int((~g.label).sum())
        assert got.label.sum() == n_pos
        assert (~got.label).sum() == min(n_neg, 3 * n_pos if name == cut.TRAIN else 100)
        # weighted negatives stand for all negatives of the split
        assert got.loc[~got.label, "weight"].sum() == pytest.approx(n_neg)
        assert (got.loc[got.label, "weight"] == 1).all()
    n_pos = int(st.label.sum())
    capped = cut.sample_cutoffs(st, cut.SamplingPlan(negatives_per_positive=3, max_cutoffs=n_pos + 10))
    assert capped.label.sum() == n_pos and n_pos < len(capped) <= n_pos + 10
    everything = cut.sample_cutoffs(st, cut.SamplingPlan(negatives_per_positive=3, all_cutoffs=True))
    assert len(everything) == len(st) and (everything.weight == 1).all()


# ----------------------------------------------------------------------------- features


def test_no_saved_feature_depends_on_the_label(events):
    for policy in dfs.TIME_FEATURE_POLICIES:
        features, _ = dfs.feature_definitions(events.head(500), time_features=policy)
        for f in features:
            assert "label" not in dfs.feature_columns(f), f.get_name()
    # the check itself works: a feature built on a label column is caught and dropped
    lf = log_frame(events.head(500))
    lf["label"] = events.head(500)["label"].to_numpy()  # what the original demo did (a leak)
    es = ft.EntitySet("leaky")
    es.add_dataframe(dataframe_name="log", dataframe=lf[["log_id", "time", "session_id", "label"]], index="log_id",
                     time_index="time", logical_types={"label": Boolean, "session_id": Categorical})  # fmt: skip
    es.normalize_dataframe("log", "sessions", "session_id")
    leaky = ft.dfs(entityset=es, target_dataframe_name="sessions", max_depth=2, trans_primitives=[],
                   agg_primitives=["percent_true"], features_only=True)  # fmt: skip
    leaking = [f for f in leaky if "label" in dfs.feature_columns(f)]
    assert [f.get_name() for f in leaking] == ["PERCENT_TRUE(log.label)"]
    assert dfs.drop_reason(leaking[0], "session", "keep") == "derived from the label"


def test_feature_filters(events):
    kept, dropped = dfs.feature_definitions(events.head(500))
    names = {f.get_name() for f in kept}
    assert {"src_name", "dest_name", "MODE(name_host_pairs.src_host)", "MODE(log.name_host_pairs.session_id)"} <= set(
        dropped
    )
    assert dropped["MAX(log.secs)"] == "absolute time"
    assert dropped["MEAN(name_host_pairs.MIN(log.secs))"] == "absolute time"
    assert {"STD(log.secs)", "SKEW(name_host_pairs.MEAN(log.secs))", "MODE(log.auth_type)", dfs.BASELINE_FEATURE} <= names
    kept_all, _ = dfs.feature_definitions(events.head(500), time_features="keep")
    assert {"MAX(log.secs)", "SUM(log.secs)"} <= {f.get_name() for f in kept_all}
    assert not any(n in {f.get_name() for f in kept_all} for n in ("src_name", "MODE(name_host_pairs.dest_host)"))


def test_absolute_time_classification_matches_a_real_time_shift(events):
    """Features called absolute-time change when every event moves by a day; the others do not."""
    features = [f for f in dfs.run_dfs(events.head(300)) if not dfs.is_categorical(f)]
    lt = label_times(events)
    sample = lt.iloc[:: max(len(lt) // 40, 1)].reset_index(drop=True)
    a = dfs.batched_oracle_feature_matrix(events, sample, features, 6 * 3600, progress=False)
    moved = events.assign(secs=events.secs + DAY)
    b = dfs.batched_oracle_feature_matrix(moved, sample.assign(cutoff_secs=sample.cutoff_secs + DAY), features,
                                          6 * 3600, progress=False)  # fmt: skip
    for f in features:
        x, y = a[f.get_name()].to_numpy(), b[f.get_name()].to_numpy()
        same = np.allclose(x, y, rtol=1e-6, atol=1e-9, equal_nan=True)
        assert same != dfs.is_absolute_time(f), f.get_name()


def _assert_same_features(a: pd.DataFrame, b: pd.DataFrame, features) -> None:
    for f in features:
        n = f.get_name()
        if dfs.is_categorical(f):
            assert a[n].fillna("<NA>").tolist() == b[n].fillna("<NA>").tolist(), n
        else:
            x, y = a[n].to_numpy(float), b[n].to_numpy(float)
            ok = (np.isnan(x) & np.isnan(y)) | np.isclose(x, y, rtol=1e-9, atol=0)
            assert ok.all(), (n, x[~ok], y[~ok])


def test_feature_values_follow_the_definition(events):
    """Per-cutoff oracle == featuretools on ALL events so far; batched oracle == per-cutoff oracle."""
    features = [f for f in dfs.run_dfs(events.head(300)) if dfs.batch_safe(f)]
    lt = label_times(events)
    rng = np.random.default_rng(5)
    sample = lt.iloc[np.sort(rng.choice(len(lt), 40, replace=False))].reset_index(drop=True)
    window = 3 * 3600
    oracle = dfs.oracle_feature_matrix(events, sample, features, window, progress=False)
    for i in range(0, 40, 8):  # the definition itself, on the EntitySet of every event with secs <= t
        c, t = sample.connection_id[i], int(sample.cutoff_secs[i])
        es = build_entityset(events[events.secs <= t])
        fm = ft.calculate_feature_matrix(features, es, cutoff_time=pd.DataFrame({"session_id": [c], "time": [to_time(t)]}),
                                         training_window=f"{window} seconds", cutoff_time_in_index=False)  # fmt: skip
        _assert_same_features(dfs._normalise_dtypes(fm.reset_index(drop=True), features), oracle.iloc[[i]].reset_index(drop=True),
                              features)  # fmt: skip
    batched = dfs.batched_oracle_feature_matrix(events, sample, features, window, max_rows_per_call=300, progress=False)
    _assert_same_features(oracle, batched, features)
    assert oracle["COUNT(log)"].min() >= 1


# ----------------------------------------------------------------------------- model and artifact


def test_threshold_and_metrics_by_hand():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1, 0.05, 0.01])
    w = np.array([1, 1, 10, 10, 10, 1, 10, 10], dtype=float)
    thr, how = model.choose_threshold(y, s, w, days=2.0)
    assert thr == 0.8 and "F1" in how  # above 0.8: 2 TP, 0 FP; 0.7 would add 10 weighted FP
    m = model.evaluate(y, s, w, thr, days=2.0)
    assert (m["precision"], m["recall"], m["alerts_per_day"]) == (1.0, pytest.approx(2 / 3), 1.0)
    thr_budget, _ = model.choose_threshold(y, s, w, days=2.0, max_alerts_per_day=0.5)
    assert thr_budget == 0.9
    thr_none, how = model.choose_threshold(y, s, w, days=2.0, max_alerts_per_day=0.1)
    assert thr_none == 0.9 and "unreachable" in how


@pytest.fixture(scope="module")
def trained_run(data_csv, tmp_path_factory) -> dict:
    """`train` on the synthetic data, watching (not replacing) what it scores and saves: the
    pipeline it saves, and that pipeline's scores on the validation rows, as training computed them."""
    out = tmp_path_factory.mktemp("models") / "m"
    scored, saved = [], []
    real_scores, real_save = model.scores, model.save_model

    def watched_scores(pipeline, X):
        s = real_scores(pipeline, X)
        scored.append((pipeline, X.copy(), s.copy()))
        return s

    def watched_save(out_dir, pipeline, *rest, **kw):
        saved.append(pipeline)
        return real_save(out_dir, pipeline, *rest, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "scores", watched_scores)
        mp.setattr(model, "save_model", watched_save)
        rc = cli_main(["train", "--data", str(data_csv), "--out", str(out), "--no-progress",
                       "--negatives-per-positive", "5", "--window-secs", "21600"])  # fmt: skip
    assert rc == 0 and len(saved) == 1
    # The saved pipeline's first scoring is its validation (the candidates' loop, before any comparison).
    X, s = next((X, s) for pipe, X, s in scored if pipe is saved[0])
    return {"out": out, "valid_X": X, "valid_scores": s}


@pytest.fixture(scope="module")
def trained_dir(trained_run) -> Path:
    return trained_run["out"]


def test_train_end_to_end_writes_a_complete_model_directory(trained_dir, events):
    files = {p.name for p in trained_dir.iterdir()}
    assert {"model.joblib", "features.json", "metadata.json", "report.html"} <= files
    meta = json.loads((trained_dir / "metadata.json").read_text())
    for block in ("validation", "baseline"):
        assert set(meta[block]) >= {"roc_auc", "pr_auc", "precision", "recall", "alerts_per_day", "threshold"}
        assert 0.0 <= meta[block]["roc_auc"] <= 1.0
    # Seeded training on the same validation cutoffs: the model ranks them better than the baseline.
    assert meta["validation"]["roc_auc"] > meta["baseline"]["roc_auc"], (meta["validation"], meta["baseline"])
    assert meta["validation"]["pr_auc"] > meta["baseline"]["pr_auc"], (meta["validation"], meta["baseline"])
    assert meta["model_file"] == "model.joblib" and len(meta["sha256"]) == 64
    assert meta["label_spec"] == {"min_events": 2, "lead": 2, "window": 10}
    assert meta["window_secs"] == 21600 and meta["connection_kind"] == "session"
    assert meta["threshold"] == meta["validation"]["threshold"]
    assert meta["classifier"] in meta["candidates"] and len(meta["candidates"]) == 3
    assert meta["cutoffs"]["train"]["sampled_positive"] == meta["cutoffs"]["train"]["positive"] > 0
    assert meta["library_versions"]["scikit-learn"] == model.library_versions()["scikit-learn"]
    assert meta["data"]["rows"] == len(events)
    saved = dfs.load_features(trained_dir / "features.json")
    assert [f.get_name() for f in saved] == meta["feature_names"]
    assert not any("label" in dfs.feature_columns(f) for f in saved)
    assert not any(dfs.is_absolute_time(f) for f in saved)
    numeric = [f.get_name() for f in saved if not dfs.is_categorical(f)]
    assert set(meta["feature_importances"]) == set(meta["feature_names"])
    assert set(meta["feature_stats"]) == set(numeric) and all(v["std"] >= 0 for v in meta["feature_stats"].values())
    assert meta["feature_engine"] == "compiled"
    html = (trained_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "PR AUC" in html


def test_train_with_the_featuretools_oracle(data_csv, tmp_path):
    out = tmp_path / "m"
    rc = cli_main(["train", "--data", str(data_csv), "--out", str(out), "--no-progress", "--features", "oracle",
                   "--negatives-per-positive", "2", "--valid-negatives", "60", "--classifiers", "logistic_regression",
                   "--time-features", "keep"])  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["feature_engine"] == "oracle-batched" and meta["time_features"] == "keep"
    assert "MAX(log.secs)" in meta["feature_names"]
    assert meta["cutoffs"]["valid"]["sampled"] == meta["cutoffs"]["valid"]["sampled_positive"] + 60
    assert list(meta["candidates"]) == ["logistic_regression"]


def test_baseline_feature_per_connection_kind(events):
    for kind, want in (("session", "NUM_UNIQUE(name_host_pairs.src_host)"),
                       ("src_host", "NUM_UNIQUE(name_host_pairs.dest_host)"),
                       ("name_host_pair", "COUNT(log)")):  # fmt: skip
        names = [f.get_name() for f in dfs.feature_definitions(events.head(300), kind)[0]]
        assert dfs.baseline_feature(names) == want, kind
    with pytest.raises(ValueError, match="baseline"):
        dfs.baseline_feature(["STD(log.secs)"])


def test_importances_are_summed_per_saved_feature():
    from training.train_cmd import _per_feature

    names = ["COUNT(log)", "MODE(log.auth_type)", "MODE(name_host_pairs.MODE(log.auth_type))"]
    imp = [{"feature": "COUNT(log)", "mean": 0.5}, {"feature": "missingindicator_COUNT(log)", "mean": 0.25},
           {"feature": "MODE(log.auth_type)_NTLM", "mean": 0.125}, {"feature": "MODE(log.auth_type)_Kerberos", "mean": 0.125},
           {"feature": "MODE(name_host_pairs.MODE(log.auth_type))_NTLM", "mean": -0.0625}]  # fmt: skip
    assert _per_feature(imp, names) == {"COUNT(log)": 0.75, "MODE(log.auth_type)": 0.25,
                                        "MODE(name_host_pairs.MODE(log.auth_type))": -0.0625}  # fmt: skip


def test_artifact_round_trip_scores_the_same(trained_run, trained_dir, events):
    loaded = model.load_model(trained_dir)
    # The artifact scores the validation rows exactly as the fitted pipeline did during training.
    X, fitted = trained_run["valid_X"], trained_run["valid_scores"]
    assert len(fitted) > 30 and 0 < int((fitted >= loaded.threshold).sum()) < len(fitted)
    np.testing.assert_allclose(loaded.score(X), fitted, rtol=1e-12, atol=0)
    np.testing.assert_allclose(loaded.score(X.iloc[:, ::-1]), fitted, rtol=1e-12, atol=0)
    lt = label_times(events).head(30)
    fm = dfs.oracle_feature_matrix(events, lt, loaded.features, loaded.metadata["window_secs"], progress=False)
    again = model.load_model(trained_dir)
    s1, s2 = loaded.score(fm), again.score(fm.iloc[:, ::-1])  # column order does not matter
    assert s1.shape == (30,) and np.all((s1 >= 0) & (s1 <= 1))
    np.testing.assert_array_equal(s1, s2)
    # raw featuretools output (nullable integers, categories) scores as the normalised matrix does
    t = int(events.secs.quantile(0.5))
    conns = events[events.secs <= t].pipe(lambda e: e.src_name + " / " + e.dest_name).unique()[:4].tolist()
    es = build_entityset(events[events.secs <= t])
    window = loaded.metadata["window_secs"]
    raw = ft.calculate_feature_matrix(loaded.features, es, cutoff_time=pd.DataFrame(
        {"session_id": conns, "time": [to_time(t)] * 4}), training_window=f"{window} seconds",
        cutoff_time_in_index=False)  # fmt: skip
    cutoffs = pd.DataFrame({"connection_id": conns, "cutoff_secs": [t] * 4})
    ours = dfs.oracle_feature_matrix(events, cutoffs, loaded.features, window, progress=False)
    assert any(str(d) in ("Int64", "category") for d in raw.dtypes)
    np.testing.assert_allclose(loaded.score(raw), loaded.score(ours), rtol=1e-12)


def _raw_features(rng: np.random.Generator, n: int, values: list) -> pd.DataFrame:
    """A raw feature frame as the engines return it: floats with NaN and inf, a categorical
    column with missing values, an object column with None."""
    a = rng.normal(size=n)
    a[rng.random(n) < 0.1] = np.nan
    a[rng.random(n) < 0.02] = np.inf
    return pd.DataFrame({
        "a": a, "b": pd.array(rng.integers(0, 5, n), dtype="Int64"),
        "c1": pd.Categorical(rng.choice(values, n), categories=sorted({v for v in values if v is not None})),
        "c2": pd.Series(rng.choice(values, n), dtype=object),
    })  # fmt: skip


def test_the_fast_scorer_gives_the_pipelines_scores_exactly():
    rng = np.random.default_rng(3)
    train = _raw_features(rng, 600, ["x", "y", "z", None])
    train["c1"] = train["c1"].cat.add_categories("rare")
    train.loc[:2, ["c1", "c2"]] = "rare"  # below min_frequency: the encoder's "infrequent" column
    y = (train.a.fillna(0) + (train.c2 == "y") + rng.normal(size=600) > 1).to_numpy()
    pipe = model.build_pipeline("hist_gradient_boosting", ["a", "b"], ["c1", "c2"]).fit(train, y)
    scorer = model.PipelineScorer.of(pipe)
    assert scorer is not None
    for seed in (0, 1):  # unseen values, infrequent ones, missing ones; the second call hits the cache
        X = _raw_features(np.random.default_rng(seed), 500, ["x", "y", "z", "rare", "unseen", None])
        np.testing.assert_array_equal(scorer.scores(X), model.scores(pipe, X))
        # the numeric block converted by the caller (the detector converts once for both models)
        np.testing.assert_array_equal(scorer.scores(X, model.numeric_values(X, ["a", "b"])), model.scores(pipe, X))
    with pytest.raises(ValueError, match="shape"):
        scorer.scores(X, model.numeric_values(X, ["a"]))
    assert len(scorer._encoded) > 10  # combinations were encoded once each
    scorer.MAX_CACHED = 5  # a cache that starts again on every call scores the same
    np.testing.assert_array_equal(scorer.scores(X), model.scores(pipe, X))
    lr = model.build_pipeline("logistic_regression", ["a", "b"], ["c1", "c2"]).fit(train.fillna({"a": 0}).replace(np.inf, 0), y)
    assert model.PipelineScorer.of(lr) is None  # its numeric columns do not pass through: the pipeline scores


def test_load_refuses_a_changed_model_file(trained_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(trained_dir, copy)
    with open(copy / "model.joblib", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(model.ModelLoadError, match="checksum mismatch"):
        model.load_model(copy)
    shutil.copy(trained_dir / "model.joblib", copy / "model.joblib")
    (copy / "features.json").write_text((trained_dir / "features.json").read_text().replace("COUNT", "COUNT "))
    with pytest.raises(model.ModelLoadError, match="checksum mismatch"):
        model.load_model(copy)


def test_load_refuses_other_library_versions(trained_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(trained_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["library_versions"]["scikit-learn"] = "0.24.2"
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(model.ModelLoadError, match=r"scikit-learn: trained with 0\.24\.2, installed"):
        model.load_model(copy)


def test_load_says_what_to_do_without_a_model(tmp_path):
    with pytest.raises(model.ModelLoadError, match="cyberstream train"):
        model.load_model(tmp_path)


def test_train_reports_unusable_input(tmp_path, capsys):
    missing = tmp_path / "none.csv"
    assert cli_main(["train", "--data", str(missing), "--out", str(tmp_path / "m"), "--no-progress"]) == 1
    assert "cyberstream generate" in capsys.readouterr().err
    clean = tmp_path / "clean.csv"
    clean.write_text(HEADER + "\n" + "\n".join(r.replace(",A", ",N") for r in synthetic_rows(days=2)) + "\n")
    assert cli_main(["train", "--data", str(clean), "--out", str(tmp_path / "m"), "--no-progress"]) == 1
    assert "no cutoff has a positive label (0 malicious events" in capsys.readouterr().err
    late = tmp_path / "late.csv"  # malicious events only on the last day: nothing positive to train on
    rows = [r if int(r.split(",")[0]) >= 4 * DAY else r.replace(",A", ",N") for r in synthetic_rows()]
    late.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    assert cli_main(["train", "--data", str(late), "--out", str(tmp_path / "m"), "--no-progress"]) == 1
    assert "no positive cutoff is labelled by secs" in capsys.readouterr().err


def test_train_refuses_a_validation_period_without_a_positive(tmp_path, capsys):
    early = tmp_path / "early.csv"  # red team on days 1 and 2 only: the validation period (after 3.5 days) is clean
    rows = [r if int(r.split(",")[0]) < 3 * DAY else r.replace(",A", ",N") for r in synthetic_rows()]
    early.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "m"
    assert cli_main(["train", "--data", str(early), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"no positive cutoff in the validation period \(cutoffs after secs \d+; [1-9]\d* positive "
                     r"before it\): the model and its alert threshold cannot be chosen on negatives alone", err), err
    assert "move --train-until-secs earlier" in err
    assert not (out / "metadata.json").exists(), "no model is saved"


@pytest.mark.parametrize("extra, message", [
    (["--max-bad-rows", "-2"], "--max-bad-rows must be -1 (no limit) or a count of rows"),
    (["--negatives-per-positive", "0"], "--negatives-per-positive must be positive"),
    (["--valid-negatives", "-1"], "--valid-negatives must be 0 or more"),
    (["--max-cutoffs", "0"], "--max-cutoffs must be at least 1"),
    (["--window-secs", "0"], "--window-secs must be positive"),
    (["--train-until-secs", str(9 * DAY)], f"--train-until-secs {9 * DAY} is outside the data's time span ("),
    (["--train-until-secs", "0"], "--train-until-secs 0 is outside the data's time span ("),
    (["--classifiers", "svm"], "unknown classifier(s) ['svm']"),
    (["--lead", "-1"], "min_events (N) and lead (L) must be >= 0, got N=2 L=-1"),
])  # fmt: skip
def test_train_rejects_bad_arguments_with_exit_2(data_csv, tmp_path, capsys, extra, message):
    out = tmp_path / "m"
    assert cli_main(["train", "--data", str(data_csv), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cyberstream train: ") and message in err, err
    assert not out.exists()


def test_max_bad_rows_fails_training_beyond_the_limit_only(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    rows = synthetic_rows()
    rows[10:10] = ["12,broken", "13,U1@DOM1,U1@DOM1,,C2,NTLM,Network,LogOn,Success,N"]
    bad.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    assert cli_main(["train", "--data", str(bad), "--out", str(tmp_path / "m"), "--no-progress",
                     "--max-bad-rows", "1"]) == 1  # fmt: skip
    assert "2 rows rejected (more than --max-bad-rows 1)" in capsys.readouterr().err

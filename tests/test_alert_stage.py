"""The alert stage on its own: threshold, cooldown, the alert's form, the feature record. No broker."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pandas as pd

from cyberstream.schema import alert_schema
from detector.alert_stage import AlertStage
from detector.alerts import FeatureExplainer, alert_id
from detector.connection_state import ConnState
from detector.progress import Stats
from detector.scorer import Scored


def scored(rows: list[tuple[str, int, int]], batch: list[float], online: list[float | None]) -> Scored:
    features = pd.DataFrame({"COUNT(log)": [float(10 + i) for i in range(len(rows))],
                             "MEAN(log.secs)": [float(s) for _, s, _ in rows]})  # fmt: skip
    on = np.array([np.nan if o is None else o for o in online])
    weight = np.where(np.isnan(on), 0.0, 0.5)
    b = np.array(batch)
    return Scored(rows, features, b, on, weight, np.where(np.isnan(on), b, 0.5 * b + 0.5 * on))


def stage(tmp_path=None, **kw) -> tuple[AlertStage, list]:
    sent: list = []
    explainer = FeatureExplainer({"COUNT(log)": 2.0, "MEAN(log.secs)": 1.0}, {"COUNT(log)": {"mean": 4.0, "std": 2.0}})
    st = AlertStage(lambda topic, value, key: sent.append((topic, json.loads(value), key)), "alerts", kind="session",
                    threshold=0.5, cooldown_secs=100, model_version="m1", explainer=explainer, stats=Stats(),
                    **kw)  # fmt: skip
    return st, sent


def test_alerts_above_the_threshold_once_per_cooldown_per_connection():
    st, sent = stage()
    conns = {"a": ConnState(partition=0), "b": ConnState(partition=1)}
    st.publish(scored([("a", 10, 1), ("b", 20, 2), ("a", 50, 3), ("a", 60, 4)], [0.9, 0.4, 0.8, 0.2],
                      [None, 0.2, 0.9, 0.1]), conns)  # fmt: skip
    assert [(a["connection"], a["cutoff_secs"]) for _, a, _ in sent] == [("a", 10)]  # b is below; a at 50 cools down
    assert (st.stats.alerts, st.stats.suppressed, st.stats.cutoffs) == (1, 1, 4)
    st.publish(scored([("a", 110, 5), ("b", 111, 6)], [0.7, 0.9], [0.7, None]), conns)
    assert [(a["connection"], a["cutoff_secs"]) for _, a, _ in sent[1:]] == [("a", 110), ("b", 111)]
    assert conns["a"].last_alert_secs == 110 and conns["b"].last_alert_secs == 111


def test_an_alert_says_what_drove_it_in_the_published_schema():
    st, sent = stage()
    st.publish(scored([("U1@DOM1 / U1@DOM1", 42, 7)], [0.6], [0.8]), {})
    ((topic, alert, key),) = sent
    jsonschema.validate(alert, alert_schema())
    assert topic == "alerts" and key == b"U1@DOM1 / U1@DOM1"
    assert alert["alert_id"] == alert_id("U1@DOM1 / U1@DOM1", 42)
    assert (alert["batch_score"], alert["online_score"], alert["online_weight"], alert["score"]) == (0.6, 0.8, 0.5, 0.7)
    assert (alert["log_id"], alert["events_in_window"], alert["model_version"]) == (7, 10, "m1")
    # COUNT(log) = 10 is 3 std from its mean, x importance 2; MEAN(log.secs) has no statistics: importance 1
    assert [(f["name"], f["contribution"]) for f in alert["top_features"]] == [("COUNT(log)", 6.0),
                                                                              ("MEAN(log.secs)", 1.0)]  # fmt: skip


def test_the_feature_record_holds_every_alerted_cutoff_and_one_in_n_others(tmp_path):
    path = tmp_path / "features.jsonl"
    st, _ = stage(record_features=path, record_every=3)
    rows = [("c", s, s) for s in range(7)]
    st.publish(scored(rows, [0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1], [None] * 7), {})
    st.close()
    recorded = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["cutoff_secs"] for r in recorded] == [0, 2, 3, 6]  # 2 is alerted; 0, 3, 6 are one in three
    assert recorded[1] == {"connection": "c", "cutoff_secs": 2, "score": 0.9,
                           "features": {"COUNT(log)": 12.0, "MEAN(log.secs)": 2.0}}  # fmt: skip

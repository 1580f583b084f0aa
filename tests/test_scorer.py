"""The scorer on its own (with the label ledger feeding it): no broker.

The batch model here is a small model of the scorer's protocol (``predict``,
``online_feature_names``, ``version``) whose score is known by hand; the feature engine
and the online model are the real ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cyberstream.features import make_engine
from cyberstream.schema import LabelRecord
from detector.ledger import LabelLedger
from detector.progress import Stats
from detector.scorer import Scorer
from tests.test_features_engine import dfs_defs, events_frame, to_events
from training.dfs import is_categorical
from training.labels import LabelSpec

SPEC = LabelSpec(min_events=2, lead=1, window=2)
LEARN_EVERY = 10


class EventCountModel:
    """P(malicious) = n / (n + 10) for a connection with n events in its window."""

    version = "count-v1"

    def __init__(self, online_feature_names: list[str]):
        self.online_feature_names = online_feature_names

    def predict(self, features: pd.DataFrame, numeric: np.ndarray | None = None) -> np.ndarray:
        n = features["COUNT(log)"].to_numpy(dtype=float)
        return n / (n + 10)


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> dict:
    rows = []
    for s in range(0, 90, 2):  # U1 every 2 s, malicious from 30 s on; U2 every 3 s, clean
        rows.append((s, "U1@DOM1", "U1@DOM1", "C1", "C2", "NTLM", "Network", "LogOn", "Success"))
        if s % 3 == 0:
            rows.append((s, "U2@DOM1", "U2@DOM1", "C3", "C2", "Kerberos", "Network", "LogOn", "Success"))
    events = events_frame(rows)
    defs = dfs_defs(events, tmp_path_factory.mktemp("defs"))
    numeric = [f.get_name() for f in defs if not is_categorical(f)]
    labels = [(LabelRecord(f"{ev.src_name} / {ev.dest_name}", ev.log_id, ev.secs, ev.src_name == "U1@DOM1" and
                           ev.secs >= 30), ev.secs + 3) for ev in to_events(events)]  # fmt: skip
    return {"events": to_events(events), "defs": defs, "numeric": numeric, "labels": labels}


def run(setting: dict, flush_every_second: bool) -> tuple[list, list]:
    """Drive a ledger and a scorer as the detector loop does; return the scored batches and
    the cutoffs (with their learning steps)."""
    stats = Stats()
    ledger = LabelLedger("session", SPEC, 100, stats)
    scorer = Scorer(EventCountModel(setting["numeric"]), lambda: make_engine("compiled", setting["defs"], 3600),
                    online_weight=0.5, online_warmup_positives=4, stats=stats)  # fmt: skip
    labels, scored, cutoffs = list(setting["labels"]), [], []
    next_boundary = LEARN_EVERY
    for s in sorted({ev.secs for ev in setting["events"]}):
        if s >= next_boundary:
            boundary = s // LEARN_EVERY * LEARN_EVERY
            ledger.learn_until(boundary, [lab for lab in labels if lab[1] < boundary])
            labels = [lab for lab in labels if lab[1] >= boundary]
            next_boundary = boundary + LEARN_EVERY
        events = [ev for ev in setting["events"] if ev.secs == s]
        scorer.observe(events)
        closed = ledger.observe([(0, events)], s)
        cutoffs += closed
        scorer.queue(closed)
        if flush_every_second:
            scorer.compute_features(s, ledger.take_unlearnt())
            scored.append(scorer.score())
    scorer.compute_features(s, ledger.take_unlearnt())
    scored.append(scorer.score())
    assert scorer.waiting == 0
    return [b for b in scored if b is not None], cutoffs


def test_batching_changes_no_score(setting):
    """(To the last bit of the online score: a dot product's rounding follows the batch's layout.)"""
    one_by_one, _ = run(setting, flush_every_second=True)
    at_once, _ = run(setting, flush_every_second=False)
    assert len(at_once) == 1 and len(one_by_one) > 40
    assert [row for b in one_by_one for row in b.rows] == at_once[0].rows
    for name in ("batch", "online", "weight", "score"):
        np.testing.assert_allclose(np.concatenate([getattr(b, name) for b in one_by_one]),
                                   getattr(at_once[0], name), rtol=1e-14, atol=0, err_msg=name)  # fmt: skip


def test_each_cutoff_is_scored_by_the_batch_model_and_the_online_model_of_its_own_step(setting):
    (scored,), cutoffs = run(setting, flush_every_second=False)
    assert scored.rows == [c[:3] for c in cutoffs]
    seen: dict[str, int] = {}
    counts = []
    for ev in setting["events"]:  # the window (3600 s) holds every earlier event
        seen[f"{ev.src_name} / {ev.dest_name}"] = seen.get(f"{ev.src_name} / {ev.dest_name}", 0) + 1
        counts.append(dict(seen))
    by_secs = {ev.secs: c for ev, c in zip(setting["events"], counts, strict=True)}
    n = np.array([by_secs[secs][conn] for conn, secs, _ in scored.rows], dtype=float)
    np.testing.assert_array_equal(scored.features["COUNT(log)"].to_numpy(dtype=float), n)
    np.testing.assert_array_equal(scored.batch, n / (n + 10))
    snaps = [step.snapshot for *_, step in cutoffs]
    assert snaps[0] is None and snaps[-1] is not None and snaps[-1].n_positive > 4  # it learnt, past the warm-up
    for i, (snap, (*_, pend, _)) in enumerate(zip(snaps, cutoffs, strict=True)):
        if snap is None:  # nothing learnt yet at this cutoff's time: the batch score alone
            assert np.isnan(scored.online[i]) and scored.weight[i] == 0 and scored.score[i] == scored.batch[i]
            continue
        online = snap.predict(pend.x[None, :])[0]
        weight = 0.5 * min(1.0, snap.n_positive / 4)
        assert scored.online[i] == pytest.approx(online, rel=1e-14) and scored.weight[i] == weight
        assert scored.score[i] == pytest.approx((1 - weight) * scored.batch[i] + weight * scored.online[i], rel=1e-15)
    assert len({id(s) for s in snaps if s is not None}) >= 5  # several steps, each its own model

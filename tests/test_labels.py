"""The label definition (training/labels.py): hand-made sequences, streaming form, composeml agreement."""

from __future__ import annotations

import random

import composeml as cp
import pandas as pd
import pytest

from cyberstream.features.entityset import to_time
from training.labels import CutoffLabel, LabelSpec, is_cutoff, label_cutoffs, label_times, resolve_label

SPEC = LabelSpec()  # N=2, L=2, W=10


def test_defaults_are_the_demos():
    assert (SPEC.min_events, SPEC.lead, SPEC.window, SPEC.horizon) == (2, 2, 10, 12)


def test_fewer_than_n_events_has_no_cutoff():
    assert label_cutoffs([5, 9], [True, True], SPEC) == []
    # three events: the third has two earlier ones, but no event follows it -> no label
    assert label_cutoffs([5, 9, 12], [False, False, True], SPEC) == [CutoffLabel(2, 12, None)]
    assert label_cutoffs([5, 9, 12], [False, False, False], LabelSpec(min_events=3)) == []


def test_every_second_after_n_events_is_a_cutoff_with_the_right_window():
    secs = list(range(0, 300, 10))  # 30 events, one per second
    labels = [False] * 30
    labels[20] = True
    out = label_cutoffs(secs, labels, SPEC)
    assert [c.index for c in out] == list(range(2, 30))
    by_k = {c.index: c.label for c in out}
    # event 20 is in the window k+2 .. k+11 exactly for k = 9 .. 18
    assert [k for k, lab in by_k.items() if lab] == list(range(9, 19))
    assert by_k[8] is False and by_k[19] is False
    assert out[0].secs == 20


def test_window_running_off_the_end():
    secs = list(range(8))
    labels = [False] * 7 + [True]
    by_k = {c.index: c.label for c in label_cutoffs(secs, labels, SPEC)}
    assert by_k[2] is True  # window = events 4..7 (4 of 10 exist), event 7 malicious
    assert by_k[4] is True  # window = events 6, 7: two exist, enough
    assert by_k[5] is None  # window = event 7 only: fewer than two
    assert by_k[6] is None and by_k[7] is None
    clean = {c.index: c.label for c in label_cutoffs(secs, [False] * 8, SPEC)}
    assert clean[4] is False and clean[5] is None


def test_malicious_event_inside_the_lead_does_not_count():
    secs = list(range(20))
    labels = [False] * 20
    labels[7] = True
    by_k = {c.index: c.label for c in label_cutoffs(secs, labels, SPEC)}
    assert by_k[7] is False  # the cutoff event itself is in the lead
    assert by_k[6] is False  # k+1 is in the lead
    assert by_k[5] is True  # k+2 is the first label event
    assert by_k[8] is False
    # event 7 is in the window k+2 .. k+11 for k = 2 .. 5 (and k >= N = 2)
    assert [k for k, lab in by_k.items() if lab] == [2, 3, 4, 5]


def test_ties_in_secs_one_cutoff_at_the_last_event_of_each_second():
    secs = [0, 0, 0, 5, 5, 9, 9, 9, 9, 12, 14, 14, 20, 21, 22, 23, 24, 25, 26, 27]
    labels = [False] * len(secs)
    out = label_cutoffs(secs, labels, SPEC)
    assert [c.index for c in out] == [2, 4, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert [c.secs for c in out][:5] == [0, 5, 9, 12, 14]
    assert [is_cutoff(secs, k) for k in range(3)] == [False, False, True]
    # k=0 and k=1 of second 0 are never cutoffs, even with N=0
    assert [c.index for c in label_cutoffs(secs, labels, LabelSpec(min_events=0))][:2] == [2, 4]
    # second 5 ends at k=4: its label window is events 6..15
    labels[15] = True
    assert {c.index: c.label for c in label_cutoffs(secs, labels, SPEC)}[4] is True
    labels[15], labels[16] = False, True
    assert {c.index: c.label for c in label_cutoffs(secs, labels, SPEC)}[4] is False


def test_streaming_last_known_event_is_not_a_cutoff_until_its_second_is_over():
    assert not is_cutoff([1, 2, 3], 2, SPEC, complete=False)
    assert is_cutoff([1, 2, 3, 4], 2, SPEC, complete=False)
    assert not is_cutoff([1, 2, 3, 3], 2, SPEC, complete=False)


def test_streaming_resolution():
    k = 2
    # labels of events 0..5 known, none malicious: window 4..13 not full -> unresolved
    assert resolve_label([False] * 6, k, SPEC) is None
    assert resolve_label([False] * 6, k, SPEC, complete=True) is False
    # a malicious event at k+2 resolves True at once (two label-window events exist)
    assert resolve_label([False] * 4 + [True, False], k, SPEC) is True
    # ... but not while it is the only label-window event seen so far
    assert resolve_label([False] * 4 + [True], k, SPEC) is None
    # all 10 window labels known and clean -> False; one of them not arrived -> unresolved
    assert resolve_label([False] * 14, k, SPEC) is False
    assert resolve_label([False] * 13 + [None], k, SPEC) is None
    assert resolve_label([False] * 5 + [None, True] + [False] * 7, k, SPEC) is True
    # labels after the window never matter
    assert resolve_label([False] * 14 + [True], k, SPEC) is False


def test_streaming_never_disagrees_with_batch():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(0, 30)
        labels = [rng.random() < 0.1 for _ in range(n)]
        for k in range(n):
            final = resolve_label(labels, k, SPEC, complete=True)
            for m in range(n + 1):
                seen = [lab if rng.random() < 0.8 else None for lab in labels[:m]]
                got = resolve_label(seen, k, SPEC)
                assert got is None or got == final, (labels, k, m, seen)
            # once every label has arrived and the window is full (or complete), it is resolved
            if n >= k + SPEC.horizon:
                assert resolve_label(labels, k, SPEC) == final


def _events(rows):
    df = pd.DataFrame(rows, columns=["secs", "src_name", "dest_name", "label"])
    df["src_host"], df["dest_host"] = "C1", "C2"
    for col in ("auth_type", "login_type", "stage", "result"):
        df[col] = None
    df["log_id"] = range(len(df))
    return df


def test_label_times_on_a_frame():
    rows = [(s, "U1@DOM1", "U1@DOM1", s == 60) for s in range(0, 100, 10)]
    rows += [(s, "U2@DOM1", "C5$@DOM1", False) for s in (3, 3, 3, 4)]
    lt = label_times(_events(rows))
    u1 = lt[lt.connection_id == "U1@DOM1 / U1@DOM1"]
    assert u1.cutoff_secs.tolist() == [20, 30, 40, 50, 60, 70, 80, 90]
    assert u1.label.tolist()[:5] == [True, True, True, False, False]
    assert u1.label.isna().tolist() == [False] * 5 + [True] * 3  # k = 7, 8, 9: fewer than two events after the lead
    assert u1.log_id.tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert u1.label_end_secs.iloc[0] == 90  # window 4..13 runs off the end at event 9
    u2 = lt[lt.connection_id == "U2@DOM1 / C5$@DOM1"]
    assert u2.cutoff_secs.tolist() == [3, 4] and u2.cutoff_index.tolist() == [2, 3]


def test_label_times_cutoffs_do_not_depend_on_arrival_order_within_a_second():
    rng = random.Random(3)
    rows = sorted((rng.randint(0, 40), f"U{rng.randint(1, 3)}@DOM1", "X@DOM1", rng.random() < 0.2) for _ in range(200))
    df = _events(rows)
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled["log_id"] = range(len(shuffled))  # new arrival order, also inside each second
    a = label_times(df)[["connection_id", "cutoff_secs", "cutoff_index"]]
    b = label_times(shuffled)[["connection_id", "cutoff_secs", "cutoff_index"]]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@pytest.mark.parametrize("spec", [LabelSpec(), LabelSpec(min_events=3, lead=1, window=4), LabelSpec(0, 0, 2)])
def test_agrees_with_composeml_label_maker_on_tie_free_data(spec):
    rng = random.Random(11)
    rows = []
    for c in range(12):
        n = rng.randint(0, 40)
        secs = sorted(rng.sample(range(10_000), n))  # distinct secs: no ties
        p = rng.choice([0.0, 0.05, 0.3])
        rows += [(s, f"U{c}@DOM1", f"C{c}$@DOM1", rng.random() < p) for s in secs]
    df = _events(rows)
    ours = label_times(df, spec=spec)
    ours = ours[ours.label.notna()]

    def any_malicious_after_lead(ds):
        if len(ds) < spec.lead + 2:
            return None
        return bool(ds.iloc[spec.lead :]["label"].any())

    frame = df.assign(connection_id=df.src_name + " / " + df.dest_name, time=to_time(df.secs))
    frame = frame.sort_values(["connection_id", "secs", "log_id"])[["connection_id", "time", "label"]]
    lm = cp.LabelMaker(
        target_dataframe_index="connection_id",
        time_index="time",
        labeling_function=any_malicious_after_lead,
        window_size=spec.horizon,
    )
    theirs = lm.search(frame, num_examples_per_instance=-1, minimum_data=spec.min_events, gap=1, verbose=False)
    theirs = pd.DataFrame(theirs)
    got = sorted(zip(ours.connection_id, to_time(ours.cutoff_secs), ours.label.astype(bool), strict=True))
    want = sorted(zip(theirs.connection_id, theirs.time, theirs.any_malicious_after_lead.astype(bool), strict=True))
    assert len(want) > 50 and any(lab for *_, lab in want)
    assert got == want

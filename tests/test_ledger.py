"""The label ledger on its own: cutoffs, label windows, learning steps, idle connections."""

from __future__ import annotations

from cyberstream.schema import Event, LabelRecord
from detector.ledger import LabelLedger
from detector.progress import Stats
from training.labels import LabelSpec, label_cutoffs

SPEC = LabelSpec(min_events=2, lead=2, window=3)


def event(log_id: int, secs: int, user: str = "U1") -> Event:
    return Event(log_id, secs, f"{user}@DOM1", "C9$@DOM1", "C1", "C2", "NTLM", "Network", "LogOn", "Success")


def conn_of(user: str) -> str:
    return f"{user}@DOM1 / C9$@DOM1"


def ledger(spec: LabelSpec = SPEC, max_idle: int = 100) -> LabelLedger:
    return LabelLedger("session", spec, max_idle, Stats())


def test_one_cutoff_per_connection_per_second_at_its_last_event_after_n_earlier_events():
    led = ledger()
    assert led.observe([(0, [event(0, 1), event(1, 1, "U2")])], 1) == []
    cutoffs = led.observe([(0, [event(2, 2), event(3, 2)]), (1, [event(4, 2, "U2")])], 2)
    # U1 has events 0, 2, 3: its cutoff is position 2 (two earlier events), at log_id 3; U2 has two
    assert [(c, s, log_id, pend.k) for c, s, log_id, pend, _ in cutoffs] == [(conn_of("U1"), 2, 3, 2)]
    assert cutoffs[0][4] is led.step  # scored with the current learning step's model
    assert led.conns[conn_of("U2")].partition == 0  # where it was first seen
    assert list(led.conns[conn_of("U1")].pending) == [cutoffs[0][3]]


def test_learnt_labels_are_the_batch_definitions_and_use_only_labels_that_arrived_before_the_step():
    secs = [0, 1, 1, 2, 4, 5, 5, 6, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 19, 20]
    malicious = [i in (9, 10) for i in range(len(secs))]
    led = ledger()
    led.learn_log = []
    labels = [(LabelRecord(conn_of("U1"), i, s, malicious[i]), s + 4) for i, s in enumerate(secs)]  # 4 s later
    every = 5
    for s in sorted(set(secs)) + [100]:
        if s // every * every > 0:  # a learning step at each multiple of 5 s reached
            boundary = s // every * every
            led.learn_until(boundary, [lab for lab in labels if lab[1] < boundary])
            labels = [lab for lab in labels if lab[1] >= boundary]
        led.observe([(0, [event(i, t) for i, t in enumerate(secs) if t == s])], s)
    batch = {(c.secs, c.label) for c in label_cutoffs(secs, malicious, SPEC) if c.index + SPEC.horizon <= len(secs)}
    assert {(s, y) for _, _, s, y, _ in led.learn_log} == batch  # every cutoff with a full window, once
    # positions 6, 7, 8 see 9 or 10 in their windows (5 is no cutoff: 6 is in the same second)
    assert sum(y for _, _, _, y, _ in led.learn_log) == 3
    for boundary, _, _, _, arrivals in led.learn_log:
        assert arrivals and max(arrivals) < boundary
    steps = led.take_unlearnt()
    boundaries = sorted({b for b, *_ in led.learn_log})
    assert [step.labels for step in steps] == [[y for b, _, _, y, _ in led.learn_log if b == bb] for bb in boundaries]
    assert [p.secs for step in steps for p in step.pending] == [s for _, _, s, _, _ in led.learn_log]
    assert led.step is steps[-1] and led.take_unlearnt() == []
    assert led.stats.labels == len(secs) and led.stats.learned == len(batch)


def test_a_label_of_a_connection_without_state_is_counted_and_kept_nowhere():
    led = ledger()
    led.learn_until(10, [(LabelRecord(conn_of("U7"), 3, 2, True), 5)])
    assert led.stats.labels == 1 and led.conns == {} and led.unlearnt == []


def test_an_idle_connection_is_dropped_with_its_pending_cutoffs_and_comes_back_counting():
    led = ledger()
    for i in range(4):
        led.observe([(1, [event(i, 10 + i)])], 10 + i)
    led.observe([(1, [event(9, 50, "U2")])], 50)
    assert led.idle_before(40) == [conn_of("U1")]
    led.drop([conn_of("U1")])
    assert conn_of("U1") not in led.conns and len(led.idle) == 1
    cutoffs = led.observe([(1, [event(20, 90)])], 90)
    assert [(pend.k, s) for _, s, _, pend, _ in cutoffs] == [(4, 90)]  # position 4: it goes on counting
    assert list(led.conns[conn_of("U1")].pending) == [cutoffs[0][3]]  # the old pending cutoffs are gone


def test_a_rebalance_keeps_only_the_connections_of_the_partitions_owned():
    led = ledger()
    led.observe([(0, [event(0, 1)]), (1, [event(1, 1, "U2")]), (2, [event(2, 1, "U3")])], 1)
    led.drop([conn_of("U3")])
    led.keep_partitions([1, 2])
    assert list(led.conns) == [conn_of("U2")] and conn_of("U3") in led.idle

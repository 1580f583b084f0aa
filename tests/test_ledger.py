"""The detector's ledger against the label definition applied the plain way.

Random streams of events over a few connections, labels arriving late and out of order,
learning steps in between: every step, the cutoffs the ledger creates and the cutoffs it
resolves (with their labels) must be exactly what ``training.labels`` gives on per-connection
lists, with a connection's cutoffs learnt in order.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from detector.ledger import Ledger
from training.labels import LabelSpec, is_cutoff, resolve_label


class Reference:
    """Per-connection lists and ``training.labels``' functions."""

    def __init__(self, spec: LabelSpec):
        self.spec = spec
        self.secs: dict[str, list[int]] = {}
        self.log_ids: dict[str, list[int]] = {}
        self.labels: dict[int, bool] = {}
        self.pending: list[tuple[int, str, int]] = []  # (secs, conn, k)

    def add_second(self, events: list[tuple[str, int, int]]) -> list[tuple[int, str, int, int]]:
        for conn, secs, log_id in events:
            self.secs.setdefault(conn, []).append(secs)
            self.log_ids.setdefault(conn, []).append(log_id)
        out = []
        for conn in sorted({c for c, _, _ in events}):
            k = len(self.secs[conn]) - 1
            s = self.secs[conn][k]
            # the second is complete: k is a cutoff if enough events came before it
            if is_cutoff(self.secs[conn] + [s + 1], k, self.spec):
                top = max(lid for c, t, lid in events if c == conn and t == s)
                out.append((s, conn, k, top))
                self.pending.append((s, conn, k))
        return out

    def resolve(self) -> list[tuple[int, str, int, bool]]:
        done, blocked = [], set()
        for s, conn, k in self.pending:  # creation order = per connection, in order
            if conn in blocked:
                continue
            labels = [self.labels.get(lid) for lid in self.log_ids[conn]]
            y = resolve_label(labels, k, self.spec)
            if y is None:
                blocked.add(conn)
                continue
            done.append((s, conn, k, y))
        taken = {(s, c, k) for s, c, k, _ in done}
        self.pending = [p for p in self.pending if p not in taken]
        return sorted(done)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("spec", [LabelSpec(), LabelSpec(min_events=0, lead=0, window=2), LabelSpec(3, 1, 4)])
def test_ledger_matches_the_label_definition(seed: int, spec: LabelSpec):
    rng = random.Random(seed)
    ledger = Ledger(spec, n_inputs=1)
    ref = Reference(spec)
    conns = [f"u{i} / h{i % 3}" for i in range(7)]
    log_id = 0
    arrivals: list[tuple[int, int, bool]] = []  # (arrival, log_id, malicious)
    secs = 0
    for step in range(60):
        for _ in range(rng.randint(1, 6)):  # seconds in this step
            secs += rng.randint(1, 5)
            events = []
            for _ in range(rng.randint(1, 5)):
                events.append((rng.choice(conns), secs, log_id))
                arrivals.append((secs + rng.choice([0, 0, 3, 40]), log_id, rng.random() < 0.1))
                log_id += 1
            expected = ref.add_second(events)
            slots = ledger.slots([c for c, _, _ in events], [0] * len(events))
            cuts = ledger.add_events(slots, np.array([s for _, s, _ in events]), np.array([i for *_, i in events]))
            got = list(zip(cuts.secs.tolist(), cuts.conn, cuts.k.tolist(), cuts.log_id.tolist(), strict=True))
            assert got == expected
            ledger.set_inputs(cuts.seq, np.array(cuts.seq, dtype=float).reshape(-1, 1))
        boundary = secs - rng.randint(0, 5)
        ready = [a for a in arrivals if a[0] < boundary]
        arrivals = [a for a in arrivals if a[0] >= boundary]
        rng.shuffle(ready)
        for _, lid, mal in ready:
            ref.labels[lid] = mal
        slots = ledger.apply_labels([a[1] for a in ready], [a[2] for a in ready], [a[0] for a in ready])
        pos, y = ledger.resolve(slots)
        got = [(s, ledger.ids[c], k_unused, bool(v)) for s, c, k_unused, v in zip(
            ledger.p_secs[pos].tolist(), ledger.p_conn[pos].tolist(), [0] * len(pos), y.tolist(), strict=True)]
        expected = ref.resolve()
        assert [(s, c, v) for s, c, _, v in got] == [(s, c, v) for s, c, _, v in expected], f"step {step}"
        assert ledger.p_has_x[pos].all()
        ledger.take(pos)
        if step % 10 == 9:  # memory clean-up and a checkpoint round trip change nothing
            ledger.compact(orphan_horizon=0)
            ledger = pickle.loads(pickle.dumps(ledger))
    assert ledger.pending == len(ref.pending)


def test_labels_before_their_events_wait_for_them():
    spec = LabelSpec(min_events=0, lead=0, window=2)
    ledger = Ledger(spec, n_inputs=1)
    slots = ledger.slots(["a"], [0])
    ledger.add_events(slots, np.array([1]), np.array([10]))
    assert len(ledger.apply_labels([11, 12], [True, False], [5, 5])) == 0  # events 11, 12 not seen yet
    slots = ledger.slots(["a", "a"], [0, 0])
    ledger.add_events(slots, np.array([2, 3]), np.array([11, 12]))
    pos, y = ledger.resolve(ledger.apply_labels([10], [False], [6]))
    # windows (10, 11) and (11, 12) hold the malicious 11; (12) alone is too short to decide
    assert ledger.p_secs[pos].tolist() == [1, 2] and y.tolist() == [True, True]

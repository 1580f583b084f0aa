"""The detector's memory of idle connections: counts that outlive their windows.

(The integration test ``test_online_model_learns_only_from_labels_that_arrived`` checks the
effect end to end: the detector scores exactly the batch definition's cutoffs.)
"""

from __future__ import annotations

from detector.connection_state import ConnState
from detector.idle import IdleConnections


def _state(partition: int, n_seen: int) -> ConnState:
    st = ConnState(partition=partition, n_seen=n_seen, base=n_seen - 3, labelled=n_seen - 1, last_secs=500,
                   last_alert_secs=480)  # fmt: skip
    st.recent.extend([(10, 498), (11, 499), (12, 500)])
    return st


def test_a_connection_coming_back_goes_on_counting_from_where_it_stopped():
    idle = IdleConnections(capacity=10)
    assert idle.remember("a / b", _state(2, 7)) == 0
    assert "a / b" in idle and len(idle) == 1
    st = idle.revive("a / b", 2)
    # Its next event is position 7: a cutoff at once (k >= 2), as the batch labels count it.
    assert (st.partition, st.n_seen, st.base, st.labelled) == (2, 7, 7, 7)
    assert st.last_alert_secs == 480  # a cooldown longer than the silence still holds
    assert not st.recent and not st.pending and not st.labels
    assert "a / b" not in idle and len(idle) == 0


def test_an_unknown_connection_starts_at_zero():
    st = IdleConnections(capacity=10).revive("new / one", 1)
    assert (st.partition, st.n_seen, st.base, st.labelled, st.last_alert_secs) == (1, 0, 0, 0, None)


def test_beyond_capacity_the_longest_idle_are_forgotten_first():
    idle = IdleConnections(capacity=2)
    assert idle.remember("c1", _state(0, 5)) == 0
    assert idle.remember("c2", _state(0, 6)) == 0
    assert idle.remember("c3", _state(1, 9)) == 1
    assert list(idle.counts) == ["c2", "c3"]
    assert idle.revive("c1", 0).n_seen == 0  # forgotten: counts afresh
    assert idle.revive("c3", 1).n_seen == 9


def test_a_rebalance_keeps_only_the_partitions_this_member_owns():
    idle = IdleConnections(capacity=10)
    for i, p in enumerate([0, 1, 2, 1]):
        idle.remember(f"c{i}", _state(p, 3 + i))
    idle.keep_partitions([1, 2])
    assert idle.counts == {"c1": (1, 4, 480), "c2": (2, 5, 480), "c3": (1, 6, 480)}

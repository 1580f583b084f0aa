"""Idle connections: the counts of connections dropped from memory, so one coming back goes on counting."""

from __future__ import annotations

from detector.connection_state import ConnState


class IdleConnections:
    """Connections dropped as idle, by partition and event count, so that a connection coming
    back goes on counting: its next events are cutoffs as in the batch labels, which count
    a connection's events over all its history. Its last alert is kept too (a cooldown may
    outlast the silence). At most ``capacity`` (about 200 bytes each); beyond it the longest
    idle are forgotten, and would count afresh if they came back."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        #: partition, event count, last alert's secs; in the order they went idle
        self.counts: dict[str, tuple[int, int, int | None]] = {}

    def __len__(self) -> int:
        return len(self.counts)

    def __contains__(self, conn: str) -> bool:
        return conn in self.counts

    def remember(self, conn: str, st: ConnState) -> int:
        """Keep ``st``'s count; return how many connections were forgotten to make room."""
        self.counts[conn] = (st.partition, st.n_seen, st.last_alert_secs)
        if len(self.counts) <= self.capacity:
            return 0
        del self.counts[next(iter(self.counts))]
        return 1

    def revive(self, conn: str, partition: int) -> ConnState:
        """The state of a connection with no state: an idle one's positions go on from its
        count (its window is empty by now); an unknown one starts at 0."""
        seen = self.counts.pop(conn, None)
        if seen is None:
            return ConnState(partition=partition)
        _, n, last_alert = seen
        return ConnState(partition=partition, n_seen=n, base=n, labelled=n, last_alert_secs=last_alert)

    def keep_partitions(self, partitions: list[int]) -> None:
        """Forget the connections of partitions this member does not own (after a rebalance)."""
        self.counts = {c: v for c, v in self.counts.items() if v[0] in partitions}

"""`take`: how two librdkafka calls are joined when a rebalance runs in between.

The consumer here is a stand-in for the two calls `take` makes (a real broker cannot be
made to rebalance at exactly that instant; the group tests in
``test_detector_integration.py`` cover rebalances end to end)."""

from __future__ import annotations

from detector.rdkafka_io import take


class _Consumer:
    """``poll`` hands out one message; ``consume`` hands out the rest, optionally after
    serving a rebalance (as librdkafka serves callbacks inside its calls)."""

    def __init__(self, queued: list[str], rebalance_in_consume: bool, member: dict):
        self.queued, self.rebalance, self.member = list(queued), rebalance_in_consume, member
        self.calls = 0

    def consume(self, num_messages: int, timeout: float) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            return []  # nothing queued yet: take() waits in poll() for the first message
        if self.rebalance:
            self.member["generation"] += 1
            self.queued = ["new-0", "new-1"]  # the new assignment's positions
        out, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return out

    def poll(self, timeout: float) -> str | None:
        return self.queued.pop(0) if self.queued else None


def test_take_joins_the_calls_without_a_rebalance():
    member = {"generation": 0}
    consumer = _Consumer(["m0", "m1", "m2"], rebalance_in_consume=False, member=member)
    assert take(consumer, 10, 0.1, generation=lambda: member["generation"]) == ["m0", "m1", "m2"]


def test_take_leaves_out_the_message_taken_before_a_rebalance():
    member = {"generation": 0}
    consumer = _Consumer(["old-0", "old-1"], rebalance_in_consume=True, member=member)
    assert take(consumer, 10, 0.1, generation=lambda: member["generation"]) == ["new-0", "new-1"]
    # without the member's generation (a plain reader has no rebalances) both calls are joined
    consumer = _Consumer(["old-0", "old-1"], rebalance_in_consume=True, member={"generation": 0})
    assert take(consumer, 10, 0.1) == ["old-0", "new-0", "new-1"]

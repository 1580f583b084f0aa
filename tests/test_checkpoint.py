"""The checkpoint file on its own: what is saved, its version, its lock. No broker."""

from __future__ import annotations

import logging
import pickle

import pytest

from detector import checkpoint
from detector.connection_state import ConnState, Pending

TOPICS = ["auth-events", "auth-labels"]


def a_checkpoint() -> checkpoint.Checkpoint:
    st = ConnState(partition=3, n_seen=12, last_secs=500, base=9, labelled=11, last_alert_secs=420)
    st.recent.extend([(90, 498), (91, 499), (92, 500)])
    st.labels[90] = (True, 498, 510)
    st.pending.append(Pending(10, 499))
    return checkpoint.Checkpoint(group_id="g", topics=TOPICS, model_version="abc123", offsets={
        "events": {3: 1200}, "labels": {3: 1100}}, processed_secs=500, next_boundary=600, next_sweep=21_000,
        online=b"online-model", conns={"U1@DOM1 / U1@DOM1": st}, idle={"U2@DOM1 / U2@DOM1": (3, 40, None)})  # fmt: skip


def test_what_is_saved_is_what_is_loaded(tmp_path):
    path = tmp_path / "g.ckpt"
    checkpoint.save(path, a_checkpoint())
    assert checkpoint.load(path, TOPICS) == a_checkpoint()
    assert [p.name for p in tmp_path.iterdir()] == ["g.ckpt"]  # no temporary file left behind


def test_no_file_means_no_checkpoint(tmp_path):
    assert checkpoint.load(tmp_path / "none.ckpt", TOPICS) is None


def test_another_version_or_other_topics_are_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "g.ckpt"
    checkpoint.save(path, a_checkpoint())
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load(path, ["other-events", "auth-labels"]) is None
    assert "ignoring checkpoint" in caplog.text
    state = pickle.loads(path.read_bytes())
    assert state["version"] == checkpoint.VERSION
    state["version"] = checkpoint.VERSION + 1
    path.write_bytes(pickle.dumps(state))
    assert checkpoint.load(path, TOPICS) is None


def test_a_checkpoint_written_before_the_detector_was_split_into_stages_loads(tmp_path):
    """Its connection states were pickled as ``detector.stream.ConnState`` / ``Pending``, and
    it had no idle counts yet."""
    ckpt = a_checkpoint()
    state = {name: getattr(ckpt, name) for name in ("group_id", "topics", "model_version", "offsets",
                                                     "processed_secs", "next_boundary", "next_sweep", "online",
                                                     "conns")}  # fmt: skip
    old = pickle.dumps({"version": 1, **state}, protocol=0)  # protocol 0 names classes in plain lines
    old = old.replace(b"detector.connection_state\n", b"detector.stream\n")
    assert b"cdetector.stream\nConnState\n" in old and b"connection_state" not in old
    path = tmp_path / "old.ckpt"
    path.write_bytes(old)
    loaded = checkpoint.load(path, TOPICS)
    assert loaded == checkpoint.Checkpoint(**state, idle={})
    assert type(loaded.conns["U1@DOM1 / U1@DOM1"]) is ConnState


def test_a_second_writer_of_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "g.ckpt"
    held = checkpoint.lock_checkpoint(path)
    with pytest.raises(checkpoint.CheckpointInUse, match="in use by another detector"):
        checkpoint.lock_checkpoint(path)
    held.close()
    checkpoint.lock_checkpoint(path).close()

"""The checkpoint: what a detector saves at a commit point to resume exactly where it was.

One file per detector (``--checkpoint``), written atomically (a temporary file, fsync,
rename) and guarded by a lock file so that two detectors never write the same one. Its
content is a :class:`Checkpoint` with a format :data:`VERSION`; a file of another version,
or written for other topics, is ignored with a warning (the detector then resumes from the
consumer group's commits with a fresh state).

The encoding is pickle for now: save and load are this module's two functions, so the
format can change here alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: the format of the saved record; a file of another version is ignored
VERSION = 1

#: classes the checkpoint holds that moved since files were written: (module, name) -> module
_MOVED = {
    ("detector.stream", "ConnState"): "detector.connection_state",
    ("detector.stream", "Pending"): "detector.connection_state",
}


@dataclass
class Checkpoint:
    """Everything a detector needs to resume (besides the events of its windows, which it
    re-reads from the log)."""

    group_id: str
    topics: list[str]  # [events topic, labels topic]
    model_version: str  # the batch model the online model was learnt beside
    offsets: dict[str, dict[int, int]]  # "events"/"labels" -> partition -> next offset
    processed_secs: int  # the last second of event time fully processed
    next_boundary: int | None  # the next learning step
    next_sweep: int | None  # the next sweep of idle connections
    online: bytes  # OnlineModel.to_bytes()
    conns: dict[str, Any] = field(default_factory=dict)  # connection -> ConnState
    idle: dict[str, tuple] = field(default_factory=dict)  # IdleConnections.counts


class CheckpointInUse(RuntimeError):
    """Another running detector writes this checkpoint; the message says what to do."""


def lock_checkpoint(path: Path) -> IO:
    """Take the checkpoint's lock file (``<path>.lock``) for this process, or raise
    :class:`CheckpointInUse`: two detectors writing one checkpoint would overwrite each
    other's offsets and state. The lock goes when the returned file is closed or the
    process ends, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise CheckpointInUse(f"checkpoint {path} is in use by another detector (pid {holder}); give each "
                              "member of a consumer group its own --checkpoint") from None  # fmt: skip
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically: a crash leaves the previous checkpoint or this one."""
    state = {"version": VERSION, **{f.name: getattr(ckpt, f.name) for f in fields(ckpt)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, topics: list[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none, or it has another version or
    other topics (a warning says which)."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        state = _Unpickler(f).load()
    if state.get("version") != VERSION or state.get("topics") != topics:
        log.warning("ignoring checkpoint %s: written for other topics or by another version", path)
        return None
    state.setdefault("idle", {})  # absent from checkpoints written before it existed
    return Checkpoint(**{f.name: state[f.name] for f in fields(Checkpoint)})


class _Unpickler(pickle.Unpickler):
    """Finds the classes of files written before they moved (:data:`_MOVED`)."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_MOVED.get((module, name), module), name)

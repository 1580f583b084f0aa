"""Bounded waits on conditions the code under test signals (a file, an offset, a log line).

Never a fixed sleep: the condition is polled until it holds, a running process that exits
first fails the wait at once with its error output, and a wait that runs out of time fails
with what it was waiting for.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float,
             procs: tuple[subprocess.Popen, ...] = (), interval: float = 0.05) -> T:  # fmt: skip
    """The first truthy value of ``condition()``, polled every ``interval`` seconds.

    Fails the test when ``timeout`` seconds pass first (the message says ``what`` was
    awaited and the condition's last value) or when one of ``procs`` exits before it holds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"while waiting for {what}: {proc.args[3:5]} exited with {proc.returncode}:\n"
                            f"{err[-3000:]}")  # fmt: skip
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what} (last: {value!r})")
        time.sleep(interval)

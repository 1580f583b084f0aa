"""Start, stop or inspect a local Apache Kafka broker (KRaft, one node) without Docker.

`start` fetches Kafka's jars from Maven Central with the machine's Maven (cached after the
first run), formats a fresh log directory, starts one broker+controller on free ports of
127.0.0.1, waits until a client can list topics, and prints the bootstrap address
(127.0.0.1:PORT) on its last line. `status` prints it again; `stop` shuts it down.
Needs Java 17+ and Maven. State lives in --state-dir (default $CYBERSTREAM_HOME or ./var).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from cyberstream.config import state_dir

    parser.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    parser.add_argument("--state-dir", type=Path, default=state_dir(),
                        help="where jars, logs and the state file live (default: %(default)s)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--heap", default="512m", help="broker JVM heap (-Xmx), default %(default)s")


def run(args: argparse.Namespace) -> int:
    from cyberstream.broker import BrokerError, LocalBroker

    broker = LocalBroker(args.state_dir, heap=args.heap)
    try:
        if args.action == "start":
            t0 = time.monotonic()
            st = broker.start(timeout=args.timeout)
            print(f"Kafka broker ready in {time.monotonic() - t0:.1f} s (pid {st.pid}, logs {st.run_dir}/logs)",
                  file=sys.stderr)  # fmt: skip
            print(st.bootstrap)
            return 0
        if args.action == "status":
            st = broker.state()
            if st is None:
                print("no local broker is running", file=sys.stderr)
                return 1
            print(f"running since {time.ctime(st.started_at)} (pid {st.pid})", file=sys.stderr)
            print(st.bootstrap)
            return 0
        if broker.stop():
            print("local broker stopped", file=sys.stderr)
        else:
            print("no local broker was running", file=sys.stderr)
        return 0
    except BrokerError as exc:
        print(f"cyberstream broker {args.action}: {exc}", file=sys.stderr)
        return 1

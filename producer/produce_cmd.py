"""Replay a CyberFLTenDays CSV (real or generated) into Kafka in event-time order.

Events go to the event topic keyed by their connection id (all events of a connection land
on one partition, in order), as JSON with their log_id (the row number), with the Kafka
timestamp base-epoch + secs. Labels never travel with events: each event's label goes to
the label topic (same key, same partition count), published --label-delay seconds of event
time after the event, the way an analyst's verdicts arrive after the fact. Malformed rows go
to the dead-letter topic with the raw row and the reason, and the replay goes on.
Missing topics are created with --partitions partitions.

--speed 3600 replays an hour of traffic per second; --speed max (the default) as fast as the
broker takes it. --from-secs/--until-secs replay a slice [from, until). The file is read
in a stream (memory stays flat); a file that is not sorted by secs is sorted first with a
bounded-memory external sort. Exit status: 0 when every message was acknowledged, 1 if any
was lost, 2 for bad arguments or input, 3 when no broker is reachable, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"speed must be a positive number or 'max', got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from cyberstream import config
    from cyberstream.connections import CONNECTION_KINDS, DEFAULT_CONNECTION
    from cyberstream.kafka_io import add_bootstrap_argument

    parser.add_argument("--data", type=Path, default=config.data_path(),
                        help="CSV to replay (default: $CYBERSTREAM_DATA or %(default)s)")  # fmt: skip
    add_bootstrap_argument(parser)
    parser.add_argument(
        "--events-topic", default=config.events_topic(), help="event topic (default %(default)s)"
    )
    parser.add_argument(
        "--labels-topic", default=config.labels_topic(), help="label topic (default %(default)s)"
    )
    parser.add_argument(
        "--dlq-topic", default=config.dlq_topic(), help="dead-letter topic (default %(default)s)"
    )
    parser.add_argument("--partitions", type=int, default=config.partitions(),
                        help="partitions of topics created here (default %(default)s)")  # fmt: skip
    parser.add_argument("--speed", type=_speed, default=None, metavar="X|max",
                        help="X times real time (3600 = an hour of traffic per second) or max (default)")  # fmt: skip
    parser.add_argument("--label-delay", type=_non_negative, default=0, metavar="SECS",
                        help="publish each label this many seconds of event time after its event (default 0)")  # fmt: skip
    parser.add_argument(
        "--from-secs", type=_non_negative, default=None, help="first secs to replay (inclusive)"
    )
    parser.add_argument("--until-secs", type=_non_negative, default=None, help="secs to stop at (exclusive)")
    parser.add_argument("--base-epoch", type=int, default=config.base_epoch(),
                        help="epoch seconds that secs=0 maps to in record timestamps (default %(default)s)")  # fmt: skip
    parser.add_argument("--connection-kind", choices=sorted(CONNECTION_KINDS), default=DEFAULT_CONNECTION,
                        help="what the message key identifies (default %(default)s: src_name / dest_name)")  # fmt: skip
    parser.add_argument("--sort-chunk-rows", type=int, default=1_000_000,
                        help="rows per sorted run when an unsorted file must be sorted (default %(default)s)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cyberstream.kafka_io import BrokerUnavailable, resolve_bootstrap
    from producer.replay import BrokerGone, ReplaySettings, replay

    if not args.data.is_file():
        print(f"cyberstream produce: {args.data}: no such file; generate one with "
              f"`cyberstream generate --out {args.data}` or pass the real CSV with --data", file=sys.stderr)  # fmt: skip
        return 2
    if args.from_secs is not None and args.until_secs is not None and args.until_secs <= args.from_secs:
        print("cyberstream produce: --until-secs must be greater than --from-secs", file=sys.stderr)
        return 2
    if args.partitions < 1 or args.sort_chunk_rows < 1:
        print("cyberstream produce: --partitions and --sort-chunk-rows must be at least 1", file=sys.stderr)
        return 2
    try:
        bootstrap = resolve_bootstrap(args.bootstrap_servers)
    except BrokerUnavailable as exc:
        print(f"cyberstream produce: {exc}", file=sys.stderr)
        return 3
    settings = ReplaySettings(
        data=args.data,
        bootstrap=bootstrap,
        events_topic=args.events_topic,
        labels_topic=args.labels_topic,
        dlq_topic=args.dlq_topic,
        partitions=args.partitions,
        base_epoch=args.base_epoch,
        speed=args.speed,
        label_delay=args.label_delay,
        from_secs=args.from_secs,
        until_secs=args.until_secs,
        connection_kind=args.connection_kind,
        sort_chunk_rows=args.sort_chunk_rows,
        progress=not args.no_progress,
    )
    try:
        summary = replay(settings)
    except ValueError as exc:
        print(f"cyberstream produce: {exc}", file=sys.stderr)
        return 2
    except (BrokerUnavailable, BrokerGone) as exc:
        print(f"cyberstream produce: broker unreachable at {bootstrap}: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            print(f"cyberstream produce: Kafka error at {bootstrap}: {exc}", file=sys.stderr)
            return 3
        raise
    print(
        f"replayed {args.data} into {args.events_topic} / {args.labels_topic} (dead letters: {args.dlq_topic})"
    )
    for line in summary.lines():
        print("  " + line)
    if summary.interrupted:
        return 130
    if summary.failed:
        print(f"cyberstream produce: {summary.failed:,} message(s) were lost", file=sys.stderr)
        return 1
    return 0

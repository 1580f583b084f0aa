"""Score connections from the event stream and publish alerts.

Consumes the event and label topics in a consumer group. Per connection it keeps a
sliding window of recent events (the event-time window the model was trained with); at
every cutoff (per connection and distinct second, once that second is complete) it
computes the saved DFS features, scores them with the batch model and the online River
model, and publishes an alert when the combined score reaches the threshold:

    score = (1 - w) * batch_score + w * online_score,
    w = online_weight * min(1, positives learnt / online_warmup_positives)

so the online model gains weight as it learns from the delayed labels. Delivery is at
least once: offsets are committed only after the alerts are acknowledged, together with a
checkpoint of the online model; on restart windows are rebuilt from the log.
Stops on SIGTERM/SIGINT (finishing the batch in hand), --max-events, --idle-timeout or,
at the end of a replay, --end-file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyberstream import config
from cyberstream.kafka_io import add_bootstrap_argument


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=config.model_dir(),
                        help="model directory written by `cyberstream train` (default: %(default)s)")
    add_bootstrap_argument(parser)
    parser.add_argument("--group-id", default="cyberstream-detector", help="consumer group (default: %(default)s)")
    parser.add_argument("--events-topic", default=config.events_topic(), help="default: %(default)s")
    parser.add_argument("--labels-topic", default=config.labels_topic(), help="default: %(default)s")
    parser.add_argument("--alerts-topic", default=config.alerts_topic(), help="default: %(default)s")
    parser.add_argument("--dlq-topic", default=config.dlq_topic(), help="default: %(default)s")
    parser.add_argument("--partitions", type=int, default=config.partitions(),
                        help="partitions of topics created if missing (default: %(default)s)")
    parser.add_argument("--features", choices=["compiled", "oracle"], default="compiled",
                        help="compiled incremental engine, or featuretools itself (slow; for checking)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="alert threshold on the combined score (default: the model's, from metadata.json)")
    parser.add_argument("--cooldown-secs", type=int, default=config.DEFAULT_COOLDOWN_SECS,
                        help="event-time seconds after an alert during which the same connection "
                        "does not alert again (default: %(default)s)")
    parser.add_argument("--online-weight", type=float, default=0.5,
                        help="largest weight of the online model in the combined score (default: %(default)s)")
    parser.add_argument("--online-warmup", type=int, default=20,
                        help="positive labels the online model learns before reaching full weight")
    parser.add_argument("--learn-every-secs", type=int, default=300,
                        help="event-time step at which labels are applied and the online model learns")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint file, one per running detector: give each member of a group "
                             "its own (default: $CYBERSTREAM_HOME/detector-<group>.ckpt)")
    parser.add_argument("--checkpoint-every", type=float, default=10.0,
                        help="wall seconds between commits+checkpoints (default: %(default)s)")
    parser.add_argument("--max-events-per-connection", type=int, default=100_000,
                        help="cap on events kept in one connection's window (default: %(default)s)")
    parser.add_argument("--idle-drop-secs", type=int, default=None,
                        help="drop connections idle this long in event time (default and minimum: the window)")
    parser.add_argument("--max-idle-connections", type=int, default=1_000_000,
                        help="dropped connections whose event counts are kept, so that their next events "
                        "after a long silence are cutoffs as in training (about 200 bytes each; beyond it the "
                        "longest idle are forgotten; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4096, help="cutoffs per model call (default: %(default)s)")
    parser.add_argument("--max-events", type=int, default=None, help="stop after this many events")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="stop after this many wall seconds without new records, once caught up")
    parser.add_argument("--end-file", type=Path, default=None,
                        help="for a finite replay: once this file exists and every partition is read to its "
                        "end, process what is held and stop; until then a caught-up partition waits for its "
                        "own next record, however long the producer stalls (the replay's driver creates the "
                        "file after the producer exits; `cyberstream demo` does)")
    parser.add_argument("--allowed-lateness-secs", type=int, default=60,
                        help="while a producer writes, a caught-up partition waits until the others are this "
                        "many seconds of event time ahead (or the stream pauses) before its second is closed; "
                        "events arriving later go to the dead-letter topic as late (default: %(default)s); "
                        "raise it for fast replays: at --speed 2000 a minute of event time is 30 ms")
    parser.add_argument("--base-epoch", type=int, default=config.base_epoch(),
                        help="epoch seconds of secs=0 in record timestamps (default: %(default)s)")
    parser.add_argument("--log-every", type=float, default=10.0, help="wall seconds between progress lines")
    parser.add_argument("--record-features", type=Path, default=None,
                        help="append the features of every alerted cutoff and of one in --record-every "
                        "others to this JSON-lines file (audits, parity checks)")
    parser.add_argument("--record-every", type=int, default=50, help="see --record-features (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import logging

    from cyberstream.features import make_engine
    from cyberstream.kafka_io import BrokerUnavailable, ensure_topics, resolve_bootstrap
    from detector.checkpoint import CheckpointInUse, lock_checkpoint
    from detector.config import DetectorConfig
    from detector.models import load_batch_model
    from detector.stream import DeliveryFailed, StreamDetector
    from training.model import ModelLoadError

    log = logging.getLogger("cyberstream.detect")
    try:
        model = load_batch_model(args.model_dir)
    except ModelLoadError as exc:
        print(f"cyberstream detect: {exc}", file=sys.stderr)
        return 2
    try:
        bootstrap = resolve_bootstrap(args.bootstrap_servers)
        counts = ensure_topics(bootstrap, {args.events_topic: args.partitions, args.labels_topic: args.partitions,
                                           args.alerts_topic: args.partitions, args.dlq_topic: 1})
    except BrokerUnavailable as exc:
        print(f"cyberstream detect: {exc}", file=sys.stderr)
        return 2
    if counts[args.events_topic] != counts[args.labels_topic]:
        print(f"cyberstream detect: {args.events_topic} has {counts[args.events_topic]} partitions and "
              f"{args.labels_topic} {counts[args.labels_topic]}: they must be co-partitioned (same count)",
              file=sys.stderr)  # fmt: skip
        return 2
    checkpoint = args.checkpoint or config.state_dir() / f"detector-{args.group_id}.ckpt"
    try:
        lock = lock_checkpoint(checkpoint)  # held until the process exits
    except CheckpointInUse as exc:
        print(f"cyberstream detect: {exc}", file=sys.stderr)
        return 2
    cfg = DetectorConfig(
        bootstrap=bootstrap, group_id=args.group_id, events_topic=args.events_topic,
        labels_topic=args.labels_topic, alerts_topic=args.alerts_topic, dlq_topic=args.dlq_topic,
        checkpoint_path=checkpoint, kind=model.kind, window_secs=model.window_secs,
        label_spec=model.label_spec, threshold=args.threshold if args.threshold is not None else model.threshold,
        cooldown_secs=args.cooldown_secs, learn_every_secs=args.learn_every_secs,
        online_weight=args.online_weight, online_warmup_positives=args.online_warmup,
        batch_size=args.batch_size, checkpoint_every_secs=args.checkpoint_every, max_events=args.max_events,
        idle_timeout=args.idle_timeout, end_file=args.end_file, idle_drop_secs=args.idle_drop_secs,
        max_idle_connections=args.max_idle_connections, base_epoch=args.base_epoch,
        log_every_secs=args.log_every, allowed_lateness_secs=args.allowed_lateness_secs,
        record_features=args.record_features, record_every=args.record_every,
    )  # fmt: skip

    def engine_factory():
        return make_engine(args.features, model.features, model.window_secs, kind=model.kind,
                           base_epoch=args.base_epoch, max_events_per_connection=args.max_events_per_connection)

    # One thread for the models' native code: spinning OpenMP workers made a 4,000-row predict
    # 50x slower beside kafka-python's IO thread, and two threads gained only 3 % beside
    # librdkafka's. Scale out with more members of the group instead (one per core).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    detector = StreamDetector(cfg, model, engine_factory, model.explainer())
    fallback = getattr(detector.scorer.engine, "fallback_features", [])
    log.info("model %s: %d features (%s engine%s), window %d s, threshold %.4f, connection kind %s",
             model.version, len(model.feature_names), args.features,
             f"; {len(fallback)} fall back to featuretools: {', '.join(fallback)}" if fallback else "",
             model.window_secs, cfg.threshold, model.kind)  # fmt: skip
    detector.install_signal_handlers()
    tune_gc()
    from confluent_kafka import KafkaException

    try:
        stats = detector.run()
    except DeliveryFailed as exc:
        print(f"cyberstream detect: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:  # a fatal consumer error (e.g. fenced): the last commit holds
        print(f"cyberstream detect: fatal Kafka error ({exc}); everything up to the last checkpoint is "
              "committed: fix the cause and restart to resume from it", file=sys.stderr)  # fmt: skip
        return 1
    print(detector.summary(), file=sys.stderr)
    lock.close()
    return 0 if stats is not None else 1


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the detector allocates a few objects per record and keeps
    large live state, and with the default gen-0 threshold of 700 allocations the
    collector's traversals cost about a sixth of the run. What is loaded by now (models,
    feature definitions, libraries) is moved out of the collector's view for good."""
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 20, 100)

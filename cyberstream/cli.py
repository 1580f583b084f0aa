"""The ``cyberstream`` command: one entry point, one subcommand per job.

Each subcommand lives in the package that owns it, as a module exposing
``configure_parser(parser)`` (adds its flags) and ``run(args) -> int`` (the exit code).
Modules are imported only when their subcommand runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cyberstream import __version__
from cyberstream.config import ENV

#: subcommand -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("cyberstream.broker_cmd", "start, stop or inspect a local Apache Kafka broker (no Docker needed)"),
    "generate": ("producer.generate_cmd", "generate LANL-like authentication traffic with red-team campaigns"),
    "produce": ("producer.produce_cmd", "replay a CyberFLTenDays CSV into Kafka in event-time order"),
    "train": ("training.train_cmd", "build the EntitySet, run DFS, train and evaluate the batch model"),
    "detect": ("detector.detect_cmd", "score connections from the event stream and publish alerts"),
    "alerts": ("alerts.alerts_cmd", "follow the alert topic, or summarise a run against the ground truth"),
    "demo": ("cyberstream.demo_cmd", "replay ten days end to end and show the alerts (what `make demo` runs)"),
}


def _env_help() -> str:
    lines = ["environment variables (flags override them):"]
    lines += [f"  {name:<26} {what}" for name, what in ENV.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyberstream",
        description="Streaming real-time detection of malicious authentication connections.",
        epilog=_env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cyberstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        p = sub.add_parser(
            name, help=summary, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.set_defaults(_module=module_name)
        module = _load(module_name)
        if module is not None:
            if module.__doc__:
                p.description = module.__doc__.strip()
            module.configure_parser(p)
        else:
            p.description = f"{summary}\n\n(not implemented yet)"
    return parser


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # kafka-python logs every connection attempt at INFO.
    logging.getLogger("kafka").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 2
    module = _load(args._module)
    if module is None:
        print(f"cyberstream {args.command}: not implemented yet", file=sys.stderr)
        return 3
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Generate LANL-like authentication traffic with red-team campaigns (a CyberFLTenDays CSV).

Benign traffic: computer accounts talking Kerberos to busy servers, service logons on the
host itself, users with habitual workstations and servers, ANONYMOUS LOGON over NTLM,
administrators fanning out, about 1 % failures, a day/night and weekday/weekend rhythm and
heavy-tailed activity per account and host. Red-team campaigns: one attacker host per
campaign using many compromised user accounts, mostly NTLM network logons, fanning out to
many destinations in bursts over several days; only those logons are labelled A.

The defaults (10 days x 25,000 events, about 250,000 rows, 3 campaigns with about 330
malicious rows in all, like LANL's ten days) keep `make demo` short on a laptop. Ask for
more with --events-per-day (e.g. 1000000 for about ten million rows; the generator writes
well over a million rows per minute) and --campaigns / --campaign-intensity.
The same --seed and flags always give the same bytes.

--scenario hard makes detection harder than the default's burst campaigns: its first
campaigns are small (burst and slow styles) and run before the last two days, the last one
is larger and stealthy (Kerberos from a compromised shared workstation, mostly to the
accounts' own servers) and runs in the last two days; benign novelty bursts (a new
employee, a new server, an administrator's sweep, new workstations) make many first-time
edges labelled N. --truth writes the campaigns and bursts as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from cyberstream.config import data_path
    from producer.generator import SCENARIOS

    d = _defaults()
    parser.add_argument("--days", type=int, default=d.days, help="days of traffic (default %(default)s)")
    parser.add_argument("--events-per-day", type=int, default=d.events_per_day,
                        help="mean benign rows per day; weekends are quieter (default %(default)s)")  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="random seed; same seed, same bytes (default %(default)s)"
    )
    parser.add_argument("--campaigns", type=int, default=d.campaigns,
                        help="red-team campaigns, each from its own attacker host; with --scenario hard the "
                             "last is the larger stealthy one (default %(default)s)")  # fmt: skip
    parser.add_argument("--campaign-intensity", type=float, default=d.campaign_intensity,
                        help="mean malicious (A) rows per campaign (default %(default)s)")  # fmt: skip
    parser.add_argument("--scenario", choices=SCENARIOS, default=d.scenario,
                        help="default: burst campaigns on random days; hard: small burst and slow campaigns "
                             "before the last two days, a larger stealthy one in them, and benign novelty "
                             "bursts (default %(default)s)")  # fmt: skip
    parser.add_argument("--truth", type=Path, default=None,
                        help="also write the campaigns (style, users, hosts, times) and benign bursts "
                             "to this JSON file")  # fmt: skip
    parser.add_argument("--out", type=Path, default=data_path(),
                        help="output CSV (default: $CYBERSTREAM_DATA or %(default)s)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _defaults():
    from producer.generator import GeneratorConfig

    return GeneratorConfig()


def run(args: argparse.Namespace) -> int:
    from producer.generator import GeneratorConfig, generate

    try:
        cfg = GeneratorConfig(
            days=args.days,
            events_per_day=args.events_per_day,
            seed=args.seed,
            campaigns=args.campaigns,
            campaign_intensity=args.campaign_intensity,
            scenario=args.scenario,
        )
    except ValueError as exc:
        print(f"cyberstream generate: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    summary = generate(cfg, args.out, progress=not args.no_progress)
    elapsed = time.monotonic() - t0
    for line in summary.lines():
        print(line)
    if args.truth is not None:
        args.truth.parent.mkdir(parents=True, exist_ok=True)
        args.truth.write_text(json.dumps(summary.truth(), indent=1) + "\n", encoding="utf-8")
        print(f"  truth           {args.truth}")
    print(f"  took            {elapsed:.1f} s ({summary.rows / max(elapsed, 1e-9) * 60:,.0f} rows/min)")
    return 0

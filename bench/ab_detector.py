"""One detector's throughput, two checkouts side by side: the same broker, topics and data.

Each run is :func:`bench_detector.detect` (one ``cyberstream detect`` process, both models on
every cutoff), with ``PYTHONPATH`` choosing the code; the order is A B B A A B per round,
after a warm-up of each, so drift of a busy machine falls on both. The machine is noisy:
the ratio of one run is the honest figure, not either rate alone.

    .venv/bin/python bench/ab_detector.py --a /path/to/old-checkout --model-a old-models \\
        --b . --model-b models --data data/CyberFLTenDays.csv [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_detector as bd  # noqa: E402

from cyberstream.broker import running_broker  # noqa: E402
from cyberstream.kafka_io import ensure_topics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="checkout A (e.g. the previous main)")
    ap.add_argument("--model-a", type=Path, required=True, help="model directory trained by checkout A")
    ap.add_argument("--b", type=Path, required=True, help="checkout B (e.g. this change)")
    ap.add_argument("--model-b", type=Path, required=True, help="model directory trained by checkout B")
    ap.add_argument("--data", type=Path, required=True, help="CSV replayed once into the topics both read")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of A B B A A B (default %(default)s)")
    args = ap.parse_args()
    code = {"A": str(args.a.resolve()), "B": str(args.b.resolve())}
    models = {"A": args.model_a, "B": args.model_b}
    results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp, running_broker(None) as bootstrap:
        work = Path(tmp)
        t = bd.topics("ab")
        ensure_topics(bootstrap, {t["events"]: bd.PARTITIONS, t["labels"]: bd.PARTITIONS})
        bd.produce(bootstrap, args.data, t, "--speed", "max")
        for name in ("A", "B"):  # warm-up: numba caches, page cache
            os.environ["PYTHONPATH"] = code[name]
            bd.detect(bootstrap, models[name], {**t, "alerts": t["alerts"] + f"-warm-{name}"}, "compiled", work,
                      extra=("--max-events", "30000"))  # fmt: skip
        for r in range(args.rounds):
            for i, name in enumerate("ABBAAB"):
                os.environ["PYTHONPATH"] = code[name]
                (summary,), peak = bd.detect(bootstrap, models[name], {**t, "alerts": f"{t['alerts']}-{name}-{r}-{i}"},
                                             "compiled", work)  # fmt: skip
                events, busy = bd.group_rate([summary])
                cpu = float(re.search(r"CPU ([\d.]+) us", summary).group(1))
                results[name].append((busy, cpu))
                print(f"{name} events {events:,} busy {busy:,.0f} events/s  CPU {cpu:.1f} us/event  "
                      f"peak {peak:,.0f} MB", flush=True)
        os.environ.pop("PYTHONPATH")
    med = {k: (statistics.median(b for b, _ in v), statistics.median(c for _, c in v)) for k, v in results.items()}
    for k, (busy, cpu) in med.items():
        print(f"{k}: median busy {busy:,.0f} events/s, median CPU {cpu:.1f} us/event")
    print(f"B / A: busy rate {med['B'][0] / med['A'][0]:.3f}, CPU per event {med['B'][1] / med['A'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

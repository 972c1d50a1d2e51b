"""What checkpointing after every context costs: the same run with and without --checkpoint-dir.

    python benchmarks/checkpoint_overhead.py --strategy dgr --repeats 3 --data-dir ../shared/data

Runs alternate (plain, checkpointed, plain, ...) so that drifts in machine load hit both alike, and the
medians of the whole-run wall times are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cljax
from cljax.data import load_dataset
from cljax.engine import environment

RESULTS = Path(__file__).resolve().parent / "results"


def timed_run(config: cljax.RunConfig, dataset, checkpoint_dir: str | None) -> float:
    start = time.perf_counter()
    cljax.run(config, dataset=dataset, quiet=True, checkpoint_dir=checkpoint_dir)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="dgr")
    parser.add_argument("--scenario", default="class")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--out", default=None, help="JSON file (default: results/checkpoint_overhead_<strategy>.json)"
    )
    args = parser.parse_args()
    config = cljax.RunConfig(strategy=args.strategy, scenario=args.scenario, iters=args.iters)
    dataset = load_dataset("mnist", args.data_dir)
    plain, checkpointed = [], []
    for _ in range(args.repeats):
        plain.append(timed_run(config, dataset, None))
        with tempfile.TemporaryDirectory() as folder:
            checkpointed.append(timed_run(config, dataset, folder))
    a, b = statistics.median(plain), statistics.median(checkpointed)
    line = (
        f"{args.strategy} {args.scenario}: plain {a:.1f} s, checkpointed {b:.1f} s "
        f"(medians of {args.repeats}); overhead {100 * (b / a - 1):+.1f} %"
    )
    print(line)
    out = Path(args.out or RESULTS / f"checkpoint_overhead_{args.strategy}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": line,
        "config": config.resolved().to_dict(),
        "plain_wall_seconds": plain,
        "checkpointed_wall_seconds": checkpointed,
        "overhead_percent": 100 * (b / a - 1),
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()

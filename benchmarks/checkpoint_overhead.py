"""What checkpointing after every context costs: the same run with and without --checkpoint-dir.

    python benchmarks/checkpoint_overhead.py --strategy dgr --repeats 3 --data-dir ../shared/data

Runs alternate (plain, checkpointed, plain, ...) so that drifts in machine load hit both alike, and the
medians of the whole-run wall times are compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import cljax
from cljax.data import load_dataset


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
    args = parser.parse_args()
    config = cljax.RunConfig(strategy=args.strategy, scenario=args.scenario, iters=args.iters)
    dataset = load_dataset("mnist", args.data_dir)
    plain, checkpointed = [], []
    for _ in range(args.repeats):
        plain.append(timed_run(config, dataset, None))
        with tempfile.TemporaryDirectory() as folder:
            checkpointed.append(timed_run(config, dataset, folder))
    a, b = statistics.median(plain), statistics.median(checkpointed)
    print(
        f"{args.strategy} {args.scenario}: plain {a:.1f} s, checkpointed {b:.1f} s "
        f"(medians of {args.repeats}); overhead {100 * (b / a - 1):+.1f} %"
    )


if __name__ == "__main__":
    main()

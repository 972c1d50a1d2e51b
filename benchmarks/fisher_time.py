"""Time the exact diagonal Fisher of one split-MNIST context (about 12,000 samples) on this machine.

    python benchmarks/fisher_time.py --data-dir ../shared/data [--scenario class] [--labels all]

Prints the seconds of one compiled Fisher computation (compilation excluded, best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from cljax.config import RunConfig
from cljax.engine import prepare
from cljax.fisher import FISHER_LABELS, context_fisher
from cljax.strategies.base import init_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--scenario", default="class", choices=("task", "domain", "class"))
    parser.add_argument("--labels", default="all", choices=FISHER_LABELS)
    parser.add_argument("--context", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    exp = prepare(RunConfig(benchmark="split-mnist", scenario=args.scenario, data_dir=args.data_dir))
    stream = jax.tree.map(lambda a: a[0], exp.streams)
    params = init_classifier(exp.setup, jax.random.key(0)).params
    context = jnp.asarray(args.context, jnp.int32)

    def fisher(params, images, stream, context, key):
        return context_fisher(
            exp.info, exp.setup.model, params, images, stream, context, key, args.labels, None, args.chunk
        )

    t0 = time.perf_counter()
    compiled = jax.jit(fisher).lower(params, exp.images, stream, context, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, exp.images, stream, context, jax.random.key(1)))
        times.append(time.perf_counter() - t)
    n = int(stream.train_n[args.context])
    print(
        f"Fisher ({args.labels} labels, {args.scenario}-IL) of split-MNIST context {args.context + 1} "
        f"({n} samples): {min(times):.2f} s (best of {args.repeat}; compile {compile_s:.1f} s)"
    )


if __name__ == "__main__":
    main()

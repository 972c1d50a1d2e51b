"""Split CIFAR-100's step with the frozen conv layers' features computed once, against running the
frozen layers inside every step (cljax.features).

Both train NMI-2022's fc layers (2000-2000-100, batch 256, Adam) with fine-tuning on real CIFAR-100, Class-IL,
one seed; they compute the same numbers (tests/test_features.py). The conv layers here are randomly
initialised and stored as the seed's set in a temporary cache: only the time matters, and it does not
depend on the weights. Each way runs in turn, ``--repeats`` times alternating; the table gives the median
training time per iteration (compilation and evaluation excluded) and the ratio. The fc layers' own cost
is the floor: features-once should sit on it.

    python benchmarks/features_once.py --data-dir DIR [--iters 20] [--repeats 3] \
        [--out benchmarks/results/features_once.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import cljax
from cljax.data import load_dataset
from cljax.engine import environment
from cljax.models.conv_layers import ConvLayers, FrozenConvMLP
from cljax.presets import get_benchmark
from cljax.pretrain import PretrainRecord, save_pretrained, set_name, tree_sha256


def random_set(folder: Path, seed: int) -> dict:
    """A randomly initialised conv set, saved where split-cifar100 looks for the seed's pre-trained one."""
    variables = ConvLayers().init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
    conv = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    record = PretrainRecord(
        name=set_name(seed, 100), dataset="random (timing only)", seed=seed, epochs=100, batch_size=256,
        lr=1e-4, augment=False, test_accuracy=0.0, train_accuracy=0.0, sha256=tree_sha256(conv),
        train_seconds=0.0,
    )  # fmt: skip
    save_pretrained(folder / set_name(seed, 100), conv, record)
    return conv


def fc_floor_ms(steps: int, batch: int = 256) -> float:
    """The fc layers alone: ``steps`` Adam steps of MLP 1024-2000-2000-100 on fixed random features in one
    compiled scan, in ms per step (what the features-once step should cost)."""
    import time

    import optax

    from cljax.engine import adam_for
    from cljax.models import MLP

    model, opt = MLP(100, (2000, 2000)), adam_for(1e-4)
    x = jax.random.normal(jax.random.key(0), (batch, 2, 2, 256))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 100)
    params = model.init(jax.random.key(2), x[:1])

    def step(carry, _):
        p, o = carry
        loss, g = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
        )(p)
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), loss

    run = jax.jit(lambda p, o: jax.lax.scan(step, (p, o), None, length=steps))
    jax.block_until_ready(run(params, opt.init(params)))
    start = time.perf_counter()
    jax.block_until_ready(run(params, opt.init(params)))
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--iters", type=int, default=20, help="iterations per context (10 contexts)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the table (markdown) and a .json beside it")
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp())
    os.environ["CLJAX_CACHE_DIR"] = str(cache)
    conv = random_set(cache / "pretrained", 0)
    data = load_dataset("cifar100", args.data_dir)
    once = get_benchmark("split-cifar100")
    inside = dataclasses.replace(
        once,
        name="split-cifar100-frozen-inside",
        pretrained=None,
        model=lambda n_out: FrozenConvMLP(n_out, (2000, 2000), conv=conv),
    )
    common = dict(strategy="none", scenario="class", dataset=data, iters=args.iters, quiet=True)
    ways = {"features once": once, "frozen conv in every step": inside}
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.repeats):
        for way, bench in ways.items():
            result = cljax.run(benchmark=bench, **common)
            times[way].append(result.train_seconds / (10 * args.iters) * 1e3)
        times.setdefault("fc layers alone (no engine)", []).append(fc_floor_ms(10 * args.iters))
    median = {w: statistics.median(t) for w, t in times.items()}
    ratio = median["frozen conv in every step"] / median["features once"]
    floor = median["features once"] / median["fc layers alone (no engine)"]
    env = environment()
    lines = [
        "## Split CIFAR-100: conv features computed once vs frozen conv layers in every step",
        "",
        "| way | ms per iteration (median) | repeats (ms) |",
        "| --- | --- | --- |",
        *(f"| {w} | {median[w]:.1f} | {', '.join(f'{t:.1f}' for t in times[w])} |" for w in times),
        "",
        f"Frozen conv layers in every step cost {ratio:.2f}x the features-once step; the features-once step "
        f"costs {floor:.2f}x the fc layers' own step. fc 2000-2000-100, "
        f"batch 256, fine-tuning, Class-IL, 1 seed, {args.iters} iterations x 10 contexts per run; "
        f"{env['cpu_model']} ({env['cpu_cores']} cores, {env['backend']}), jax {env['jax']}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        payload = {"ms_per_iteration": times, "median": median, "ratio": ratio, "over_fc_floor": floor,
                   "environment": env, "iters": args.iters, "repeats": args.repeats}  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

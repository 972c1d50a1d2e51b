"""Your own arrays, protocol and Flax network: 4 contexts x 3 classes, a small CNN, `none` against `er`.

The arrays here are 12 classes of CIFAR-100 (apple, aquarium fish, baby, bear, beaver, bed, bee, beetle,
bicycle, bottle, bowl, boy), turned into float images in [0, 1] and labels 0..11, as a user would bring
them; replace ``load_arrays`` with your own. cljax checks them against the protocol before anything
compiles (label range and count, shapes, dtypes, train/test consistency), trains, and hands the trained
model back: ``result.predict`` classifies raw images with the training preprocessing.

    python examples/own_data.py --data-dir ../shared/data
    python examples/own_data.py --iters 200 --seeds 1          # a quick look
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import numpy as np

import cljax

CLASSES = 12


class SmallCNN(nn.Module):
    """conv 16 -> pool -> conv 32 -> pool -> dense 128 -> n_out logits."""

    n_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for channels in (16, 32):
            x = nn.max_pool(nn.relu(nn.Conv(channels, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.n_out)(x)


def load_arrays(data_dir: str | None) -> cljax.Dataset:
    """Float images in [0, 1] (N, 32, 32, 3) and int labels 0..11, from the first 12 CIFAR-100 classes."""
    cifar = cljax.load_dataset("cifar100", data_dir)
    keep_train, keep_test = cifar.train_y < CLASSES, cifar.test_y < CLASSES
    return cljax.Dataset(
        name="my-images",
        train_x=cifar.train_x[keep_train].astype(np.float32) / 255.0,
        train_y=cifar.train_y[keep_train],
        test_x=cifar.test_x[keep_test].astype(np.float32) / 255.0,
        test_y=cifar.test_y[keep_test],
        num_classes=CLASSES,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=500, help="iterations per context")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--scenario", default="class")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    data = load_arrays(args.data_dir)
    protocol = cljax.Benchmark(
        name="my-protocol", n_contexts=4, classes_per_context=3, iters=args.iters, lr=1e-3, batch_size=64
    )
    results = {
        strategy: cljax.run(
            benchmark=protocol,
            dataset=data,
            scenario=args.scenario,
            strategy=strategy,
            model=SmallCNN,
            seeds=args.seeds,
            quiet=True,
        )  # fmt: skip
        for strategy in ("none", "er")
    }
    for result in results.values():
        print(result.summary(), end="\n\n")
    er = results["er"]
    predicted = er.predict(data.test_x[:10])
    print(
        f"er, seed {er.seeds[0]}: predicted {predicted.tolist()} for test labels {data.test_y[:10].tolist()}"
    )
    overall = 100 * np.mean(er.predict(data.test_x) == data.test_y)
    print(f"accuracy of er's final model on all {len(data.test_y)} test images: {overall:.2f} %")


if __name__ == "__main__":
    main()

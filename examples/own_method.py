"""A method of your own, written only with cljax's public names, beside `none` and `ewc`.

L2 pull: after each context, remember the parameters; while training the next ones, add
strength/2 * ||theta - theta_previous||^2 to the loss (EWC with the Fisher replaced by 1). Registered with
``cljax.register_strategy``, it runs through everything cljax's own strategies do: ``cljax.run``, the
command line (``cljax run --import examples/own_method.py --strategy l2``), checkpoints, tables, and the
result records its name and options. Its strength is declared a hyperparameter, so
``cljax sweep --import examples/own_method.py --strategy l2 --grid strength=0.1,1,10`` is one program.

    python examples/own_method.py --data-dir ../shared/data                  # split MNIST, Task-IL, 2 seeds
    python examples/own_method.py --scenario domain --seeds 5 --strength 10
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

import cljax


class L2State(cljax.ClassifierState):
    """The classifier, the parameters at the end of the last context and how many contexts are done."""

    anchor: Any
    contexts_done: jax.Array


def squared_distance(params: Any, anchor: Any) -> jax.Array:
    """||params - anchor||^2 over every leaf."""
    return sum(
        jnp.sum(jnp.square(p - a))
        for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor), strict=True)
    )


@cljax.register_strategy(
    "l2",
    defaults={"strength": 1.0},
    hyperparameters=("strength",),  # an input of the compiled programs: sweeps over it share one program
    summary="L2 pull towards the previous params",
)
def l2(setup: cljax.Setup, options: Mapping[str, Any]) -> cljax.Strategy:
    """Fine-tuning plus strength/2 ||theta - theta_prev||^2 from the second context on."""
    strength = options["strength"]  # a traced scalar inside the programs: no Python `if` on it

    def init(key, images, stream):
        classifier = cljax.init_classifier(setup, key)
        return L2State(classifier.params, classifier.opt_state, classifier.params, jnp.zeros((), jnp.int32))

    def step(state: L2State, images, stream, context, key):
        batch = cljax.sample_context(setup.info, images, stream, context, key, setup.batch_size)
        pull_on = (state.contexts_done > 0).astype(jnp.float32)

        def loss_fn(params):
            current = cljax.classification_loss(setup, params, batch)
            return current + 0.5 * strength * pull_on * squared_distance(params, state.anchor), current

        (loss, current), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return cljax.apply_gradients(setup, state, grads), {"loss": loss, "loss_current": current}

    def end_context(state: L2State, images, stream, context, key):
        return state.replace(anchor=state.params, contexts_done=state.contexts_done + 1)

    def predict(state: L2State, x):
        return setup.model.apply(state.params, x)

    return cljax.Strategy(init=init, step=step, end_context=end_context, predict=predict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default="split-mnist")
    parser.add_argument("--scenario", default="task")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=None, help="per context (default: the protocol's)")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    common = dict(benchmark=args.benchmark, scenario=args.scenario, seeds=args.seeds, iters=args.iters)
    results = [
        cljax.run(strategy="none", data_dir=args.data_dir, quiet=True, **common),
        cljax.run(strategy="ewc", data_dir=args.data_dir, quiet=True, **common),
        cljax.run(
            strategy="l2", options={"strength": args.strength}, data_dir=args.data_dir, quiet=True, **common
        ),
    ]
    print(f"{args.benchmark}, {args.scenario} scenario, {args.seeds} seed(s), final average accuracy (%):")
    for result in results:
        options = ", ".join(f"{k}={v}" for k, v in result.config["options"].items() if v is not None)
        print(f"  {result.strategy:<5} {result.mean:6.2f} +- {result.sem:.2f}   ({options or 'no options'}; "
              f"{result.train_seconds:.1f} s training)")  # fmt: skip


if __name__ == "__main__":
    main()

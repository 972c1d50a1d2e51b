"""Time a scanned context of CNN training steps with and without ``fast_convolutions()``.

cljax trains a context as one ``lax.scan`` over its steps. Inside that loop XLA's CPU backend runs JAX's
convolution gradients on a slow path (see ``cljax/models/fast_conv.py``). For each model this script
compiles the same context program (``--steps`` Adam steps on batches drawn from a fixed set of random
32x32x3 images, cross-entropy over 10 classes) traced without and with
:func:`cljax.models.fast_conv.fast_convolutions`, and, as the reference for what a convolution costs
outside a loop, one jitted step that Python calls ``--steps`` times. All three run alternately in one
process (the order flips every repeat); it prints the medians in ms per step and the ratios and writes
them with the environment to ``results/conv_in_scan.json``.

    python -m benchmarks.conv_in_scan --steps 4 --repeats 3

Models: ``cnn``, a user's linen CNN conv32-pool-conv64-pool-dense256 (flax ``nn.Conv``, 3x3 SAME,
batch 128); ``convnet``, cljax's :class:`~cljax.models.classifiers.ConvNet` (split CIFAR's network: 5
conv layers, 3x3, the last four stride 2, fc 2000-2000; batch 256 as in the split-CIFAR presets).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from benchmarks.context_program import RESULTS, alternate, write_results
from cljax.compilation import compile_lowered
from cljax.models.classifiers import ConvNet
from cljax.models.fast_conv import fast_convolutions
from cljax.optim import adam

N_CLASSES = 10
POOL = 1024  # images the batches are drawn from


class UserCNN(nn.Module):
    """A small CNN as a user would write it with flax: conv32-pool-conv64-pool-dense256-out."""

    n_out: int = N_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.n_out)(x)


MODELS: dict[str, tuple[Callable[[], nn.Module], int, float]] = {
    # name: (model, batch size, learning rate)
    "cnn": (UserCNN, 128, 1e-3),
    "convnet": (lambda: ConvNet(N_CLASSES), 256, 1e-4),
}


def training_step(model: nn.Module, batch: int, lr: float) -> Callable[..., Any]:
    """``(carry, key) -> (carry, loss)``: one Adam step on a random batch, carry = (params, Adam state,
    images, labels). A fresh function each call, so that nothing traced earlier is reused."""
    optimizer = adam(lr)

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, key):
        params, opt_state, images, labels = carry
        rows = jax.random.randint(key, (batch,), 0, images.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, images[rows], labels[rows])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, images, labels), loss

    return step


def context_program(model: nn.Module, batch: int, lr: float, steps: int) -> Callable[..., Any]:
    """``(params, opt_state, images, labels, key) -> (params, opt_state, losses)``: ``steps`` training
    steps as one ``lax.scan``, as cljax trains a context."""
    step = training_step(model, batch, lr)

    def program(params, opt_state, images, labels, key):
        carry = (params, opt_state, images, labels)
        (params, opt_state, _, _), losses = lax.scan(step, carry, jax.random.split(key, steps))
        return params, opt_state, losses

    return program


def single_step(model: nn.Module, batch: int, lr: float) -> Callable[..., Any]:
    """One training step with the same arguments and results as :func:`context_program`, no loop."""
    step = training_step(model, batch, lr)

    def program(params, opt_state, images, labels, key):
        (params, opt_state, _, _), loss = step((params, opt_state, images, labels), key)
        return params, opt_state, loss

    return program


def python_loop(compiled_step: Any, steps: int) -> Callable[..., Any]:
    """The one-step program called ``steps`` times from Python: convolutions outside any loop."""

    def run(params, opt_state, images, labels, key):
        losses = []
        for k in jax.random.split(key, steps):
            params, opt_state, loss = compiled_step(params, opt_state, images, labels, k)
            losses.append(loss)
        return params, opt_state, losses

    return run


def inputs(model: nn.Module, lr: float) -> tuple[Any, ...]:
    """Initial params, Adam state, the image pool, its labels and a key."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((POOL, 32, 32, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, N_CLASSES, POOL, dtype=np.int32))
    params = jax.jit(model.init)(jax.random.key(0), images[:1])
    return params, adam(lr).init(params), images, labels, jax.random.key(1)


def compile_program(program: Callable[..., Any], args: tuple[Any, ...], fast: bool) -> tuple[Any, float]:
    """The program compiled with cljax's CPU options (traced inside ``fast_convolutions()`` if ``fast``),
    and the seconds that took."""
    start = time.perf_counter()
    if fast:
        with fast_convolutions():
            lowered = jax.jit(program).lower(*args)
    else:
        lowered = jax.jit(program).lower(*args)
    return compile_lowered(lowered), time.perf_counter() - start


def conv_labels(compiled: Any) -> list[str]:
    """The layouts (``dim_labels``) of the compiled program's convolutions; canonical: ``b01f_01io->b01f``."""
    return sorted(set(re.findall(r"dim_labels=([^,\\s]+)", compiled.as_text())))


def measure(name: str, steps: int, repeats: int) -> dict[str, Any]:
    """Alternating timings of the scanned context with JAX's and with the fast gradients, and of the
    step outside a loop; milliseconds per step, medians and ratios."""
    make, batch, lr = MODELS[name]
    model = make()
    args = inputs(model, lr)
    compiled, compile_s = {}, {}
    for variant, fast in (("jax_scan", False), ("fast_scan", True)):
        compiled[variant], compile_s[variant] = compile_program(
            context_program(model, batch, lr, steps), args, fast
        )
    one_step, compile_s["jax_step"] = compile_program(single_step(model, batch, lr), args, False)
    programs = {
        "jax_scan": (compiled["jax_scan"], args),
        "fast_scan": (compiled["fast_scan"], args),
        "jax_step": (python_loop(one_step, steps), args),
    }
    # one untimed call of each (the scans' also give their losses, which should agree)
    losses = {v: np.asarray(jax.block_until_ready(compiled[v](*args))[2]) for v in ("jax_scan", "fast_scan")}
    jax.block_until_ready(programs["jax_step"][0](*args))
    load_before = os.getloadavg()
    times = alternate(programs, steps, repeats)
    ms = {variant: float(np.median(t)) for variant, t in times.items()}
    return {
        "batch": batch,
        "steps_per_call": steps,
        "ms_per_step": ms,
        "all_ms_per_step": times,
        "speedup_fast_over_jax_scan": ms["jax_scan"] / ms["fast_scan"],
        "fast_scan_over_jax_step": ms["fast_scan"] / ms["jax_step"],
        "compile_seconds": compile_s,
        "conv_dim_labels": {
            "jax_scan": conv_labels(compiled["jax_scan"]),
            "fast_scan": conv_labels(compiled["fast_scan"]),
            "jax_step": conv_labels(one_step),
        },
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "max_abs_loss_difference": float(np.max(np.abs(losses["jax_scan"] - losses["fast_scan"]))),
    }


def describe(result: dict[str, Any]) -> str:
    ms = result["ms_per_step"]
    return (
        f"scan with JAX's gradients {ms['jax_scan']:.1f} ms/step, with fast_convolutions "
        f"{ms['fast_scan']:.1f} ms/step ({result['speedup_fast_over_jax_scan']:.1f}x faster); "
        f"one jitted step outside a loop {ms['jax_step']:.1f} ms/step "
        f"(fast scan / that {result['fast_scan_over_jax_step']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "conv_in_scan.json"))
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        results[name] = measure(name, args.steps, args.repeats)
        print(f"{name}: {describe(results[name])} (medians of {args.repeats})", flush=True)
    write_results(args, results)


if __name__ == "__main__":
    main()

"""Several seeds side by side on the CPU's cores: the seed axis of one program sharded over host devices.

On one XLA CPU device, a run of several seeds is one program whose matrix products are batched over the
seeds and split between the cores; for the small products of the split-MNIST protocol that split costs
more than it gains. XLA can instead expose the CPU as several devices: with the seed axis sharded over
them, each device trains its own seeds with no communication at all, and the cores are busy with
independent work. On this project's two cores a 5-seed split-MNIST `none` run over 5 devices trained in
96-98 s against 104-107 s on one (benchmarks/README.md). The number of devices is fixed when JAX starts,
so the command line asks for them before anything runs (``JAX_NUM_CPU_DEVICES`` overrides it); the engine
then uses whatever devices there are. A library user can call :func:`use_host_devices` first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seeds"


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def devices_for_seeds(n_seeds: int, cores: int) -> int:
    """How many host devices ``n_seeds`` seeds are best spread over: the smallest divisor of ``n_seeds``
    that is at least ``cores`` (each device gets the same number of seeds), or ``n_seeds`` if it is smaller.

    More devices than cores only add threads: 10 seeds ran 7 % slower on 10 devices than on 2.
    """
    if n_seeds <= cores:
        return n_seeds
    return next(d for d in range(cores, n_seeds + 1) if n_seeds % d == 0)


def use_host_devices(n_seeds: int) -> int:
    """Before JAX starts: expose as many CPU devices as :func:`devices_for_seeds` asks for.

    Returns the number of CPU devices in use. A count the user set (``JAX_NUM_CPU_DEVICES``) is kept, and
    once JAX has run anything the count can no longer change.
    """
    wanted = devices_for_seeds(n_seeds, cpu_cores())
    if wanted > 1 and "JAX_NUM_CPU_DEVICES" not in os.environ:
        try:
            jax.config.update("jax_num_cpu_devices", wanted)
        except RuntimeError:  # JAX has started: keep its devices
            pass
    return len(jax.devices("cpu"))


def seed_sharding(n_seeds: int) -> NamedSharding | None:
    """The seed axis laid over the CPU devices, as many as divide ``n_seeds`` evenly; None for one device.

    Only the CPU backend's devices are used: on an accelerator the seeds stay on one device.
    """
    if jax.default_backend() != "cpu":
        return None
    devices = jax.devices()
    count = max(d for d in range(1, min(n_seeds, len(devices)) + 1) if n_seeds % d == 0)
    if count == 1:
        return None
    return NamedSharding(Mesh(np.array(devices[:count]), (SEED_AXIS,)), PartitionSpec(SEED_AXIS))


def placer(by_seed: NamedSharding | None) -> Callable[..., Any]:
    """``place(tree, whole=False)``: the tree on the seed devices, split along its seed axis or whole on
    each; with no sharding (one device) the tree as it is."""
    if by_seed is None:
        return lambda tree, whole=False: tree
    whole_arrays = NamedSharding(by_seed.mesh, PartitionSpec())
    return lambda tree, whole=False: jax.device_put(tree, whole_arrays if whole else by_seed)

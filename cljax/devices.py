"""Several runs side by side on the CPU's cores: the run axis of one program sharded over host devices.

XLA can expose the CPU as several devices: with the run (seed) axis sharded over them, each device trains
its own runs with no communication at all, one after another and unbatched
(:func:`cljax.compilation.over_runs`), and the cores are busy with independent work. Batching the runs'
products on one device instead costs more than it gains for the small products of the split-MNIST
protocol, and more devices than cores only add threads. The number of devices is fixed when JAX starts,
so the command line asks for them before anything runs (``JAX_NUM_CPU_DEVICES`` overrides it); the engine
then uses whatever devices there are. A library user can call :func:`use_host_devices` first.

Several processes joined as one multi-controller run (:mod:`cljax.distributed`) shard the run axis over the
devices of all of them, on any backend, the same number from each process. When the runs do not divide
evenly over those devices, the run axis is padded with copies of the last run, whose results are dropped:
a device that would otherwise wait trains a copy, and no run waits for a device that holds two. Arrays on
such a sharding are not fully addressable in any one process: :func:`gatherer` brings every run's rows to
every process (an all-gather) and :func:`gather_runs` makes the trained states whole in each process. A
single run is not split: every process trains it, on its own devices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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


def use_host_devices(n_runs: int) -> int:
    """Before JAX starts: expose as many CPU devices as :func:`devices_for_seeds` asks for ``n_runs``.

    Each device computes its runs one after another, unbatched (:func:`cljax.compilation.over_runs`), so
    a run of a sweep or of several seeds computes what it computes beside any other runs.
    Returns the number of CPU devices in use. A count the user set (``JAX_NUM_CPU_DEVICES``) is kept, and
    once JAX has run anything the count can no longer change.
    """
    from cljax.distributed import process_count_hint

    # joined processes share the runs: each process's devices are for its own share
    wanted = devices_for_seeds(math.ceil(n_runs / process_count_hint()), cpu_cores())
    if wanted > 1 and "JAX_NUM_CPU_DEVICES" not in os.environ:
        try:
            jax.config.update("jax_num_cpu_devices", wanted)
        except RuntimeError:  # JAX has started: keep its devices
            pass
    return len(jax.devices("cpu"))


def seed_sharding(n_seeds: int) -> NamedSharding | None:
    """The seed axis laid over the CPU devices, as many as divide ``n_seeds`` evenly; None for one device.

    Only the CPU backend's devices are used: on an accelerator the seeds stay on one device. Several joined
    processes use the devices of all of them instead, on any backend (:func:`global_devices_for_runs`).
    """
    if jax.process_count() > 1:
        return _global_sharding(n_seeds)
    if jax.default_backend() != "cpu":
        return None
    devices = jax.devices()
    count = max(d for d in range(1, min(n_seeds, len(devices)) + 1) if n_seeds % d == 0)
    if count == 1:
        return None
    return NamedSharding(Mesh(np.array(devices[:count]), (SEED_AXIS,)), PartitionSpec(SEED_AXIS))


def global_devices_for_runs(n_runs: int, processes: int, local_devices: int) -> tuple[int, int]:
    """(devices per process, padded run count) for ``n_runs`` runs over joined processes.

    Each process contributes as many devices as bring the most runs per device down to its least,
    ``ceil(n_runs / (processes * local_devices))``, and no more; the run axis is padded up to a multiple of
    the devices used. 8 runs over 2 x 2 devices: 2 each, none padded; 6: 2 each, 8 runs (2 copies);
    5 over 2 x 1: 6 runs; 2 over 2 x 4: 1 each.
    """
    per_device = math.ceil(n_runs / (processes * min(local_devices, math.ceil(n_runs / processes))))
    per_process = math.ceil(n_runs / (processes * per_device))
    return per_process, math.ceil(n_runs / (processes * per_process)) * processes * per_process


def _global_sharding(n_runs: int) -> NamedSharding | None:
    """The run axis over every joined process's devices (:func:`global_devices_for_runs`); None for a
    single run, which every process then trains on its own."""
    if n_runs == 1:
        return None
    processes = jax.process_count()
    by_process: dict[int, list[Any]] = {}
    for device in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(device.process_index, []).append(device)
    per_process, _ = global_devices_for_runs(n_runs, processes, min(map(len, by_process.values())))
    devices = [d for p in sorted(by_process) for d in by_process[p][:per_process]]
    return NamedSharding(Mesh(np.array(devices), (SEED_AXIS,)), PartitionSpec(SEED_AXIS))


def placer(by_seed: NamedSharding | None) -> Callable[..., Any]:
    """``place(tree, whole=False)``: the tree on the seed devices, split along its seed axis or whole on
    each; with no sharding (one device) the tree as it is.

    Over joined processes every process passes the same host values; each keeps only its own devices'
    rows, and a seed axis that does not divide over the devices is padded with copies of its last row.
    """
    if by_seed is None:
        return lambda tree, whole=False: tree
    whole_arrays = NamedSharding(by_seed.mesh, PartitionSpec())
    if by_seed.is_fully_addressable:
        return lambda tree, whole=False: jax.device_put(tree, whole_arrays if whole else by_seed)
    size = by_seed.mesh.size

    def put(leaf: Any, whole: bool) -> jax.Array:
        sharding = whole_arrays if whole else by_seed
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)  # already global: reshard (a no-op when it fits)
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf), whole)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        if not whole and host.shape[0] % size:
            pad = size - host.shape[0] % size
            host = np.concatenate([host, np.repeat(host[-1:], pad, axis=0)])
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return lambda tree, whole=False: jax.tree.map(lambda leaf: put(leaf, whole), tree)


def _whole(tree: Any) -> Any:
    """Every leaf whole in this process (on its first addressable device); an all-gather of the leaves
    that are sharded over other processes' devices, which every process must call alike."""
    leaves, treedef = jax.tree.flatten(tree)
    spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if spread:
        targets = [NamedSharding(_mesh_of(leaves[i].sharding), PartitionSpec()) for i in spread]
        gathered = jax.jit(lambda xs: xs, out_shardings=targets)([leaves[i] for i in spread])
        for i, x in zip(spread, gathered, strict=True):
            leaves[i] = x.addressable_data(0)
    return jax.tree.unflatten(treedef, leaves)


def _mesh_of(sharding: Any) -> Mesh:
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    return Mesh(np.array(sorted(sharding.device_set, key=lambda d: (d.process_index, d.id))), ("all",))


def gatherer(n_runs: int) -> Callable[[Any], Any]:
    """``fetch(tree)``: the tree's arrays as NumPy arrays of their first ``n_runs`` rows (the run axis
    without padding), in every process; within one process the same as ``np.asarray``."""

    def fetch(tree: Any) -> Any:
        return jax.tree.map(lambda x: np.asarray(x)[:n_runs], _whole(tree))

    return fetch


def gather_runs(tree: Any, n_runs: int) -> Any:
    """The trained states of joined processes whole in each process (the first ``n_runs`` runs, on its
    own device), so that predicting and saving work in every process; a tree that one process holds
    entirely, as it is."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return tree
    return jax.tree.map(lambda x: x[:n_runs], _whole(tree))

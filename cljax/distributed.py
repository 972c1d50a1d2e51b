"""Several processes as one run: multi-controller JAX (``jax.distributed``), the way JAX spans GPU clusters
and TPU pods.

Every process runs the same command; :func:`join` connects them (before JAX runs anything) through a
coordinator, process 0's ``HOST:PORT``, or through JAX's detection of the cluster it runs in (SLURM, Open
MPI, Cloud TPU pods). ``jax.devices()`` then lists the devices of all processes, and the run axis of a run
or sweep is sharded over them (:func:`cljax.devices.seed_sharding`): each process trains its share of the
configurations x seeds, the per-context losses and accuracies are gathered so that every process holds all
the numbers, and only process 0 writes result files. On the CPU the processes exchange data through
JAX's gloo collectives, so two processes on one machine make a complete test::

    cljax sweep --strategy ewc --grid lambda=1e3,1e5 --coordinator 127.0.0.1:1234 --num-processes 2 \\
        --process-id 0 &
    cljax sweep --strategy ewc --grid lambda=1e3,1e5 --coordinator 127.0.0.1:1234 --num-processes 2 \\
        --process-id 1
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import jax

from cljax.config import ConfigError

# Hosts that name this machine: a coordinator there listens on the loopback interface only.
LOOPBACK_HOSTS = ("localhost",)


def check_join(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> tuple[str, int] | None:
    """The coordinator's (host, port) of valid flags, None when nothing asks to join; a ConfigError in
    one line for flags that cannot work (checked before anything connects)."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if auto:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise ConfigError(
                f"distributed: --distributed-auto detects the cluster itself; drop {', '.join(named)}"
            )
        return None
    if all(value is None for value in given.values()):
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise ConfigError(
            "distributed: --coordinator, --num-processes and --process-id go together; "
            f"missing {', '.join(missing)} (or use --distributed-auto on SLURM, Open MPI or a TPU pod)"
        )
    if num_processes < 1:
        raise ConfigError(f"distributed: --num-processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"distributed: --process-id must lie in 0..{num_processes - 1} for {num_processes} processes, "
            f"got {process_id}"
        )
    return parse_address(coordinator)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); a ConfigError when a part is missing."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port:
        raise ConfigError(
            f"distributed: --coordinator must be HOST:PORT (process 0's address, e.g. 10.0.0.1:1234), "
            f"got {address!r}"
        )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"distributed: --coordinator's port must be a number in 1..65535, got {port!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine's loopback address (127.0.0.1, ::1, localhost)."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def join(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    timeout: int = 300,
) -> bool:
    """Connect this process to the others of a multi-controller run; call before JAX runs anything.

    ``coordinator`` (``HOST:PORT`` of process 0, which starts the coordination service there),
    ``num_processes`` and ``process_id`` go together; ``auto`` instead lets JAX detect them in a SLURM job,
    under Open MPI's ``mpirun`` or on a Cloud TPU pod. With neither, nothing happens and False is returned.
    On the CPU the processes' collectives use gloo. A coordinator on a loopback address listens on that
    address only (JAX's default is every interface). ``timeout``: seconds to wait for all processes.
    """
    address = check_join(coordinator, num_processes, process_id, auto)
    if address is None and not auto:
        return False
    if jax.distributed.is_initialized():
        raise ConfigError("distributed: this process has already joined a multi-controller run")
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise ConfigError(
            "distributed: JAX has already started in this process; join the processes before anything runs"
        )
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):  # a user's choice (mpi) is kept
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {"initialization_timeout": timeout}
    if address is not None:
        host, port = address
        kwargs.update(coordinator_address=f"{host}:{port}", num_processes=num_processes)
        kwargs["process_id"] = process_id
        if is_loopback(host):
            kwargs["coordinator_bind_address"] = f"{host}:{port}"
            _gloo_on(host.strip("[]"))
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as err:  # auto-detection found no cluster, or JAX rejected a value
        detail = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
        hint = (
            "; --distributed-auto works in a SLURM job, under Open MPI's mpirun or on a Cloud TPU pod, "
            "elsewhere give --coordinator, --num-processes and --process-id"
            if auto
            else ""
        )
        raise ConfigError(f"distributed: could not join the processes: {detail}{hint}") from None
    except jax.errors.JaxRuntimeError as err:  # the coordinator or a peer did not answer in time
        detail = str(err).splitlines()[0]
        raise ConfigError(
            f"distributed: could not join the processes within {timeout} s ({detail}); check that all "
            f"{num_processes or 'the'} processes started with the same --coordinator"
        ) from None
    return True


def _gloo_on(host: str) -> None:
    """CPU collectives between the processes through ``host`` (JAX's gloo otherwise uses the address this
    machine's name resolves to): processes joined on a loopback coordinator then talk over the loopback
    only. Left to JAX's default where its internals differ from jax 0.10's."""
    if jax.config.jax_cpu_collectives_implementation != "gloo":
        return
    try:
        from jax._src import distributed, xla_bridge
        from jax._src.lib import _jax

        make_collectives, make_client = _jax.make_gloo_tcp_collectives, xla_bridge.make_cpu_client
        register = xla_bridge.register_backend_factory
    except (ImportError, AttributeError):
        return

    def cpu_client() -> Any:
        client = distributed.global_state.client
        return make_client(collectives=make_collectives(distributed_client=client, hostname=host))

    register("cpu", cpu_client, priority=0, fail_quietly=False)


def process_count_hint() -> int:
    """The number of processes joined, without starting JAX's backends (1 before :func:`join`)."""
    from jax._src import distributed

    count = distributed.global_state.num_processes
    return count if jax.distributed.is_initialized() and count else 1


def add_flags(parser: Any) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id`` and ``--distributed-auto`` on a command."""
    group = parser.add_argument_group(
        "several processes (multi-controller JAX)",
        "run one program over the devices of several processes; every process runs the same command",
    )
    group.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="process 0's address and a free port"
    )
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="processes in all")
    group.add_argument("--process-id", type=int, default=None, metavar="I", help="this process, 0..N-1")
    group.add_argument(
        "--distributed-auto",
        action="store_true",
        help="join the processes of a SLURM job, an Open MPI mpirun or a Cloud TPU pod, as JAX detects them",
    )


def join_from(args: Any) -> bool:
    """:func:`join` with a command's flags (:func:`add_flags`)."""
    return join(args.coordinator, args.num_processes, args.process_id, auto=args.distributed_auto)


def is_writer() -> bool:
    """Whether this process writes the result files: process 0 (the only one when nothing was joined)."""
    return jax.process_index() == 0

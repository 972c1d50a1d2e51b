"""cljax: continual learning in JAX, one compiled program per context."""

from cljax.compilation import enable_compilation_cache
from cljax.config import ConfigError, RunConfig
from cljax.devices import use_host_devices
from cljax.engine import Experiment, NonFiniteLossError, execute, prepare, run
from cljax.results import RunResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Experiment",
    "NonFiniteLossError",
    "RunConfig",
    "RunResult",
    "enable_compilation_cache",
    "execute",
    "prepare",
    "run",
    "use_host_devices",
]

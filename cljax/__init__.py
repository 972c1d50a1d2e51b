"""cljax: continual learning in JAX, one compiled program per context.

Run a registered strategy on a benchmark (``cljax.run``), or bring your own: a method
(:func:`register_strategy`, written with the helpers below), a network (a Flax module, or
:func:`register_model`), a protocol (:class:`Benchmark`) and data (:class:`Dataset`). The trained model
comes back with the result (``result.predict``, ``result.save_model``, :func:`load_model`).
"""

from cljax.batching import Batch, gather, sample_context, sample_contexts_upto, to_float
from cljax.compilation import enable_compilation_cache
from cljax.config import ConfigError, RunConfig
from cljax.data import Dataset, load_dataset
from cljax.data.checks import DatasetError, check_dataset
from cljax.devices import use_host_devices
from cljax.engine import Experiment, NonFiniteLossError, execute, prepare, run
from cljax.losses import cross_entropy, distillation, kl_distillation, mask_logits, replay_weight
from cljax.models import register_model
from cljax.presets import BENCHMARKS, SCENARIOS, Benchmark, register_benchmark
from cljax.results import RunResult
from cljax.scenarios import Images, ScenarioInfo, Stream
from cljax.strategies import REGISTRY, register_strategy
from cljax.strategies.base import (
    ClassifierState,
    Setup,
    Strategy,
    apply_gradients,
    init_classifier,
    keep_state,
)
from cljax.strategies.finetune import classification_loss
from cljax.sweep import SweepResult, sweep
from cljax.trained import TrainedModel, classifier_params, load_model, predict

__version__ = "0.1.0"

__all__ = [
    "BENCHMARKS",
    "REGISTRY",
    "SCENARIOS",
    "Batch",
    "Benchmark",
    "ClassifierState",
    "ConfigError",
    "Dataset",
    "DatasetError",
    "Experiment",
    "Images",
    "NonFiniteLossError",
    "RunConfig",
    "RunResult",
    "ScenarioInfo",
    "Setup",
    "Strategy",
    "Stream",
    "SweepResult",
    "TrainedModel",
    "apply_gradients",
    "check_dataset",
    "classification_loss",
    "classifier_params",
    "cross_entropy",
    "distillation",
    "enable_compilation_cache",
    "execute",
    "gather",
    "init_classifier",
    "keep_state",
    "kl_distillation",
    "load_dataset",
    "load_model",
    "mask_logits",
    "predict",
    "prepare",
    "register_benchmark",
    "register_model",
    "register_strategy",
    "replay_weight",
    "run",
    "sample_context",
    "sample_contexts_upto",
    "sweep",
    "to_float",
    "use_host_devices",
]

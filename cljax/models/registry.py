"""The model registry and the door a user's own network comes in by.

Every classifier cljax ships is added with :func:`register_model`, the same function a user calls, and
:func:`model_from` turns whatever is passed as ``model=`` (a registered name, a linen module, a factory
``n_out -> module``, a flax nnx class or factory) into the linen module the strategies train. The two
checks a strategy relies on are here as well: that the network maps images to ``(B, n_out)`` logits
(:func:`check_logits_shape`), and where its last hidden layer is (:func:`penultimate`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.nnx import bridge

from cljax.models.layers import Linear

Factory = Callable[[int], nn.Module]
F = TypeVar("F", bound=Callable[..., Any])

MODELS: dict[str, Factory] = {}
"""Registered classifiers: name -> factory(n_out) -> module (see :func:`register_model`)."""

MODEL_SUMMARIES: dict[str, str] = {}
"""One line per registered classifier, for listings."""

DENSE_LAYERS = (Linear, nn.Dense)
"""The dense layers cljax recognises inside a linen network: its own ``Linear`` (weight (out, in)) and
``flax.linen.Dense`` (kernel (in, out))."""

_SPEC_HELP = (
    "pass a registered model name, a flax.linen.Module, a factory n_out -> module "
    "(a linen Module class whose first field is the number of outputs counts), "
    "or a flax.nnx.Module class taking (n_out, rngs=...)"
)
_PENULTIMATE = "penultimate_input"


# ------------------------------------------------------------------------------------------ registry


def register_model(
    name: str, factory: F | None = None, *, summary: str = "", overwrite: bool = False
) -> F | Callable[[F], F]:
    """Add a classifier under ``name``: ``factory(n_out)`` builds it (linen or nnx, see :func:`model_from`).

    Usable as a call, ``register_model("mine", make_net)``, or as a decorator on a factory or on a linen
    Module class whose first field is the number of outputs, ``@register_model("mine")``. Registering a
    name twice is an error unless ``overwrite=True``. Returns ``factory`` unchanged.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"register_model: the name must be a non-empty string without padding, got {name!r}")

    def add(fn: F) -> F:
        if not callable(fn):
            raise ValueError(
                f"register_model({name!r}): expected a factory n_out -> module or a Module class, "
                f"got {type(fn).__name__}"
            )
        if name in MODELS and not overwrite:
            raise ValueError(
                f"register_model: a model named {name!r} is already registered; "
                "pass overwrite=True to replace it or choose another name"
            )
        MODELS[name] = fn
        MODEL_SUMMARIES[name] = summary
        return fn

    return add if factory is None else add(factory)


def make_classifier(name: str, n_out: int) -> nn.Module:
    """The registered classifier ``name`` with ``n_out`` output units, as a linen module."""
    return model_from(name, n_out)[0]


# ------------------------------------------------------------------------------------ a user's model


def model_from(spec: Any, n_out: int) -> tuple[nn.Module, str]:
    """What a user passes as ``model=`` as (a linen module, the name results record).

    ``spec`` is a registered name; a linen module (used as is; its class name); a factory ``n_out ->
    module`` or a linen Module class (its ``__name__``); or a flax nnx Module class called as
    ``cls(n_out, rngs=rngs)``, or a factory returning an nnx module, which flax's bridge
    (``nnx.bridge.ToLinen``) wraps so it has linen's ``init`` / ``apply``. A factory that takes a ``rngs``
    keyword gets each seed's key; one that does not builds the same initial weights for every seed.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"n_out must be a positive integer, got {n_out!r}")
    if isinstance(spec, str):
        if spec not in MODELS:
            raise ValueError(f"unknown model {spec!r}; choose one of: {', '.join(MODELS)}")
        return _build(MODELS[spec], n_out, spec), spec
    if isinstance(spec, nn.Module):
        return spec, module_name(spec)
    if isinstance(spec, nnx.Module):
        raise ValueError(
            f"got an instance of the nnx module {type(spec).__name__}; pass its class or a factory "
            "n_out -> module instead, so that every seed initialises its own weights"
        )
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return _build(spec, n_out, name), name
    raise ValueError(f"cannot build a network from a {type(spec).__name__}; {_SPEC_HELP}")


def _build(factory: Callable[..., Any], n_out: int, name: str) -> nn.Module:
    """``factory(n_out)`` as a linen module; nnx classes and factories go through flax's bridge."""
    takes_rngs = _takes_rngs(factory)
    if (isinstance(factory, type) and issubclass(factory, nnx.Module)) or takes_rngs:
        return bridge.ToLinen(factory, args=(n_out,), skip_rng=not takes_rngs)
    try:
        module = factory(n_out)
    except TypeError as err:
        raise ValueError(f"calling {name}({n_out}) failed ({err}); {_SPEC_HELP}") from err
    if isinstance(module, nn.Module):
        return module
    if isinstance(module, nnx.Module):
        return bridge.ToLinen(factory, args=(n_out,), skip_rng=True)
    got = type(module).__name__
    raise ValueError(f"{name}({n_out}) returned a {got}, not a flax module; {_SPEC_HELP}")


def _takes_rngs(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a ``rngs`` keyword (nnx's convention for where initial weights come from)."""
    try:  # nnx's metaclass hides a class's own signature: read its __init__
        params = inspect.signature(fn.__init__ if isinstance(fn, type) else fn).parameters
    except (TypeError, ValueError):
        return False
    return "rngs" in params


def module_name(module: nn.Module) -> str:
    """The network's name: the nnx class or factory behind flax's bridge, else the module's class."""
    if isinstance(module, bridge.ToLinen):
        return getattr(module.nnx_class, "__name__", type(module.nnx_class).__name__)
    return type(module).__name__


def check_logits_shape(
    module: nn.Module, input_shape: tuple[int, ...], n_out: int, name: str | None = None
) -> None:
    """Raise a ValueError unless ``module`` maps float images (B, *input_shape) to float (B, n_out) logits.

    Runs on shapes only (``jax.eval_shape``): nothing is computed or compiled.
    """
    name = name or module_name(module)
    batch = 2
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    shape = "(B, " + ", ".join(str(d) for d in input_shape) + ")"
    try:
        variables = jax.eval_shape(module.init, jax.random.key(0), x)
        out = jax.eval_shape(module.apply, variables, x)
    except Exception as err:  # the user's network: any failure is reported as the model's
        first = str(err).strip().split("\n")[0]
        raise ValueError(
            f"model {name} fails on float images of shape {shape}: {type(err).__name__}: {first}"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            f"model {name} returns a {type(out).__name__}; it must return one (B, {n_out}) array of logits"
        )
    if out.shape != (batch, n_out):
        got = f"(B, {', '.join(map(str, out.shape[1:]))})" if out.shape[:1] == (batch,) else str(out.shape)
        raise ValueError(
            f"model {name} gives outputs of shape {got}; the benchmark needs (B, {n_out}) logits: "
            f"make its last layer {n_out} wide"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"model {name} gives {out.dtype} outputs; logits must be floating point")


# -------------------------------------------------------------------------------- the hidden layer


def penultimate(module: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
    """The network's last hidden layer (B, F), for herding, nearest-mean classification and feature replay.

    Its ``features`` method where it has one (an nnx class's too); otherwise the input of the last dense
    layer (:data:`DENSE_LAYERS`) the forward pass calls. A ValueError says when there is neither.
    """
    if isinstance(module, bridge.ToLinen):
        if _nnx_has_features(module):
            return module.apply(variables, x, nnx_method="features")
    elif callable(getattr(module, "features", None)):
        return module.apply(variables, x, method="features")
    return _last_dense_input(module, variables, x)


def penultimate_width(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The width F of :func:`penultimate`, found on shapes only; a ValueError if the network has none."""
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.eval_shape(lambda v, x: penultimate(module, v, x), variables, x).shape[-1]


def _nnx_has_features(module: bridge.ToLinen) -> bool:
    """Whether the nnx module behind the bridge has a ``features`` method (a factory is built abstractly)."""
    built = module.nnx_class
    if not isinstance(built, type):
        kwargs = dict(module.kwargs) if module.skip_rng else {**module.kwargs, "rngs": nnx.Rngs(0)}
        built = type(nnx.eval_shape(lambda: module.nnx_class(*module.args, **kwargs)))
    return callable(getattr(built, "features", None))


def _last_dense_input(module: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
    """The input of the forward pass's last dense-layer call, captured by method interception."""
    order: list[tuple[str, ...]] = []  # module paths of the dense calls, in call order (static)

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, DENSE_LAYERS) and context.method_name == "__call__":
            context.module.sow("intermediates", _PENULTIMATE, args[0])
            order.append(context.module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _, state = module.apply(variables, x, mutable=["intermediates"])
    name = module_name(module)
    if not order:
        raise ValueError(
            f"{name} has no `features` method and calls no dense layer (flax.linen.Dense or cljax Linear) "
            "whose input could serve as its last hidden layer; give it a `features(x)` method returning "
            "(B, F), or use model='mlp'"
        )
    h = traverse_util.flatten_dict(state["intermediates"])[(*order[-1], _PENULTIMATE)][-1]
    if h.ndim != 2 or h.shape[0] != x.shape[0]:
        raise ValueError(
            f"the input of {name}'s last dense layer has shape {h.shape}, not (B, F); give {name} a "
            "`features(x)` method returning its last hidden layer as (B, F)"
        )
    return h

"""A user's own network is a first-class citizen: every strategy trains it, the Fisher and the feature
route handle it, and what cannot take it (BI-R) says so clearly."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cljax
from cljax.fisher import diagonal_fisher
from cljax.models import (
    MLP,
    MODEL_SUMMARIES,
    MODELS,
    check_logits_shape,
    make_classifier,
    model_from,
    penultimate,
    register_model,
)
from cljax.strategies import REGISTRY

# --------------------------------------------------------------------------------------- user networks


class UserMLP(nn.Module):
    """Plain flax.linen layers, no `features` method, no `hidden` attribute."""

    n_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.n_out)(h)


class UserConvNet(nn.Module):
    n_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Conv(3, (3, 3), strides=2)(x))
        return nn.Dense(self.n_out)(nn.relu(nn.Dense(6)(h.reshape(h.shape[0], -1))))


class NNXNet(nnx.Module):
    """An nnx network with its layers in an nnx.List (integer keys in the param tree)."""

    def __init__(self, n_out: int, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(9, 7, rngs=rngs), nnx.Linear(7, 6, rngs=rngs)])
        self.head = nnx.Linear(6, n_out, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = nnx.relu(layer(h))
        return h

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


class DenseTwin(nn.Module):
    """NNXNet's architecture in linen, so its Fisher can be compared on the same weights."""

    n_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for width in (7, 6):
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.n_out)(h)


# ---------------------------------------------------------------------- every strategy, a user's MLP

FAST = {"gen_units": 32, "z_dim": 8, "replay_batch": 32, "budget": 10}  # where a strategy has them


def train_with(model, strategy: str, data, iters: int = 25) -> cljax.RunResult:
    """A tiny split-MNIST Class-IL run of ``strategy`` whose classifier is ``model``, through the public door
    (``cljax.run(model=...)``)."""
    spec = REGISTRY[strategy]
    options = {k: v for k, v in FAST.items() if k in spec.defaults("class")}
    config = cljax.RunConfig(
        scenario="class", strategy=strategy, iters=iters, batch_size=32, options=options, model=model
    )
    return cljax.run(config, dataset=data, quiet=True)


def assert_trained(result: cljax.RunResult) -> None:
    acc = np.asarray(result.acc_matrix)
    assert acc.shape == (1, 5, 5)
    assert np.isfinite(np.asarray(result.context_loss)).all()
    assert acc[0, 0, 0] > 75  # the first context's two classes, right after training on them (chance 50)


OWN_NETWORKS = ("bir", "gen-classifier", "separate-networks", "xdg")  # build the network they train


@pytest.mark.parametrize("strategy", [s for s in REGISTRY if s not in OWN_NETWORKS])
def test_every_strategy_trains_a_user_linen_mlp(tiny_data, strategy):
    result = train_with(UserMLP, strategy, tiny_data)
    assert_trained(result)
    assert result.config["model"] == "UserMLP"


@pytest.mark.parametrize("strategy", OWN_NETWORKS[1:])
def test_strategies_with_their_own_networks_refuse_a_user_network(tiny_data, strategy):
    scenario = "class" if strategy == "gen-classifier" else "task"
    exp = cljax.prepare(cljax.RunConfig(strategy=strategy, scenario=scenario, iters=2, batch_size=8),
                        dataset=tiny_data)  # fmt: skip
    with pytest.raises(ValueError, match=f"model: {strategy} .*UserMLP") as err:
        REGISTRY[strategy].build(exp.setup._replace(model=UserMLP(10)), exp.config.options)
    assert "\n" not in str(err.value)


def test_bir_refuses_a_user_network_in_one_clear_line(tiny_data):
    exp = cljax.prepare(cljax.RunConfig(strategy="bir", iters=2, batch_size=8), dataset=tiny_data)
    expected = (
        "bir's classifier is its own VAE's encoder, built from an MLP's widths, so it cannot train UserMLP"
    )
    with pytest.raises(ValueError, match=expected) as err:
        REGISTRY["bir"].build(exp.setup._replace(model=UserMLP(10)), exp.config.options)
    assert "\n" not in str(err.value) and "model='mlp'" in str(err.value)
    REGISTRY["bir"].build(exp.setup._replace(model=MLP(10, (16, 16))), exp.config.options)  # any MLP will do


def test_an_nnx_network_trains_through_the_bridge_with_its_own_features(tiny_data):
    class NNXMnist(NNXNet):
        def __init__(self, n_out: int, rngs: nnx.Rngs):
            self.layers = nnx.List([nnx.Linear(784, 32, rngs=rngs)])
            self.head = nnx.Linear(32, n_out, rngs=rngs)

    module, name = model_from(NNXMnist, 10)
    assert name == "NNXMnist"
    check_logits_shape(module, (28, 28, 1), 10)
    result = train_with(NNXMnist, "icarl", tiny_data)  # nearest mean of exemplars on its `features`
    assert_trained(result)
    assert result.config["model"] == "NNXMnist"


# ------------------------------------------------------------------------------------------ the Fisher


def close(a, b) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)


def fisher_both_routes(model: nn.Module, params, x: jax.Array):
    mask = jnp.array([True, False, True, True, True])

    def load(i):
        return jax.lax.dynamic_slice_in_dim(x, i * 8, 8), jnp.zeros(8, jnp.int32), jnp.ones(8)

    return jax.jit(
        lambda p: [diagonal_fisher(model, p, load, 2, mask, "all", factor_dense=f) for f in (True, False)]
    )(params)


@pytest.mark.parametrize("network", [DenseTwin, UserConvNet])
def test_fisher_of_user_linen_networks_factored_equals_per_sample(network):
    model = network(5)
    x = jax.random.normal(jax.random.key(0), (16, 3, 3, 1))
    params = jax.jit(model.init)(jax.random.key(1), x[:1])
    fast, slow = fisher_both_routes(model, params, x)
    jax.tree.map(close, fast, slow)
    assert all(float(jnp.max(leaf)) > 0 for leaf in jax.tree.leaves(fast))


def test_fisher_of_an_nnx_network_equals_its_linen_twin_on_the_same_weights():
    module, _ = model_from(NNXNet, 5)
    x = jax.random.normal(jax.random.key(0), (16, 3, 3, 1))
    params = jax.jit(module.init)(jax.random.key(1), x[:1])
    p = params["params"]
    assert set(p["layers"]) == {0, 1}  # nnx.List: integer keys
    same = {"Dense_0": p["layers"][0], "Dense_1": p["layers"][1], "Dense_2": p["head"]}
    twin = {"params": same}
    np.testing.assert_allclose(module.apply(params, x), DenseTwin(5).apply(twin, x), rtol=1e-6)
    got, slow = fisher_both_routes(module, params, x)  # no linen layer inside: both take the general route
    want, _ = fisher_both_routes(DenseTwin(5), twin, x)  # nn.Dense: factored
    g = got["params"]
    got_as_twin = {"Dense_0": g["layers"][0], "Dense_1": g["layers"][1], "Dense_2": g["head"]}
    jax.tree.map(close, got_as_twin, want["params"])
    jax.tree.map(close, got, slow)


# ------------------------------------------------------------------------------------ the hidden layer


def test_penultimate_is_the_features_method_or_the_last_dense_input():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 1))
    user = UserMLP(5)
    v = jax.jit(user.init)(jax.random.key(1), x)
    dense = v["params"]["Dense_0"]
    by_hand = jax.nn.relu(x.reshape(4, -1) @ dense["kernel"] + dense["bias"])
    np.testing.assert_allclose(jax.jit(lambda v: penultimate(user, v, x))(v), by_hand, rtol=1e-6)
    mlp = MLP(5, (7, 6))
    v = jax.jit(mlp.init)(jax.random.key(1), x)
    np.testing.assert_allclose(
        *jax.jit(lambda v: (penultimate(mlp, v, x), mlp.apply(v, x, method="features")))(v)
    )
    nnx_module, _ = model_from(NNXNet, 5)
    v = jax.eval_shape(nnx_module.init, jax.random.key(1), x)
    shape = jax.eval_shape(lambda v: penultimate(nnx_module, v, x), v).shape
    assert shape == (4, 6)  # NNXNet.features, through the bridge


def test_a_network_without_a_hidden_layer_is_refused_by_icarl_clearly(tiny_data):
    class ConvOnly(nn.Module):
        n_out: int

        @nn.compact
        def __call__(self, x):
            return nn.Conv(self.n_out, (28, 28), padding="VALID")(x).reshape(x.shape[0], -1)

    exp = cljax.prepare(cljax.RunConfig(strategy="icarl", iters=2, batch_size=8), dataset=tiny_data)
    with pytest.raises(ValueError, match="icarl: needs the classifier's last hidden layer, but ConvOnly has"):
        REGISTRY["icarl"].build(exp.setup._replace(model=ConvOnly(10)), exp.config.options)


# --------------------------------------------------------------------------- model_from and the registry


@pytest.fixture
def registry():
    """The model registry, restored after the test."""
    saved, summaries = dict(MODELS), dict(MODEL_SUMMARIES)
    yield MODELS
    MODELS.clear(), MODEL_SUMMARIES.clear()
    MODELS.update(saved), MODEL_SUMMARIES.update(summaries)


def test_model_from_takes_names_modules_factories_and_nnx():
    assert {"mlp", "mlp-1000", "cnn", "convnet"} <= set(MODELS)
    module, name = model_from("mlp", 10)
    assert (type(module), module.hidden, name) == (MLP, (400, 400), "mlp")
    assert type(make_classifier("mlp-1000", 3)) is MLP
    user = UserMLP(10)
    assert model_from(user, 10) == (user, "UserMLP")
    assert model_from(UserMLP, 10)[1] == "UserMLP"

    def small_net(n_out):
        return UserMLP(n_out)

    module, name = model_from(small_net, 4)
    assert (module.n_out, name) == (4, "small_net")
    module, name = model_from(NNXNet, 5)
    assert isinstance(module, nnx.bridge.ToLinen) and name == "NNXNet"
    x = jnp.ones((2, 3, 3, 1))
    init = jax.jit(module.init)
    keys = [init(jax.random.key(k), x)["params"]["head"]["kernel"] for k in (0, 1)]
    assert not np.allclose(*keys)  # each seed's key initialises its own weights

    def nnx_factory(n_out):
        return NNXNet(n_out, rngs=nnx.Rngs(0))

    module, name = model_from(nnx_factory, 5)
    out = jax.eval_shape(lambda k: module.apply(module.init(k, x), x), jax.random.key(0))
    assert name == "nnx_factory" and out.shape == (2, 5)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mpl", "unknown model 'mpl'; choose one of: mlp, mlp-1000, mlp-2000, cnn, convnet"),
        (3, "cannot build a network from a int; pass a registered model name"),
        (lambda n_out: "net", r"returned a str, not a flax module"),
        (lambda: UserMLP(10), r"calling <lambda>\(10\) failed"),
        (NNXNet(3, rngs=nnx.Rngs(0)), "got an instance of the nnx module NNXNet; pass its class"),
    ],
)
def test_model_from_says_what_was_wrong_and_what_to_pass(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        model_from(spec, 10)
    assert "\n" not in str(err.value)


def test_check_logits_shape_names_the_model_and_the_width_it_needs():
    check_logits_shape(UserMLP(10), (28, 28, 1), 10)
    with pytest.raises(ValueError, match=r"model UserMLP gives outputs of shape \(B, 7\); the benchmark"):
        check_logits_shape(UserMLP(7), (28, 28, 1), 10)
    with pytest.raises(ValueError, match="make its last layer 10 wide"):
        check_logits_shape(UserConvNet(3), (28, 28, 1), 10)


def test_register_model_as_call_and_decorator(registry):
    @register_model("tiny-mlp", summary="a user's MLP")
    class TinyMLP(UserMLP):
        pass

    register_model("tiny-nnx", NNXNet)
    assert MODEL_SUMMARIES["tiny-mlp"] == "a user's MLP"
    module, name = model_from("tiny-mlp", 10)
    assert isinstance(module, TinyMLP) and name == "tiny-mlp"
    assert isinstance(model_from("tiny-nnx", 10)[0], nnx.bridge.ToLinen)
    with pytest.raises(ValueError, match="'tiny-mlp' is already registered; pass overwrite=True"):
        register_model("tiny-mlp", UserConvNet)
    register_model("tiny-mlp", UserConvNet, overwrite=True)
    assert isinstance(model_from("tiny-mlp", 10)[0], UserConvNet)
    with pytest.raises(ValueError, match="non-empty string"):
        register_model(" ", UserMLP)
    with pytest.raises(ValueError, match="expected a factory"):
        register_model("not-callable", 42)

"""cljax.models.fast_conv: the same gradients as JAX's own, canonical convolutions inside a loop."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cljax.models.fast_conv import channels_last_numbers, conv_general_dilated, fast_convolutions, fast_spec
from cljax.models.layers import Conv

TOL = dict(rtol=1e-5, atol=1e-5)


def _conv_loss(conv, strides, padding, dilation, n):
    """A scalar of the convolution's output with a different weight per element, so every gradient counts."""

    def loss(x, w):
        y = conv(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=channels_last_numbers(n))
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))

    return loss


def _grads(conv, x, w, strides, padding, dilation):
    loss = _conv_loss(conv, strides, padding, dilation, x.ndim - 2)
    return jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)


def _normal(*shape, seed=0):
    """Standard normal float32 values from numpy (jax.random would compile a program per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _inputs(batch, spatial, c_in, window, c_out):
    return _normal(batch, *spatial, c_in), _normal(*window, c_in, c_out, seed=1)


CASES = [
    # strides, padding, kernel dilation, batch, image size, window
    ((1, 1), "SAME", (1, 1), 4, (8, 8), (3, 3)),
    ((2, 2), "SAME", (1, 1), 4, (9, 7), (3, 3)),
    ((1, 1), "VALID", (1, 1), 1, (7, 9), (3, 3)),
    ((2, 2), "VALID", (1, 1), 3, (9, 9), (3, 3)),
    ((1, 1), ((1, 1), (1, 1)), (1, 1), 2, (8, 8), (3, 3)),
    ((2, 2), ((1, 1), (1, 1)), (1, 1), 2, (8, 8), (3, 3)),  # cljax ConvNet's layers
    ((2, 1), ((0, 2), (1, 0)), (1, 1), 2, (9, 8), (3, 2)),  # asymmetric
    ((3, 3), ((1, 0), (2, 1)), (1, 1), 1, (11, 10), (2, 2)),  # strides skip the last rows
    ((1, 1), "SAME", (2, 2), 2, (9, 9), (3, 3)),
    ((2, 2), "VALID", (2, 2), 2, (11, 10), (3, 3)),
    ((1, 1), ((2, 1), (-1, 0)), (1, 1), 2, (8, 8), (3, 3)),  # negative padding
    ((2, 2), ((1, 1), (1, 1)), (1, 1), 3, (4, 4), (3, 3)),  # ConvNet's last layer: 2x2 outputs < kernel
    ((1, 1), "VALID", (2, 2), 2, (6, 7), (3, 2)),  # outputs smaller than the kernel, dilated
    ((1,), "SAME", (1,), 3, (10,), (3,)),  # 1-D
    ((2,), ((1, 0),), (2,), 3, (11,), (3,)),
    ((2, 1, 1), "SAME", (1, 1, 1), 2, (5, 4, 5), (3, 3, 2)),  # 3-D
]


@pytest.mark.parametrize("strides,padding,dilation,batch,spatial,window", CASES)
def test_gradients_match_jax(strides, padding, dilation, batch, spatial, window):
    x, w = _inputs(batch, spatial, 3, window, 5)
    numbers = channels_last_numbers(len(spatial))
    assert fast_spec(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers) is not None
    (value, grads) = _grads(conv_general_dilated, x, w, strides, padding, dilation)
    (ref_value, ref_grads) = _grads(lax.conv_general_dilated, x, w, strides, padding, dilation)
    np.testing.assert_allclose(value, ref_value, **TOL)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, **TOL)


def test_string_dimension_numbers_and_no_dilation_take_the_fast_path():
    x, w = _inputs(2, (6, 6), 3, (3, 3), 4)
    assert fast_spec(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) is not None
    assert fast_spec(x, w, (1, 1), "SAME", lhs_dilation=(1, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_gradients_match_jax_under_vmap():
    """Per-example gradients (a vmap of grads over single images, as the Fisher computes them)."""
    x, w = _inputs(5, (9, 9), 3, (3, 3), 4)

    def per_example(conv):
        loss = _conv_loss(conv, (2, 2), "SAME", (1, 1), 2)
        grad = jax.grad(lambda x, w: loss(x[None], w), (0, 1))
        return jax.jit(jax.vmap(grad, in_axes=(0, None)))(x, w)

    for got, want in zip(
        per_example(conv_general_dilated), per_example(lax.conv_general_dilated), strict=True
    ):
        np.testing.assert_allclose(got, want, **TOL)


def test_second_order_gradients_match_jax():
    x, w = _inputs(2, (6, 6), 2, (3, 3), 3)

    def hvp_like(conv):
        loss = _conv_loss(conv, (2, 2), "SAME", (1, 1), 2)
        return jax.jit(jax.grad(lambda w: jnp.sum(jnp.square(jax.grad(loss, 1)(x, w)))))(w)

    np.testing.assert_allclose(hvp_like(conv_general_dilated), hvp_like(lax.conv_general_dilated), **TOL)


@pytest.mark.parametrize(
    "kwargs,x_shape,w_shape",
    [
        (dict(feature_group_count=3), (2, 6, 6, 3), (3, 3, 1, 3)),
        (dict(lhs_dilation=(2, 2)), (2, 6, 6, 3), (3, 3, 3, 4)),
        (dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), (2, 3, 6, 6), (4, 3, 3, 3)),
    ],
    ids=["feature_groups", "input_dilation", "channels_first"],
)
def test_other_convolutions_fall_back_to_lax(kwargs, x_shape, w_shape):
    x, w = _normal(*x_shape), _normal(*w_shape, seed=1)
    kwargs = {"dimension_numbers": ("NHWC", "HWIO", "NHWC"), **kwargs}
    padding = ((1, 1), (1, 1))
    assert fast_spec(x, w, (1, 1), padding, **kwargs) is None
    jaxpr = str(jax.make_jaxpr(lambda x, w: conv_general_dilated(x, w, (1, 1), padding, **kwargs))(x, w))
    assert "custom_vjp" not in jaxpr and "conv_general_dilated" in jaxpr
    np.testing.assert_array_equal(
        conv_general_dilated(x, w, (1, 1), padding, **kwargs),
        lax.conv_general_dilated(x, w, (1, 1), padding, **kwargs),
    )


class SmallCNN(nn.Module):
    """A user's linen CNN: flax Conv (stride 2, SAME and CIRCULAR), cljax's Conv, a dense head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(6, (3, 3), padding="CIRCULAR")(x))
        x = nn.relu(Conv(8, 3, stride=2, padding=1)(x))
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def _cnn_problem():
    model = SmallCNN()
    x = _normal(4, 8, 8, 3, seed=2)  # the last conv's outputs are 2x2, smaller than its kernel
    y = jnp.arange(4) % 4

    def loss(params):
        logits = model.apply(params, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

    return model, x, loss


def _scanned_training(loss):
    """Two SGD steps of ``loss`` as one lax.scan: a while loop, as cljax trains a context."""

    def step(params, _):
        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), None

    return jax.jit(lambda params: lax.scan(step, params, None, length=2)[0])


def _conv_labels(compiled) -> set[str]:
    return set(re.findall(r"dim_labels=([^,\s]+)", compiled.as_text()))


def _random_params(model, x):
    """Parameters of ``model`` with random values, without compiling its initialisers."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    leaves, tree = jax.tree.flatten(shapes)
    return jax.tree.unflatten(tree, [0.3 * _normal(*leaf.shape, seed=i) for i, leaf in enumerate(leaves)])


def test_flax_cnn_same_params_and_gradients_under_fast_convolutions():
    model, x, loss = _cnn_problem()
    params = _random_params(model, x)
    with fast_convolutions():
        fast_shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        fast_jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x))(params))
        fast_loss, fast_grads = jax.jit(jax.value_and_grad(loss))(params)
    assert fast_shapes == jax.eval_shape(model.init, jax.random.key(0), x)  # names, shapes, dtypes
    assert fast_jaxpr.count("custom_vjp_call") == 3
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda p: model.apply(p, x))(params))  # the context is left
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(fast_loss, ref_loss, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), fast_grads, ref_grads)


def test_scanned_gradient_has_only_canonical_convolutions():
    """JAX's rule leaves ``f01b_i01o->01bf`` (kernel) and ``..._01oi`` (input) convolutions in the loop,
    and XLA swaps the operands of the last layer's input gradient (2x2 outputs); under fast_convolutions
    every convolution is ``b01f_01io->b01f``. The same scan body is traced both ways, so this also checks
    that JAX's trace caches tell the two apart."""
    model, x, loss = _cnn_problem()
    params = _random_params(model, x)
    train = _scanned_training(loss)
    plain = train.lower(params).compile()
    with fast_convolutions():
        fast = train.lower(params).compile()
    again = train.lower(params).compile()
    assert any(label.startswith("f") for label in _conv_labels(plain))
    assert _conv_labels(fast) == {"b01f_01io->b01f"}
    assert _conv_labels(again) == _conv_labels(plain)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), fast(params), plain(params))


def test_convs_with_their_own_convolution_are_left_alone():
    calls = []

    def mine(*args, **kwargs):
        calls.append(1)
        return lax.conv_general_dilated(*args, **kwargs)

    model = nn.Conv(3, (3, 3), conv_general_dilated=mine)
    x = jnp.ones((1, 5, 5, 2))
    with fast_convolutions():
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x))(params))
    assert calls and "custom_vjp" not in jaxpr

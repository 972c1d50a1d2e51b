"""Convolutions whose gradients XLA's CPU backend runs fast inside a loop (a ``lax.scan``).

Why: JAX's transpose rules write the gradients of a channels-last convolution as convolutions in other
layouts: the kernel gradient as ``dim_labels=f01b_i01o->01bf``, the input gradient as
``b01f_01oi->b01f`` (the kernel's feature axes swapped in the dimension numbers). Outside a loop XLA's CPU
backend canonicalises both to ``b01f_01io->b01f`` and runs them on its fast path; inside a
``while`` body, which is what ``lax.scan`` compiles to and where cljax trains every context, they stay as
they are and run on a slow, naive path. Measured on this project's 2-core CPU (``benchmarks/conv_in_scan.py``,
``results/conv_in_scan.json``; Adam steps in a scan, medians of 5): a small linen CNN (conv32-pool-conv64-
pool-dense256, 32x32x3, batch 128) 3284 ms per step with JAX's gradients against 159 ms with these
(20.7x); cljax's ``ConvNet`` (split CIFAR, batch 256) 6001 against 236 ms (25.4x). A scanned step with
these costs what one jitted step of JAX's costs outside a loop (159 ms), or less (ConvNet: 403 ms; see
below). Earlier, on a busier host, 34x and 20x.

:func:`conv_general_dilated` is a drop-in for :func:`jax.lax.conv_general_dilated` whose two gradients
are written by hand as convolutions in the canonical layout, so XLA compiles them fast in and outside
loops: the kernel gradient convolves the input, its feature axis moved to the batch axis, with the output
gradient as the kernel; the input gradient convolves the output gradient, dilated by the strides, with the
kernel flipped and its feature axes transposed. Where a layer's output has fewer positions than its kernel
(ConvNet's last layer: 2x2 outputs of a 3x3 kernel), XLA swaps the operands of that input-gradient
convolution into another slow layout, in and outside loops; there the input gradient is one matrix
product and a sum of padded slices instead. They compute what JAX's own rules compute (the tests find
them equal to float tolerance; bit for bit where XLA's fast path runs both).

:func:`fast_convolutions` makes every ``flax.linen.Conv`` traced inside it use that function, so a user's
linen CNN gets the fast gradients without a change to its code or its parameters.

The fast path takes channels-last inputs and ``(*window, in, out)`` kernels (flax's layout, as
``("NHWC", "HWIO", "NHWC")`` for 2-D; 1-D and 3-D alike), any window strides, string (``SAME``,
``SAME_LOWER``, ``VALID``) or explicit padding, kernel dilation, no input dilation, one feature group and
one batch group, and inputs and kernel of one dtype. Anything else goes to
:func:`jax.lax.conv_general_dilated` unchanged. A fast convolution is a :func:`jax.custom_vjp`: it can be
differentiated in reverse mode, also twice and under ``vmap``, but not in forward mode (``jax.jvp``,
``jax.jacfwd``); trace such code outside :func:`fast_convolutions`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]


class _Spec(NamedTuple):
    """The static arguments of a fast convolution (hashable: a ``nondiff_argnums`` argument)."""

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    rhs_dilation: tuple[int, ...]
    precision: Any
    preferred_element_type: Any


def channels_last_numbers(n_spatial: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers of a channels-last convolution with ``(*window, in, out)`` kernels (flax's)."""
    spatial = tuple(range(1, n_spatial + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, n_spatial + 1, *spatial),
        rhs_spec=(n_spatial + 1, n_spatial, *range(n_spatial)),
        out_spec=(0, n_spatial + 1, *spatial),
    )


def _explicit_padding(
    padding: Padding, in_shape: Sequence[int], window: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int], ...] | None:
    """``padding`` as (low, high) pairs per spatial dimension, or None where lax would not accept it."""
    try:
        if isinstance(padding, str):
            pads = lax.padtype_to_pads(in_shape, window, strides, padding)
        else:
            pads = [(int(lo), int(hi)) for lo, hi in padding]
    except (ValueError, TypeError):
        return None
    return tuple((int(lo), int(hi)) for lo, hi in pads) if len(pads) == len(in_shape) else None


def fast_spec(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> _Spec | None:
    """The static arguments of the fast path for this call, or None if it must fall back to lax.

    The fast path needs channels-last dimension numbers (flax's), no input dilation, one feature group and
    one batch group, inputs and kernel of one dtype and a padding that lax accepts.
    """
    n = lhs.ndim - 2
    if n < 1 or rhs.ndim != lhs.ndim or lhs.dtype != rhs.dtype:
        return None
    if feature_group_count != 1 or batch_group_count != 1:
        return None
    if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
        return None
    try:
        dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    except (ValueError, TypeError):
        return None
    if tuple(map(tuple, dnums)) != tuple(map(tuple, channels_last_numbers(n))):
        return None
    strides = tuple(int(s) for s in window_strides)
    dilation = (1,) * n if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
    if len(strides) != n or len(dilation) != n:
        return None
    window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:n], dilation, strict=True)]
    pads = _explicit_padding(padding, lhs.shape[1:-1], window, strides)
    if pads is None:
        return None
    if isinstance(precision, list):
        precision = tuple(precision)
    return _Spec(strides, pads, dilation, precision, preferred_element_type)


def _forward(lhs: jax.Array, rhs: jax.Array, spec: _Spec) -> jax.Array:
    """The convolution itself, as lax computes it."""
    return lax.conv_general_dilated(
        lhs,
        rhs,
        spec.strides,
        spec.padding,
        rhs_dilation=spec.rhs_dilation,
        dimension_numbers=channels_last_numbers(lhs.ndim - 2),
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )


def input_gradient_padding(
    in_shape: Sequence[int], window: Sequence[int], out_shape: Sequence[int], spec: _Spec
) -> list[tuple[int, int]]:
    """Padding of the input-gradient convolution of the output gradient with the flipped kernel.

    The output gradient is dilated by the strides; the padding makes the result the input's size (as JAX's
    ``_conv_general_vjp_lhs_padding``).
    """
    pads = []
    for size, k, o, s, d, (lo, _) in zip(
        in_shape, window, out_shape, spec.strides, spec.rhs_dilation, spec.padding, strict=True
    ):
        before = (k - 1) * d - lo
        pads.append((before, size + (k - 1) * d - (o - 1) * s - 1 - before))
    return pads


def _input_gradient(g: jax.Array, rhs: jax.Array, lhs_shape: Sequence[int], lhs_dtype: Any, spec: _Spec):
    """d(loss)/d(input) as one canonical channels-last convolution, or as a product where XLA would swap.

    The output gradient, dilated by the strides, is convolved with the kernel flipped in space and with its
    feature axes swapped, (*K, C_out, C_in). JAX's own rule swaps them in the dimension numbers instead
    (``01oi``), which XLA's CPU backend also runs slowly inside a loop. Where the output is smaller than the
    kernel (fewer positions), XLA swaps the two operands of that convolution into a layout it runs slowly
    in and outside loops (e.g. the 2x2 outputs of ConvNet's last layer: about 220 ms against 10 ms per step
    at batch 256); there :func:`_input_gradient_by_product` computes it instead.
    """
    n = g.ndim - 2
    if g.size == 0:
        return jnp.zeros(lhs_shape, lhs_dtype)
    if math.prod(rhs.shape[:n]) > math.prod(g.shape[1:-1]):
        return _input_gradient_by_product(g, rhs, lhs_shape, spec).astype(lhs_dtype)
    kernel = lax.rev(rhs, tuple(range(n))).swapaxes(n, n + 1).astype(g.dtype)
    dx = lax.conv_general_dilated(
        g,
        kernel,
        window_strides=(1,) * n,
        padding=input_gradient_padding(lhs_shape[1:-1], rhs.shape[:n], g.shape[1:-1], spec),
        lhs_dilation=spec.strides,
        rhs_dilation=spec.rhs_dilation,
        dimension_numbers=channels_last_numbers(n),
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )
    return dx.astype(lhs_dtype)


def _input_gradient_by_product(g: jax.Array, rhs: jax.Array, lhs_shape: Sequence[int], spec: _Spec):
    """d(loss)/d(input) as one matrix product and a sum of padded slices (col2im), for small outputs.

    The product of the output gradient, (N * positions, C_out), with the kernel, (*K * C_in, C_out),
    gives every output position's gradient at every kernel offset; each offset's slice, dilated by the
    strides, is padded to its place in the input and the slices are summed.
    """
    n = g.ndim - 2
    window, c_in = rhs.shape[:n], rhs.shape[n]
    kernel = rhs.reshape(-1, rhs.shape[-1]).astype(g.dtype)
    patches = lax.dot_general(
        g.reshape(-1, g.shape[-1]),
        kernel,
        (((1,), (1,)), ((), ())),
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    ).reshape(*g.shape[:-1], *window, c_in)
    zero = jnp.zeros((), patches.dtype)
    dx = None
    for offset in itertools.product(*map(range, window)):
        config = [(0, 0, 0)]
        for size, k, o, s, d, (lo, _) in zip(
            lhs_shape[1:-1], offset, g.shape[1:-1], spec.strides, spec.rhs_dilation, spec.padding, strict=True
        ):
            start = k * d - lo
            config.append((start, size - start - (o - 1) * s - 1, s - 1))
        config.append((0, 0, 0))
        part = lax.pad(patches[(Ellipsis, *offset, slice(None))], zero, config)
        dx = part if dx is None else dx + part
    return dx


def kernel_gradient_padding(
    in_shape: Sequence[int],
    window: Sequence[int],
    out_shape: Sequence[int],
    spec: _Spec,
) -> list[tuple[int, int]]:
    """Padding of the kernel-gradient convolution of the input with the output gradient.

    Its window is the output gradient dilated by the strides; its strides are the kernel dilation. The low
    padding is the forward one, the high one what makes the result exactly the kernel's size (as JAX's
    ``_conv_general_vjp_rhs_padding``; it may be negative where the strides skip the input's last rows).
    """
    pads = []
    for size, k, o, s, d, (lo, _) in zip(
        in_shape, window, out_shape, spec.strides, spec.rhs_dilation, spec.padding, strict=True
    ):
        pads.append((lo, (k - 1) * d + (o - 1) * s + 1 - size - lo))
    return pads


def _kernel_gradient(lhs: jax.Array, g: jax.Array, rhs_shape: Sequence[int], rhs_dtype: Any, spec: _Spec):
    """d(loss)/d(kernel) as one canonical channels-last convolution.

    The input with its feature axis as the batch axis and the batch as the feature axis, (C_in, *S, N),
    is convolved with the output gradient as the kernel, (*S_out, N, C_out): the result, (C_in, *K, C_out),
    is the kernel gradient with its input-feature axis first.
    """
    n = lhs.ndim - 2
    spatial = tuple(range(1, n + 1))
    if g.size == 0:
        return jnp.zeros(rhs_shape, rhs_dtype)
    if g.dtype != lhs.dtype:
        lhs = lhs.astype(g.dtype)
    padding = kernel_gradient_padding(lhs.shape[1:-1], rhs_shape[:n], g.shape[1:-1], spec)
    dw = lax.conv_general_dilated(
        lhs.transpose((n + 1, *spatial, 0)),
        g.transpose((*spatial, 0, n + 1)),
        window_strides=spec.rhs_dilation,
        padding=padding,
        rhs_dilation=spec.strides,
        dimension_numbers=channels_last_numbers(n),
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )
    return dw.transpose((*spatial, 0, n + 1)).astype(rhs_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fast_conv(lhs: jax.Array, rhs: jax.Array, spec: _Spec) -> jax.Array:
    """The convolution, with the gradients of :func:`_fast_conv_bwd`."""
    return _forward(lhs, rhs, spec)


def _fast_conv_fwd(lhs: jax.Array, rhs: jax.Array, spec: _Spec):
    """The convolution and what its gradients need: both operands (as JAX's own rule keeps them)."""
    return _forward(lhs, rhs, spec), (lhs, rhs)


def _fast_conv_bwd(spec: _Spec, residuals: tuple[jax.Array, jax.Array], g: jax.Array):
    """The gradients with respect to the input and the kernel."""
    lhs, rhs = residuals
    d_lhs = _input_gradient(g, rhs, lhs.shape, lhs.dtype, spec)
    d_rhs = _kernel_gradient(lhs, g, rhs.shape, rhs.dtype, spec)
    return d_lhs, d_rhs


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated` with gradients XLA's CPU backend runs fast inside loops.

    Same arguments and result. A call the fast path takes (:func:`fast_spec` is not None: channels-last,
    no input dilation, one feature and batch group, one dtype) becomes a :func:`jax.custom_vjp` whose
    gradients are canonical-layout convolutions; any other is passed to :func:`jax.lax.conv_general_dilated`
    unchanged.
    """
    args = (lhs, rhs, window_strides, padding)
    kwargs = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    spec = fast_spec(*args, **kwargs)
    if spec is None:
        return lax.conv_general_dilated(*args, **kwargs)
    return _fast_conv(lhs, rhs, spec)


def _uses_default_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a flax Conv left to call ``lax.conv_general_dilated`` (no override of it)."""
    return (
        isinstance(module, nn.Conv)
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
    )


def _fast_conv_interceptor(next_fun, args, kwargs, context):
    """Run a default flax Conv's ``__call__`` with :func:`conv_general_dilated` as its convolution.

    The field is set on the bound module only for the call and restored after it, also on errors; flax
    reads it in ``__call__`` alone, so the parameters, their names and shapes do not change.
    """
    module = context.module
    if context.method_name != "__call__" or not _uses_default_conv(module):
        return next_fun(*args, **kwargs)
    object.__setattr__(module, "conv_general_dilated", conv_general_dilated)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "conv_general_dilated", None)


def _trace_state() -> Any:
    """A thread-local JAX config state that is part of JAX's tracing and jit cache keys, or None.

    ``jax.jit`` and ``lax.scan`` cache what they trace by the Python function, and flax's interceptor is
    not part of that key: without this state a scan body traced once outside :func:`fast_convolutions`
    would be reused inside it (and the other way round). Registered through JAX's private config module;
    where that is missing, caches do not see the context (documented in :func:`fast_convolutions`).
    """
    try:
        from jax._src import config as jax_config

        state = jax_config.config_states.get(_STATE_NAME)
        if state is None:
            state = jax_config.bool_state(
                _STATE_NAME,
                False,
                help="Set while cljax.models.fast_conv.fast_convolutions() is active (a cache key only).",
                include_in_jit_key=True,
                include_in_trace_context=True,
            )
        return state
    except Exception:  # any change of the private API: work without it
        return None


_STATE_NAME = "cljax_fast_convolutions"
_STATE = _trace_state()


@contextlib.contextmanager
def fast_convolutions() -> Iterator[None]:
    """Within this context, every default ``flax.linen.Conv`` traced uses :func:`conv_general_dilated`.

    It acts when a module is traced (``init``/``apply``, also under ``jit``, ``scan``, ``vmap`` and
    ``value_and_grad``), so enter it around the tracing or lowering of a program; an already compiled
    program (``jax.jit(f).lower(...).compile()``) runs the same whether called inside or outside. The
    parameters do not change. Convs given their own ``conv_general_dilated`` or
    ``conv_general_dilated_cls`` are left alone. Thread-local, as flax's method interceptors are.

    The context also sets a JAX config state that is part of JAX's trace and jit cache keys, so that a
    function (a ``jax.jit`` or a ``lax.scan`` body) traced outside it is traced again inside it rather
    than reused, and the other way round. That state is registered through JAX's private config module;
    should a JAX version lack it, the context still works but those caches would not tell the two apart.
    """
    marked = _STATE(True) if _STATE is not None else contextlib.nullcontext()
    with marked, nn.intercept_methods(_fast_conv_interceptor):
        yield


__all__ = ["channels_last_numbers", "conv_general_dilated", "fast_convolutions", "fast_spec"]

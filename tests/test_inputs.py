"""Dtype rules, bad input, non-finite input and empty dimensions."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from tests.reference import assert_close, expm_condition, grad_scale, sample

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

FUNCS = [trace_expm_gram, log_trace_expm_gram]
FUNC_IDS = [f.__name__ for f in FUNCS]

# float32 agreement between two routes to the same float32 computation.
F32_TOL = 1e-6
# Absolute floor of a gradient entry between two float32 programs, in eps32 of
# its natural size grad_scale * expm_condition (tests/reference.py).
F32_ATOL = 8 * 2.0**-23


def _errmsg(fn, *parts):
    """Regex: message starts with the function's name, then holds the parts in order."""
    return "^" + re.escape(fn.__name__) + ": .*" + ".*".join(parts)


# --- dtype rules -------------------------------------------------------------


def _value_and_grad_of_dtype(fn, x, jit, dtype):
    """Value and gradient of ``fn`` at ``x`` (optionally jitted), both checked to be ``dtype``."""
    vg = jax.jit(jax.value_and_grad(fn)) if jit else jax.value_and_grad(fn)
    value, grad = vg(x)
    assert value.dtype == np.dtype(dtype)
    assert grad.dtype == np.dtype(dtype)
    return value, grad


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("dtype", "mode"), [("float32", "x32"), ("float32", "x64"), ("float64", "x64")]
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_float_dtype_kept(request, fn, dtype, mode, jit):
    request.getfixturevalue(mode)
    x = jnp.asarray(sample((4, 3)), dtype)
    _value_and_grad_of_dtype(fn, x, jit, dtype)
    assert (jax.jit(fn) if jit else fn)(x).dtype == np.dtype(dtype)


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.bool_])
@pytest.mark.parametrize(("mode", "default_float"), [("x32", np.float32), ("x64", np.float64)])
def test_integer_and_bool_promote_to_default_float(request, fn, dtype, mode, default_float):
    request.getfixturevalue(mode)
    # Small integers keep exp(scale * mu) moderate.
    ints = np.random.default_rng(3).integers(0 if dtype in (np.uint8, np.bool_) else -1, 2, (4, 3))
    x = ints.astype(dtype)
    value = fn(x, scale=0.3)
    assert value.dtype == np.dtype(default_float)
    want = fn(jnp.asarray(ints, default_float), scale=0.3)
    assert_close(value, want, rtol=F32_TOL if default_float is np.float32 else 1e-14)
    # A JAX integer array (not only NumPy) is promoted the same way.
    assert fn(jnp.asarray(x), scale=0.3).dtype == np.dtype(default_float)


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_half_precision_computed_in_float32(x32, fn, dtype, jit):
    x = jnp.asarray(sample((5, 3)), dtype)
    value, grad = _value_and_grad_of_dtype(fn, x, jit, dtype)

    # The float32 result of the upcast input, rounded once to the half dtype
    # (error <= eps/2; eps leaves room for float32 rounding differences between
    # programs). A half-precision computation would be off by several eps.
    want_value, want_grad = jax.value_and_grad(fn)(x.astype(jnp.float32))
    eps = float(jnp.finfo(dtype).eps)
    assert_close(value, want_value, rtol=eps, what="value")
    # Rounding is relative per entry; two float32 programs differ by a floor.
    xf = np.asarray(x, np.float64)
    size = grad_scale(xf, 1.0, log=fn is log_trace_expm_gram) * expm_condition(xf, 1.0)
    assert_close(grad, want_grad, rtol=eps, atol=F32_ATOL * size, what="grad")


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
def test_float64_scale_with_float32_x(x64, fn):
    x = jnp.asarray(sample((5, 3)), jnp.float32)
    s = jnp.asarray(0.3, jnp.float64)
    value, (gx, gs) = jax.value_and_grad(lambda x, s: fn(x, scale=s), argnums=(0, 1))(x, s)
    assert value.dtype == np.float32
    assert gx.dtype == np.float32
    # The cotangent of scale comes back in scale's own dtype.
    assert gs.dtype == np.float64
    assert_close(value, fn(x, scale=0.3), rtol=F32_TOL, what="value")
    want_gs = jax.grad(lambda s: fn(x, scale=s))(jnp.float32(0.3))
    assert_close(gs, want_gs, rtol=F32_TOL, what="d/dscale")


# --- bad input ---------------------------------------------------------------

# Regex parts for the recurring messages.
_NOT_ARRAY = r"expected x to be a JAX or NumPy array of shape \(\.\.\., n, m\)"
_NDIM = r"expected x of shape \(\.\.\., n, m\) with ndim >= 2"
_REAL_X = r"expected x to be a real array"
_X_DTYPE = r"expected x to have a real floating, integer or bool dtype"
_SCALAR = r"expected scale to be a scalar \(shape \(\)\)"
_SCALE_NUMBER = r"expected scale to be a real Python number or a scalar JAX/NumPy array"
_SCALE_DTYPE = r"expected scale to have a real floating or integer dtype"

# (x, expected exception, regex parts after "<name>: ": what was expected, what came)
BAD_X = [
    pytest.param(np.ones(3), ValueError, [_NDIM, r"got shape \(3,\)"], id="1d"),
    pytest.param(jnp.ones(()), ValueError, [_NDIM, r"got shape \(\)"], id="0d-jax"),
    pytest.param(np.float32(1.0), ValueError, [_NDIM, r"got shape \(\)"], id="numpy-scalar"),
    pytest.param(
        jnp.ones((3, 2), jnp.complex64),
        TypeError,
        [_REAL_X, r"got complex dtype complex64"],
        id="complex64",
    ),
    pytest.param(
        np.ones((3, 2), np.complex128),
        TypeError,
        [_REAL_X, r"got complex dtype complex128"],
        id="complex128-numpy",
    ),
    pytest.param(np.array([["a", "b"]]), TypeError, [_X_DTYPE, r"got dtype <U1"], id="str-array"),
    pytest.param(
        np.array([[1, None]], dtype=object), TypeError, [_X_DTYPE, r"got dtype object"], id="object"
    ),
    pytest.param("abc", TypeError, [_NOT_ARRAY, r"got str"], id="str"),
    pytest.param([[1.0, 2.0], [3.0, 4.0]], TypeError, [_NOT_ARRAY, r"got list"], id="list"),
    pytest.param(None, TypeError, [_NOT_ARRAY, r"got NoneType"], id="none"),
    pytest.param({"x": np.ones((2, 2))}, TypeError, [_NOT_ARRAY, r"got dict"], id="dict"),
    pytest.param(1.0, TypeError, [_NOT_ARRAY, r"got float"], id="float"),
]


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(("x", "exc", "parts"), BAD_X)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_bad_x_raises(fn, x, exc, parts, jit):
    if jit:
        # Closing over x makes jit trace with whatever x is; nothing executes
        # before the check fires, so the error is a trace-time one.
        call = jax.jit(lambda: fn(x)).lower
    else:
        call = lambda: fn(x)  # noqa: E731
    with pytest.raises(exc, match=_errmsg(fn, *parts)):
        call()


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("shape", "dtype", "exc", "parts"),
    [
        pytest.param((3,), jnp.float32, ValueError, [_NDIM, r"got shape \(3,\)"], id="1d"),
        pytest.param((), jnp.float32, ValueError, [_NDIM, r"got shape \(\)"], id="0d"),
        pytest.param(
            (3, 2),
            jnp.complex64,
            TypeError,
            [_REAL_X, r"got complex dtype complex64"],
            id="complex",
        ),
    ],
)
def test_bad_traced_x_raises_at_trace_time(fn, shape, dtype, exc, parts):
    with pytest.raises(exc, match=_errmsg(fn, *parts)):
        jax.jit(fn).lower(jax.ShapeDtypeStruct(shape, dtype))


BAD_SCALE = [
    pytest.param(np.array([1.0, 2.0]), ValueError, [_SCALAR, r"got shape \(2,\)"], id="vector"),
    pytest.param(jnp.ones((1, 1)), ValueError, [_SCALAR, r"got shape \(1, 1\)"], id="matrix-jax"),
    pytest.param(1j, TypeError, [_SCALE_NUMBER, r"got complex"], id="complex"),
    pytest.param(
        jnp.asarray(1j, jnp.complex64),
        TypeError,
        [_SCALE_DTYPE, r"got dtype complex64"],
        id="complex-array",
    ),
    pytest.param(
        np.complex128(1.0), TypeError, [_SCALE_DTYPE, r"got dtype complex128"], id="complex-numpy"
    ),
    pytest.param("1.0", TypeError, [_SCALE_NUMBER, r"got str"], id="str"),
    pytest.param(None, TypeError, [_SCALE_NUMBER, r"got NoneType"], id="none"),
    pytest.param([1.0], TypeError, [_SCALE_NUMBER, r"got list"], id="list"),
    pytest.param(True, TypeError, [r"expected scale to be a real number", r"got bool"], id="bool"),
]


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(("scale", "exc", "parts"), BAD_SCALE)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_bad_scale_raises(fn, scale, exc, parts, jit):
    x = jnp.ones((3, 2), jnp.float32)
    if jit:
        call = jax.jit(lambda x: fn(x, scale=scale)).lower
    else:
        call = lambda x: fn(x, scale=scale)  # noqa: E731
    with pytest.raises(exc, match=_errmsg(fn, *parts)):
        call(x)


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("shape", "dtype", "exc", "parts"),
    [
        pytest.param((2,), jnp.float32, ValueError, [_SCALAR, r"got shape \(2,\)"], id="vector"),
        pytest.param((), jnp.complex64, TypeError, [_SCALE_DTYPE, r"complex64"], id="complex"),
    ],
)
def test_bad_traced_scale_raises_at_trace_time(fn, shape, dtype, exc, parts):
    x = jax.ShapeDtypeStruct((3, 2), jnp.float32)
    with pytest.raises(exc, match=_errmsg(fn, *parts)):
        jax.jit(lambda x, s: fn(x, scale=s)).lower(x, jax.ShapeDtypeStruct(shape, dtype))


# --- NaN and Inf ---------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "mode"), [("float32", "x32"), ("float64", "x64")])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (1, 1), (2, 4, 3)], ids=str)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_non_finite_input_gives_non_finite_output(request, dtype, mode, shape, bad, jit):
    request.getfixturevalue(mode)
    fn = trace_expm_gram
    x = jnp.asarray(sample(shape), dtype).at[..., 0, 0].set(bad)
    f = jax.jit(fn) if jit else fn
    vg = jax.value_and_grad(lambda x: jnp.sum(fn(x)))
    if jit:
        vg = jax.jit(vg)
    # Nothing raises; every matrix of the batch is poisoned, so every output is.
    value = np.asarray(f(x))
    vg_value, grad = vg(x)
    assert value.shape == shape[:-2]
    assert not np.any(np.isfinite(value)), value
    assert not np.isfinite(vg_value), vg_value
    assert not np.all(np.isfinite(np.asarray(grad))), grad


# --- empty dimensions ----------------------------------------------------------


def _empty_value(fn, n, m):
    """n - m zero eigenvalues when m = 0, none at all when n = 0."""
    count = max(n - m, 0)
    if fn is trace_expm_gram:
        return float(count)
    return math.log(count) if count else -math.inf


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("shape", [(4, 0), (0, 3), (0, 0), (2, 5, 0), (3, 0, 2)], ids=str)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_empty_matrix(x32, fn, shape, jit):
    x = jnp.zeros(shape, jnp.float32)
    s = jnp.asarray(0.7, jnp.float32)
    f = lambda x, s: fn(x, scale=s)  # noqa: E731
    vg = jax.value_and_grad(lambda x, s: jnp.sum(f(x, s)), argnums=(0, 1))
    if jit:
        f, vg = jax.jit(f), jax.jit(vg)
    value = f(x, s)
    _, (gx, gs) = vg(x, s)
    want = np.full(shape[:-2], _empty_value(fn, *shape[-2:]), np.float32)
    assert value.shape == shape[:-2]
    assert value.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(value), want)
    assert gx.shape == shape
    assert gx.dtype == np.float32
    assert not np.any(np.asarray(gx))
    assert gs == 0


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_zero_size_batch(x32, fn, jit):
    x = jnp.zeros((0, 3, 2), jnp.float32)
    f = jax.jit(fn) if jit else fn
    grad = jax.grad(lambda x: jnp.sum(fn(x)))
    if jit:
        grad = jax.jit(grad)
    value = f(x)
    assert value.shape == (0,)
    assert value.dtype == np.float32
    assert grad(x).shape == (0, 3, 2)
    assert jax.vmap(fn)(x).shape == (0,)

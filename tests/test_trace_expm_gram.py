"""Values and gradients of trace_expm_gram against independent references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxtrace import trace_expm_gram
from tests.reference import (
    assert_close,
    expm_condition,
    grad_scale,
    mp_dscale,
    mp_trace_expm_gram,
    sample,
)

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

# Relative accuracy demanded of every entry, per dtype. The inputs below are
# well conditioned, so these are a few ulps times the size of s * mu.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# Absolute floor of a gradient entry, per dtype, in units of its natural size
# grad_scale * expm_condition (tests/reference.py): eigh's backward error and
# the products are a few eps of that. Measured <= 2.4 eps (f32 and f64).
ATOL = {np.dtype(np.float32): 8 * 2.0**-23, np.dtype(np.float64): 8 * 2.0**-52}

# Tall, wide, square and the scalar case.
SHAPES = [(5, 3), (3, 5), (4, 4), (1, 1)]
SCALES = [1.0, 0.3, 0.0, -0.7, 2.5]


def _ids(shape):
    return "x".join(map(str, shape))


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """The test's dtype, with JAX's 64-bit mode switched to match."""
    request.getfixturevalue("x64" if request.param == "float64" else "x32")
    return np.dtype(request.param)


def _f(x, s):
    return trace_expm_gram(x, scale=s)


def _grad_atol(x, scale, dtype):
    """The absolute floor of each gradient entry (see ATOL)."""
    x = np.asarray(x, np.float64)
    size = grad_scale(x, scale) * expm_condition(x, scale)[..., None, None]
    return ATOL[np.dtype(dtype)] * size


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_value_and_grads_match_mpmath(dtype, shape, scale):
    x = jnp.asarray(sample(shape), dtype)
    # The references see exactly the (rounded) matrix the operator sees.
    x_ref = np.asarray(x, np.float64)
    want_value, want_grad = mp_trace_expm_gram(x_ref, scale)
    want_dscale = mp_dscale(x_ref, scale)

    # Plain evaluation (eigenvalues only, Python scale) and the differentiated
    # path (array scale) are separate code paths: check both.
    value = trace_expm_gram(x, scale=scale)
    vg_value, (grad, dscale) = jax.value_and_grad(_f, argnums=(0, 1))(x, jnp.asarray(scale, dtype))

    assert value.dtype == vg_value.dtype == grad.dtype == dscale.dtype == dtype
    assert value.shape == vg_value.shape == dscale.shape == ()
    assert grad.shape == shape
    rtol = RTOL[dtype]
    assert_close(value, want_value, rtol=rtol, what="value")
    assert_close(vg_value, want_value, rtol=rtol, what="value (value_and_grad)")
    assert_close(grad, want_grad, rtol=rtol, atol=_grad_atol(x_ref, scale, dtype), what="grad")
    # A sum of mu_i e^(s mu_i) >= 0: relative accuracy is the natural measure.
    assert_close(dscale, want_dscale, rtol=rtol, what="d/dscale")


@pytest.mark.parametrize("scale", [1.0, 0.0, -0.7, 2.5])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_grad_scale_matches_central_differences(x64, shape, scale):
    x = jnp.asarray(sample(shape), jnp.float64)
    h = 1e-5
    # Central differences: truncation ~ h^2 |f'''| and rounding ~ eps |f| / h,
    # both ~1e-10 relative here; 1e-8 leaves margin without hiding a wrong rule.
    fd = (_f(x, scale + h) - _f(x, scale - h)) / (2 * h)
    got = jax.grad(_f, argnums=1)(x, jnp.asarray(scale, jnp.float64))
    assert_close(got, fd, rtol=1e-8)


@pytest.mark.parametrize("shape", [*SHAPES, (2, 3, 2)], ids=_ids)
def test_check_grads(x64, shape):
    x = jnp.asarray(sample(shape), jnp.float64)
    s = jnp.asarray(0.7, jnp.float64)
    # jit: check_grads evaluates the function many times; one compilation each.
    check_grads(jax.jit(lambda x, s: jnp.sum(_f(x, s))), (x, s), order=1, modes=["rev"])
    check_grads(jax.jit(lambda x: jnp.sum(_f(x, -0.4))), (x,), order=1, modes=["rev"])


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)], ids=_ids)
def test_batch_matches_one_by_one(dtype, shape):
    xs = jnp.asarray(sample((2, 3, *shape)), dtype)
    s = jnp.asarray(0.6, dtype)

    def total(x, s):
        return jnp.sum(_f(x, s))

    value = _f(xs, s)
    gx, gs = jax.grad(total, argnums=(0, 1))(xs, s)
    assert value.shape == (2, 3)
    assert gx.shape == xs.shape

    # One compiled single-matrix program (jit agreement is tested separately).
    one = jax.jit(jax.value_and_grad(_f, argnums=(0, 1)))
    rtol = RTOL[dtype]
    want_gs = 0.0
    for i in range(2):
        for j in range(3):
            vi, (gxi, gsi) = one(xs[i, j], s)
            assert_close(value[i, j], vi, rtol=rtol, what=f"value {i, j}")
            atol = _grad_atol(xs[i, j], float(s), dtype)
            assert_close(gx[i, j], gxi, rtol=rtol, atol=atol, what=f"grad {i, j}")
            want_gs += gsi
    # d/ds of the summed batch is the sum of the per-matrix derivatives.
    assert_close(gs, want_gs, rtol=rtol, what="d/dscale")


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)], ids=_ids)
def test_jit_matches_eager(dtype, shape):
    x = jnp.asarray(sample(shape), dtype)
    s = jnp.asarray(-0.7, dtype)
    vg = jax.value_and_grad(_f, argnums=(0, 1))
    eager_value, (eager_gx, eager_gs) = vg(x, s)
    value, (gx, gs) = jax.jit(vg)(x, s)
    rtol = RTOL[dtype]
    assert_close(jax.jit(_f)(x, s), eager_value, rtol=rtol, what="jit value")
    assert_close(value, eager_value, rtol=rtol, what="jit value_and_grad value")
    atol = _grad_atol(x, -0.7, dtype)
    assert_close(gx, eager_gx, rtol=rtol, atol=atol, what="jit grad")
    assert_close(gs, eager_gs, rtol=rtol, what="jit d/dscale")
    assert value.dtype == gx.dtype == gs.dtype == dtype


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (1, 1)], ids=_ids)
def test_vmap_matches_one_by_one(dtype, shape):
    xs = jnp.asarray(sample((4, *shape)), dtype)
    scales = jnp.asarray([1.0, 0.3, 0.0, -0.7], dtype)

    @jax.jit  # one compilation for all the mapped variants
    def mapped(xs, scales):
        # Mapping over x (scale fixed), over both, and over the scale (x fixed).
        return (
            jax.vmap(_f, in_axes=(0, None))(xs, scales[0]),
            jax.vmap(jax.grad(_f), in_axes=(0, None))(xs, scales[0]),
            jax.vmap(_f)(xs, scales),
            *jax.vmap(jax.grad(_f, argnums=(0, 1)))(xs, scales),
            jax.vmap(_f, in_axes=(None, 0))(xs[0], scales),
            jax.vmap(jax.grad(_f, argnums=1), in_axes=(None, 0))(xs[0], scales),
        )

    values, grads, pair_values, pair_gx, pair_gs, scale_values, scale_grads = mapped(xs, scales)

    # One compiled single-matrix program (jit agreement is tested separately).
    one = jax.jit(jax.value_and_grad(_f, argnums=(0, 1)))
    rtol = RTOL[dtype]
    for i in range(4):
        v, (gx, _) = one(xs[i], scales[0])
        assert_close(values[i], v, rtol=rtol, what=f"value {i}")
        atol = _grad_atol(xs[i], float(scales[0]), dtype)
        assert_close(grads[i], gx, rtol=rtol, atol=atol, what=f"grad {i}")
        v, (gx, gs) = one(xs[i], scales[i])
        assert_close(pair_values[i], v, rtol=rtol, what=f"pair value {i}")
        atol = _grad_atol(xs[i], float(scales[i]), dtype)
        assert_close(pair_gx[i], gx, rtol=rtol, atol=atol, what=f"pair grad {i}")
        assert_close(pair_gs[i], gs, rtol=rtol, what=f"pair d/dscale {i}")
        v, (_, gs) = one(xs[0], scales[i])
        assert_close(scale_values[i], v, rtol=rtol, what=f"scale value {i}")
        assert_close(scale_grads[i], gs, rtol=rtol, what=f"scale d/dscale {i}")


def test_value_and_grad_agrees_with_separate_calls(x64):
    x = jnp.asarray(sample((5, 3)), jnp.float64)
    s = jnp.asarray(0.3, jnp.float64)
    value, (gx, gs) = jax.value_and_grad(_f, argnums=(0, 1))(x, s)
    assert_close(value, _f(x, s), rtol=1e-14, what="value")
    atol = _grad_atol(x, 0.3, np.float64)
    assert_close(gx, jax.grad(_f)(x, s), rtol=1e-14, atol=atol, what="grad")
    assert_close(gs, jax.grad(_f, argnums=1)(x, s), rtol=1e-14, what="d/dscale")
    # And a closed-form check that cannot be satisfied by agreeing wrongly:
    # for s = 0 the value is n and the gradient wrt x vanishes.
    v0, g0 = jax.value_and_grad(trace_expm_gram)(x, scale=0.0)
    assert v0 == 5.0
    assert not np.any(np.asarray(g0))


def test_diagonal_example_closed_form(x64):
    """X with orthogonal columns: eigenvalues are the squared column norms."""
    x = jnp.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    s = 0.5
    value, grad = jax.value_and_grad(trace_expm_gram)(x, scale=s)
    want_grad = 2 * s * np.array([[np.exp(s), 0.0], [0.0, 2 * np.exp(4 * s)], [0.0, 0.0]])
    assert_close(value, np.exp(s) + np.exp(4 * s) + 1, rtol=1e-15, what="value")
    # A diagonal Gram is decomposed exactly, so the zeros of the gradient are exact.
    assert_close(grad, want_grad, rtol=1e-15, what="grad")
    # The wide transpose has the same nonzero spectrum but no extra zero eigenvalue.
    want_wide = np.exp(s) + np.exp(4 * s)
    assert_close(trace_expm_gram(x.T, scale=s), want_wide, rtol=1e-15, what="wide value")


@st.composite
def _cases(draw):
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 6))
    batch = draw(st.sampled_from([(), (2,)]))
    seed = draw(st.integers(0, 2**32 - 1))
    # XLA:CPU flushes subnormal results to zero, so scales so tiny that
    # 2 s X underflows would only test that; they are left out.
    scale = draw(st.floats(-1.0, 1.0).filter(lambda s: s == 0 or abs(s) >= 1e-200))
    x = 0.5 * np.random.default_rng(seed).standard_normal((*batch, n, m))
    return x, scale


# One compiled program per shape keeps each example cheap.
_jit_value_and_grad = jax.jit(jax.value_and_grad(lambda x, s: jnp.sum(_f(x, s))))
_jit_value = jax.jit(_f)


# The x64 fixture only switches a flag for the whole test; sharing it between
# examples is intended.
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=_cases())
def test_property_matches_mpmath(x64, case):
    x, scale = case
    values = np.asarray(_jit_value(jnp.asarray(x), scale))
    _, grads = _jit_value_and_grad(jnp.asarray(x), scale)
    grads = np.asarray(grads)
    assert values.shape == x.shape[:-2]
    assert grads.shape == x.shape

    flat_x = x.reshape(-1, *x.shape[-2:])
    flat_v = values.reshape(-1)
    flat_g = grads.reshape(flat_x.shape)
    rtol = RTOL[np.dtype(np.float64)]
    for xi, vi, gi in zip(flat_x, flat_v, flat_g, strict=True):
        want_value, want_grad = mp_trace_expm_gram(xi, scale)
        assert_close(vi, want_value, rtol=rtol, what="value")
        atol = _grad_atol(xi, scale, np.float64)
        assert_close(gi, want_grad, rtol=rtol, atol=atol, what="grad")

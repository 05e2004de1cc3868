"""Floating dtypes narrower than 32 bits: computed in float32, returned in their own dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from tests.reference import sample

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

FUNCS = [trace_expm_gram, log_trace_expm_gram]
FUNC_IDS = [f.__name__ for f in FUNCS]

# Every float8 and float4 dtype jnp exposes (XLA has no float6 arithmetic at all).
NARROW = sorted(n for n in dir(jnp) if n.startswith(("float8_", "float4_")))


def test_every_float8_variant_is_covered():
    assert {"float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float4_e2m1fn"} <= set(NARROW)


def _assert_rounded_from(got, want, dtype):
    """``got`` (dtype) is ``want`` (float32) rounded once: within one ulp, elementwise."""
    assert got.dtype == dtype
    info = jnp.finfo(dtype)
    np.testing.assert_allclose(
        np.asarray(got, np.float32),
        np.asarray(want, np.float32),
        rtol=float(info.eps),
        atol=float(info.smallest_normal),
    )


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("name", NARROW)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_narrow_floats_computed_in_float32(x32, fn, name, jit):
    dtype = jnp.dtype(getattr(jnp, name))
    # Positive entries keep values and gradients positive (float8_e8m0fnu has no
    # sign) and below float4_e2m1fn's largest value, 6.
    x = jnp.asarray(np.abs(sample((3, 2), sigma=0.4)), dtype)
    program = jax.value_and_grad(lambda x: fn(x, scale=0.5))
    value, grad = (jax.jit(program) if jit else program)(x)
    want_value, want_grad = program(x.astype(jnp.float32))
    assert value.shape == () and grad.shape == x.shape
    _assert_rounded_from(value, want_value, dtype)
    _assert_rounded_from(grad, want_grad, dtype)

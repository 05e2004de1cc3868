"""Settings shared by every product of the library."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Full-precision products: TPUs and recent GPUs would otherwise round float32
# operands to bfloat16/TF32, which an exact operator cannot afford.
PRECISION = lax.Precision.HIGHEST


def repaired(v: jax.Array, bounded: jax.Array) -> jax.Array:
    """``bounded`` as the value, the derivatives of ``v``.

    Exact bounds repair rounding in values only: derivatives stay those of the
    smooth function (``jnp.minimum`` would halve them where a bound is attained).
    """
    # Where nothing changes, v itself: v + (b - v) would turn inf into NaN.
    return jnp.where(bounded == v, v, v + lax.stop_gradient(bounded - v))


def below(x: float, dtype) -> np.ndarray:
    """The real number ``x`` rounded down in ``dtype``: a bound rounding cannot cross."""
    v = np.asarray(x, dtype)
    return np.nextafter(v, np.asarray(-np.inf, dtype)) if float(v) > x else v


def log_below(k: int, dtype) -> np.ndarray:
    """log k rounded down in ``dtype``."""
    return below(math.log(k), dtype)

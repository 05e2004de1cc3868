"""The two products of ``x`` on the side of its smaller Gram matrix, unsharded.

For a tall ``x`` (n >= m) the small Gram is ``x.T @ x`` (m x m) and a k x k
matrix ``w`` acts as ``x @ w``; for a wide one (n < m) they are ``x @ x.T``
(n x n) and ``w @ x``. Written as ``einsum`` subscripts, so no transpose of
``x`` is ever materialised and leading batch dimensions pass through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Full-precision products: TPUs and recent GPUs would otherwise round float32
# operands to bfloat16/TF32, which an exact operator cannot afford.
PRECISION = lax.Precision.HIGHEST

_CROSS = {False: "...ji,...jk->...ik", True: "...ij,...kj->...ik"}


def is_wide(x: jax.Array) -> bool:
    return x.shape[-2] < x.shape[-1]


def cross_product(a: jax.Array, b: jax.Array, wide: bool, **kwargs) -> jax.Array:
    """``a.T @ b`` (tall) or ``a @ b.T`` (wide): the k x k product of two n x m arrays."""
    return jnp.einsum(_CROSS[wide], a, b, precision=PRECISION, **kwargs)


def weight_product(x: jax.Array, w: jax.Array, wide: bool, **kwargs) -> jax.Array:
    """``x @ w`` (tall) or ``w @ x`` (wide) for a k x k matrix ``w``."""
    if wide:
        return jnp.einsum("...ij,...jm->...im", w, x, precision=PRECISION, **kwargs)
    return jnp.einsum("...ni,...ij->...nj", x, w, precision=PRECISION, **kwargs)

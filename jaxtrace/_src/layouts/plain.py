"""The products of ``x`` on the side of its smaller Gram matrix, unsharded.

For a tall ``x`` (n >= m) the small Gram is ``x.T @ x`` (m x m) and a k x k
matrix ``w`` acts as ``x @ w``; for a wide one (n < m) they are ``x @ x.T``
(n x n) and ``w @ x``. Written as ``einsum`` subscripts, so no transpose of
``x`` is ever materialised and leading batch dimensions pass through (``w``
may carry more of them than ``x``: ``x`` is then not broadcast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrace._src.numerics import PRECISION

_CROSS = {False: "...ji,...jk->...ik", True: "...ij,...kj->...ik"}


def is_wide(x: jax.Array) -> bool:
    return x.shape[-2] < x.shape[-1]


def cross(a: jax.Array, b: jax.Array, wide: bool, **kwargs) -> jax.Array:
    """``a.T @ b`` (tall) or ``a @ b.T`` (wide): the k x k product of two n x m arrays."""
    return jnp.einsum(_CROSS[wide], a, b, precision=PRECISION, **kwargs)


def gram(x: jax.Array, wide: bool, **kwargs) -> jax.Array:
    """The smaller Gram matrix, ``x.T @ x`` (tall) or ``x @ x.T`` (wide)."""
    return cross(x, x, wide, **kwargs)


def weight(x: jax.Array, w: jax.Array, wide: bool, **kwargs) -> jax.Array:
    """``x @ w`` (tall) or ``w @ x`` (wide) for a k x k matrix ``w``."""
    if wide:
        return jnp.einsum("...ij,...jm->...im", w, x, precision=PRECISION, **kwargs)
    return jnp.einsum("...ni,...ij->...nj", x, w, precision=PRECISION, **kwargs)

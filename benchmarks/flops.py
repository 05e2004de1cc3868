"""Analytic flop counts of one value-and-gradient call, for reasoning about GPUs and TPUs.

The model counts 2 flops per multiply-add of dense products, as XLA runs them
(no symmetry savings), and ignores elementwise work; per matrix of shape n x m,
k = min(n, m):

* jaxtrace, either method: the k x k Gram (2nmk) and the gradient's ``x @ W`` (2nmk).
* method ``"expm"``: (p + q) k x k products of 2k^3, p = 5 in float32 (Taylor
  degree 12: 2 powers, 3 Horner steps) and 6 in float64 (degree 16), q squarings
  counted on the benchmark's input (``jaxtrace._src.taylor._squarings``; a batch
  runs its largest q). The gradient reuses the forward pass's exp(sG) / tr.
* method ``"eigh"``: one eigh with eigenvectors, estimated at 9k^3 (Golub and
  Van Loan's count for the symmetric QR algorithm; LAPACK's syevd, 4/3 k^3 to
  tridiagonalise, divide and conquer, 2k^3 to back-transform, is often
  cheaper), and ``V diag(w) V^T`` (2k^3).
* ``peer_card``: the n x n Gram (2n^2 m) and ``jax.scipy.linalg.expm``: a Padé
  approximant of 2 to 6 n x n products (its order from ||A||_1), one LU solve
  (2/3 n^3 + 2n^3) and s squarings (2n^3 each); vmapped over a batch, every
  Padé branch and all 16 squarings run (``switch`` and ``cond`` become
  ``select``). Autodiff's backward pass costs about twice the forward: 3x in all.
* ``peer_gram``: the same on the k x k Gram; ``peer_eigvalsh``: the Gram, an
  eigh with eigenvectors (the derivative of eigvalsh needs them), ``V diag V^T``
  and autodiff's two products for the Gram's backward pass (4nmk).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from benchmarks.cases import make_input
from jaxtrace._src import taylor

TAYLOR_PRODUCTS = {"float32": 5, "float64": 6}
EIGH = 9.0  # k^3 multiples, eigenvalues and eigenvectors
# jax.scipy.linalg.expm: ||A||_1 thresholds of the Padé orders, their products, theta.
PADE = {
    "float32": ((0.4258730016922831, 1.880152677804762), (2, 3, 4), 3.925724783138660),
    "float64": (
        (0.01495585217958292, 0.2539398330063230, 0.9504178996162932, 2.097847961257068),
        (2, 3, 4, 5, 6),
        5.371920351148152,
    ),
}
MAX_SQUARINGS = 16  # jax.scipy.linalg.expm's default


def _expm_flops(a: np.ndarray, dtype: str) -> tuple[float, int]:
    """Flops of jax.scipy.linalg.expm's forward pass on the batch ``a`` (..., d, d), and s."""
    conds, products, theta = PADE[dtype]
    d, batch = a.shape[-1], math.prod(a.shape[:-2])
    if batch > 1:  # vmapped: every branch, every squaring
        return batch * (sum(products) + MAX_SQUARINGS + 4 / 3) * 2 * d**3, MAX_SQUARINGS
    norm = float(np.abs(a).sum(axis=-2).max())
    s = max(0, math.floor(math.log2(norm / theta))) if norm > 0 else 0
    p = products[int(np.digitize(norm, conds))]
    return (p + s + 4 / 3) * 2.0 * d**3, s


def value_and_grad_flops(shape: tuple[int, ...], dtype: str, seed: int) -> dict[str, Any]:
    """The model's flops of one value-and-gradient call on the benchmark's input.

    Returns:
      ``{"shape", "dtype", "k", "q", "card_squarings", "expm_per_squaring",
      "flops": {program: flops}}``, flops for the whole batch.
    """
    x = make_input(shape, dtype, seed).astype(np.float64)
    n, m = shape[-2:]
    k, batch = min(n, m), math.prod(shape[:-2])
    small = np.swapaxes(x, -1, -2) @ x if n >= m else x @ np.swapaxes(x, -1, -2)
    q = int(np.max(taylor._squarings(jnp.asarray(small, dtype=dtype))))
    gram, kk = 2.0 * n * m * k, 2.0 * k**3
    card, card_s = _expm_flops(x @ np.swapaxes(x, -1, -2), dtype)
    small_expm, _ = _expm_flops(small, dtype)
    per_matrix = {
        "jaxtrace_expm": 2 * gram + (TAYLOR_PRODUCTS[dtype] + q) * kk,
        "jaxtrace_eigh": 2 * gram + EIGH * k**3 + kk,
        "peer_card": 3 * (2.0 * n * n * m + card / batch),
        "peer_gram": 3 * (gram + small_expm / batch),
        "peer_eigvalsh": 3 * gram + EIGH * k**3 + kk,
    }
    return {
        "shape": list(shape),
        "dtype": dtype,
        "k": k,
        "q": q,
        "card_squarings": card_s,
        "expm_per_squaring": batch * kk,
        "flops": {name: batch * f for name, f in per_matrix.items()},
    }

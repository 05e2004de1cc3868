"""The public functions: tr(expm(scale X X^T)), tr(expm(A)) and their logarithms."""

from __future__ import annotations

from typing import Any

import jax

from jaxtrace._src import square
from jaxtrace._src.methods import choose
from jaxtrace._src.operator import evaluate
from jaxtrace._src.scalars import LOG_TRACE, TRACE, ScalarFunction
from jaxtrace._src.validation import (
    gram_side,
    prepare_method,
    prepare_scale,
    prepare_square,
    prepare_x,
)


def _batch(x: jax.Array) -> int:
    """The number of matrices; symbolic batch dimensions count as large."""
    n = 1
    for d in x.shape[:-2]:
        n *= d if isinstance(d, int) else 1 << 30
    return n


# One compiled program per shape, dtype, function and method, also when called
# eagerly (op by op, the kernels' many small operations would each dispatch).
_evaluate = jax.jit(evaluate, static_argnums=(2, 3))
_evaluate_square = jax.jit(square.evaluate, static_argnums=(1,))


def _run(fn: ScalarFunction, name: str, x: Any, scale: Any, method: str) -> jax.Array:
    x, out_dtype = prepare_x(name, x)
    wide = gram_side(name, x)
    s = prepare_scale(name, scale, x.dtype)
    k = x.shape[-2] if wide else x.shape[-1]
    chosen = choose(prepare_method(name, method), k=k, batch=_batch(x), dtype=x.dtype)
    return _evaluate(x, s, fn, chosen).astype(out_dtype)


def trace_expm_gram(x: Any, *, scale: Any = 1.0, method: str = "auto") -> jax.Array:
    r"""Trace of the matrix exponential of a scaled Gram matrix.

    .. math::

        f(X) = \operatorname{tr} \exp(s\,X X^\top)
             = \sum_{i=1}^{k} e^{s\mu_i} + \max(n - m, 0),

    where :math:`\mu_i` are the eigenvalues of the smaller Gram matrix
    (:math:`X^\top X` if :math:`n \ge m`, else :math:`X X^\top`), of size
    :math:`k = \min(n, m)`. The gradient is

    .. math::

        \nabla_X f = 2s\,\exp(s\,XX^\top)\,X = 2s\,X \exp(s\,X^\top X),
        \qquad \frac{\partial f}{\partial s} = \sum_i \mu_i e^{s\mu_i},

    formed from the same eigendecomposition; the larger Gram matrix is never
    built. Plain evaluation skips the gradient's products; it still runs one
    ``eigh``, which computes the eigenvectors too. Second derivatives
    (``jax.hessian``, ``jax.jacrev(jax.grad(f))``, Hessian-vector products via
    ``jax.jvp(jax.grad(f), ...)``) use the Daleckii--Krein formula and stay
    exact and finite at repeated eigenvalues. ``jax.jvp`` of the function itself
    is not available (it is a ``jax.custom_vjp``).

    The value overflows once the largest eigenvalue of :math:`s XX^\top`
    exceeds about 88.7 in float32 (709.8 in float64); use
    :func:`log_trace_expm_gram` there.

    Args:
      x: real array of shape ``(..., n, m)``; leading dimensions are a batch.
        float32 and float64 are kept; integer and bool arrays are promoted to
        JAX's default float; floating dtypes narrower than 32 bits (float16,
        bfloat16, float8, float4) are computed in float32 and returned in
        their own dtype.
      scale: real scalar :math:`s` (Python number or scalar array), any sign.
        Differentiable when it is an array.
      method: how :math:`\exp(sG)` of the k x k Gram is evaluated: ``"eigh"``
        (one symmetric eigendecomposition), ``"expm"`` (matrix products only:
        scaling, Taylor and squaring; no eigensolver, factorisation or
        callback) or ``"auto"`` (a choice made at trace time from static facts).

    Returns:
      Array of shape ``(...)`` in the (promoted) dtype of ``x``.

    Raises:
      TypeError: if ``x`` is not an array, or has a complex or non-numeric
        dtype, or if ``scale`` is not a real number or real scalar array.
      ValueError: if ``x.ndim < 2``, ``scale`` is not a scalar or ``method`` is
        not one of the above, or, under
        ``jax.export`` shape polymorphism, if the symbolic shape leaves
        undecided which Gram is smaller or makes k = min(n, m) symbolic.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxtrace import trace_expm_gram
      >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
      >>> print(f"{trace_expm_gram(x, scale=0.5):.5f}")  # e^0.5 + e^2 + 1
      10.03778
      >>> g = jax.grad(trace_expm_gram)(x)  # 2 X expm(X^T X): 2e and 4e^4
      >>> [[round(float(v), 3) for v in row] for row in g]
      [[5.437, 0.0], [0.0, 218.393], [0.0, 0.0]]
    """
    return _run(TRACE, "trace_expm_gram", x, scale, method)


def log_trace_expm_gram(x: Any, *, scale: Any = 1.0, method: str = "auto") -> jax.Array:
    r"""Logarithm of :func:`trace_expm_gram`, free of overflow.

    .. math::

        L(X) = \log \operatorname{tr} \exp(s\,XX^\top)
             = \operatorname{logsumexp}\bigl(s\mu_1, \dots, s\mu_k,
               \underbrace{0, \dots, 0}_{\max(n-m,0)}\bigr),

    with gradients

    .. math::

        \nabla_X L = 2s\,X\,V \operatorname{diag}(w) V^\top,
        \qquad \frac{\partial L}{\partial s} = \sum_i \mu_i w_i,
        \qquad w_i = e^{s\mu_i - L},

    where :math:`X^\top X = V \operatorname{diag}(\mu) V^\top` (tall case;
    :math:`XX^\top` for wide ``x``). The weights :math:`w` are softmax weights
    and never exceed 1, so value and gradient are finite for every finite
    ``x`` whose largest eigenvalue :math:`s\mu_{\max}` is representable. For
    large :math:`s\mu_{\max}`, :math:`L \approx s\,\sigma_{\max}(X)^2`: a
    smooth surrogate of the squared spectral norm. Shapes, dtypes, ``scale``
    and second derivatives behave as in :func:`trace_expm_gram`.

    Args:
      x: real array of shape ``(..., n, m)``; leading dimensions are a batch.
      scale: real scalar :math:`s` (Python number or scalar array), any sign.
      method: as :func:`trace_expm_gram`.

    Returns:
      Array of shape ``(...)`` in the (promoted) dtype of ``x``. An empty
      ``(0, m)`` matrix gives ``-inf`` (the log of an empty trace).

    Raises:
      TypeError: as :func:`trace_expm_gram`.
      ValueError: as :func:`trace_expm_gram`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxtrace import log_trace_expm_gram
      >>> x = jnp.array([[30.0, 0.0], [0.0, 1.0]])
      >>> log_trace_expm_gram(x)  # log(e^900 + e^1): the plain trace overflows
      Array(900., dtype=float32)
    """
    return _run(LOG_TRACE, "log_trace_expm_gram", x, scale, method)


def _run_square(fn: ScalarFunction, name: str, a: Any) -> jax.Array:
    a, out_dtype = prepare_square(name, a)
    return _evaluate_square(a, fn).astype(out_dtype)


def trace_expm(a: Any) -> jax.Array:
    r"""Trace of the matrix exponential of real square matrices.

    .. math::

        f(A) = \operatorname{tr} e^{A}, \qquad \nabla_A f = e^{A^\top},

    for any real :math:`A`, symmetric or not (e.g. the NOTEARS acyclicity
    constraint :math:`\operatorname{tr} e^{W \circ W} - d` of causal discovery).
    :math:`e^{A}` comes from matrix products alone (scaling, a Taylor
    polynomial and squarings; no eigensolver, factorisation, solve or
    callback), and the gradient is formed from the same :math:`e^{A}`: nothing is
    differentiated through the exponential. Second derivatives
    (``jax.hessian``, Hessian-vector products via ``jax.jvp(jax.grad(f), ...)``,
    ``jax.grad`` of ``jax.grad``) go through the Fréchet derivative of
    :math:`e^{A}` and are exact. ``jax.jvp`` of the function itself is not
    available (it is a ``jax.custom_vjp``).

    The value overflows once :math:`\operatorname{tr} e^{A}` exceeds the
    dtype's range (an eigenvalue above about 88.7 in float32, 709.8 in
    float64); use :func:`log_trace_expm` there.

    Args:
      a: real array of shape ``(..., d, d)``; leading dimensions are a batch.
        Dtypes as :func:`trace_expm_gram`'s ``x``: float32 and float64 are
        kept, integer and bool arrays promoted to JAX's default float, narrower
        floats computed in float32 and returned in their own dtype.

    Returns:
      Array of shape ``(...)`` in the (promoted) dtype of ``a``; 0 for
      ``d = 0``. NaN or inf in a matrix gives NaN for it.

    Raises:
      TypeError: if ``a`` is not an array, or has a complex or non-numeric dtype.
      ValueError: if ``a.ndim < 2``, its last two dimensions differ, or (under
        ``jax.export`` shape polymorphism) d is symbolic.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxtrace import trace_expm
      >>> w = jnp.array([[0.0, 1.0], [0.0, 0.0]])  # a DAG: tr exp(W o W) = d
      >>> print(f"{trace_expm(w * w) - 2:.5f}")
      0.00000
      >>> jax.grad(trace_expm)(w)  # exp(W)^T = [[1, 0], [1, 1]]
      Array([[1., 0.],
             [1., 1.]], dtype=float32)
    """
    return _run_square(TRACE, "trace_expm", a)


def log_trace_expm(a: Any) -> jax.Array:
    r"""Logarithm of :func:`trace_expm`, free of overflow.

    .. math::

        L(A) = \log \operatorname{tr} e^{A}, \qquad
        \nabla_A L = e^{A^\top} / \operatorname{tr} e^{A},

    computed as :math:`\ell + \log \operatorname{tr} E` from
    :math:`e^{A} = e^{\ell} E`, :math:`\|E\|_F = 1`, so that no
    :math:`e^{\lambda}` is ever formed: finite for every finite ``a`` whose
    trace exponential is positive. That includes every entrywise non-negative
    and every symmetric :math:`A`. Elsewhere :math:`\operatorname{tr} e^{A}`
    can be zero or negative (a rotation generator by :math:`\pi`,
    ``[[0, -pi], [pi, 0]]``, gives :math:`-2`), and the result is ``-inf``
    or NaN. Shapes, dtypes and derivatives behave as in :func:`trace_expm`.

    Args:
      a: real array of shape ``(..., d, d)``; leading dimensions are a batch.

    Returns:
      Array of shape ``(...)`` in the (promoted) dtype of ``a``; ``-inf`` for
      ``d = 0`` (the log of an empty trace).

    Raises:
      TypeError: as :func:`trace_expm`.
      ValueError: as :func:`trace_expm`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxtrace import log_trace_expm
      >>> a = jnp.array([[1000.0, 1.0], [0.0, 0.0]])
      >>> print(f"{log_trace_expm(a):.3f}")  # log(e^1000 + 1): the plain trace overflows
      1000.000
    """
    return _run_square(LOG_TRACE, "log_trace_expm", a)

r"""Trace-normalised exponential of symmetric matrices from matrix products only.

For a batch of real symmetric :math:`A` (``(..., k, k)``) this module computes

.. math::

    \ell = \log \operatorname{tr} e^{A}, \qquad \hat E = e^{A} / \operatorname{tr} e^{A},

with no eigensolver, factorisation or solve: only matrix products, elementwise
operations, reductions and one loop over the squarings (a ``lax.while_loop``,
or a ``lax.scan`` where reverse mode must transpose the derivative), so that it
lowers to plain ``dot_general`` on every backend and can be differentiated in
forward mode to any order.

Algorithm (all steps per matrix of the batch):

1. **Shift.** :math:`c = \operatorname{tr}(A)/k`, :math:`B = A - cI`, so
   :math:`\ell = c + \log\operatorname{tr} e^{B}` and :math:`\hat E` is unchanged.
   Any :math:`c` would be exact; the mean makes :math:`\operatorname{tr} B = 0`,
   hence :math:`\lambda_{\max}(B) \ge 0`, which the error analysis below uses.
2. **Scaling.** :math:`B' = 2^{-e} B` with :math:`2^{e-1} \le \max|B_{ij}| <
   2^{e}` (:math:`e \ge 0`: large matrices are scaled down, small ones left
   alone), and its powers :math:`P_j = B'^j`, :math:`j \le s` (the block size
   of step 3). For symmetric :math:`B`,
   :math:`\|P_s\|_F = (\sum_i \lambda_i^{2s})^{1/2}`, so
   :math:`\eta = 2^{e} \|P_s\|_F^{1/s} \ge \rho(B)` and overestimates it by
   at most :math:`k^{1/(2s)}`. The number of squarings is
   :math:`q = \max(0, \lceil \log_2(\eta/\theta_m) \rceil)`, and
   :math:`Y_j = Y^j = 2^{j(e-q)} P_j` for :math:`Y = B/2^q`: every scaling is a
   power of two, so :math:`Y` is :math:`B/2^q` to the last bit and no product is
   spent on anything but the polynomial.
3. **Taylor polynomial** :math:`T = \sum_{j \le m} Y^j/j!` by Paterson--Stockmeyer
   in blocks of :math:`s` (:math:`Y^2, \ldots, Y^s` and Horner in :math:`Y^s`;
   :math:`s = 3` in ``float32``, 4 in ``float64``, see :data:`_BLOCK`). Because
   :math:`Y` is symmetric its error is the scalar error at each eigenvalue
   :math:`y \in [-\theta_m, \theta_m]`; see :data:`_THETA` for the choice of
   :math:`\theta_m`. :math:`m` is even, so :math:`T_m(y) > 0`: :math:`T` is
   positive definite.
4. **Squaring with trace renormalisation.** :math:`E_0 = T/t_0`,
   :math:`t_0 = \operatorname{tr} T`, and for :math:`j = 1..q`:
   :math:`t_j = \operatorname{tr}(E_{j-1}^2)`, :math:`E_j = E_{j-1}^2/t_j`. By
   induction :math:`T^{2^j} = E_j\, t_0^{2^j} \prod_{i=1}^{j} t_i^{2^{j-i}}`, and as
   :math:`\operatorname{tr} E_q = 1`,

   .. math::

       \log\operatorname{tr} e^{B} = 2^q \Big(\log t_0 + \sum_{i=1}^{q} 2^{-i} \log t_i\Big),
       \qquad \hat E = E_q .

   Every :math:`E_j` is positive semi-definite with trace 1 (entries at most 1)
   and :math:`t_j \in [1/k, 1]`: nothing overflows, whatever the norm of
   :math:`A`.

Products: 2 powers + 3 Horner steps (``float32``, m = 12, s = 3) or 3 + 3
(``float64``, m = 16, s = 4), + :math:`q` squarings, i.e. :math:`5 + q` resp.
:math:`6 + q`, with
:math:`q \approx \log_2(\rho(B)/\theta_m)`.

Error: the truncation error relative to :math:`e^{y}` at a nonnegative
eigenvalue is at most :math:`y^{m+1}/(m+1)! \le u` (u the unit roundoff); the
squarings amplify relative errors of the dominant eigenvalues by :math:`2^q`,
so :math:`\ell` carries an absolute error of about :math:`2^q u \approx
u\,\rho(B)/\theta_m`, the conditioning of :math:`\ell` itself (a relative
perturbation :math:`u` of :math:`A` moves :math:`\ell` by up to
:math:`u\|A\|_2`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["exp_factors", "log_trace", "log_trace_and_weights"]

_PRECISION = lax.Precision.HIGHEST

# Taylor degree per dtype, chosen by cost per doubling of theta (products spent
# for rho(B) = R: pi_m + log2(R / theta_m)), then accuracy (the error of ell
# scales like 2^q u ~ u rho / theta_m, so a larger theta is also more accurate):
#
#   float32: m = 9 (4 products, theta 0.858) costs 4.22 + log2 R, m = 12 (5,
#     1.576) 4.34 + log2 R, m = 16 (6, 2.698) 4.57 + log2 R. m = 12 is 0.12
#     products dearer than m = 9 but has 1.8x fewer squarings' worth of error
#     amplification and the sharper norm bound ||B^4||^(1/4) (m = 9 has only
#     B^3): m = 12.
#   float64: m = 12 (5, 0.336) 6.57, m = 16 (6, 0.827) 6.27, m = 20 (7, 1.509)
#     6.41, m = 25 (8, 2.568) 6.64 (+ log2 R): m = 16 is the cheapest.
_DEGREE = {np.dtype(np.float32): 12, np.dtype(np.float64): 16}
# Paterson--Stockmeyer block size s (s | m, m/s >= 2). float32: s = 3 costs 2 + 3
# products for m = 12, as s = 4 does 3 + 2, but holds one power fewer: a plain
# evaluation peaks at 5 k x k buffers rather than 6 (jax.scipy.linalg.expm: 6).
# Its bound ||lambda||_6 overestimates rho by k^(1/6) rather than k^(1/8), at
# most one squaring more (measured on Gaussian Grams, k = 16..1024: none to one).
# float64: m = 16 is not a multiple of 3, and m = 15 or 18 cost 0.3 or 0.5
# products more per matrix: s = 4.
_BLOCK = {np.dtype(np.float32): 3, np.dtype(np.float64): 4}


def _theta(m: int, dtype) -> float:
    r"""Largest :math:`\theta` with :math:`\theta^{m+1}/(m+1)! \le u`.

    This bounds the truncation error relative to :math:`e^{y}` for
    :math:`0 \le y \le \theta` (the remainder is :math:`e^{\xi}y^{m+1}/(m+1)!`,
    :math:`0 \le \xi \le y`), and its absolute value for :math:`-\theta \le y <
    0`. No factor :math:`e^{\theta}` is needed for negative eigenvalues: as
    :math:`\operatorname{tr} Y = 0`, :math:`\lambda_{\max}(Y) \ge 0` and
    :math:`\operatorname{tr} T \ge 1`, so an absolute error below :math:`u` is a
    relative one for the trace; and when :math:`q \ge 1` the weight of such an
    eigenvalue in :math:`\hat E` is at most :math:`e^{-2^q|y|}`, which more than
    cancels its relative error amplified to :math:`2^q e^{|y|} u`.

    Values (mpmath, 50 digits): float32 m = 12: 1.5763712075936013;
    float64 m = 16: 0.82687512307691774. (With the extra factor e^theta they
    would be 1.4139 and 0.7894, costing up to one more squaring for nothing.)
    """
    u = float(np.finfo(dtype).eps) / 2
    return math.exp((math.lgamma(m + 2) + math.log(u)) / (m + 1))


_THETA = {dt: _theta(m, dt) for dt, m in _DEGREE.items()}


def _theta_general(m: int, dtype) -> float:
    r"""Largest :math:`\theta` with :math:`e^{\theta}\theta^{m+1}/(m+1)! \le u` (any square matrix).

    For :math:`\|Y^j\|_F \le \eta^j` (:math:`j > m`) and :math:`\eta \le \theta`
    the remainder :math:`\sum_{j>m} Y^j/j!` is at most :math:`e^{\eta}\eta^{m+1}/(m+1)!
    \le u` in norm, and :math:`\|e^{Y}\|_F \ge \rho(e^{Y}) \ge 1` as
    :math:`\operatorname{tr} Y = 0` puts an eigenvalue in the right half-plane: a
    relative error of at most u. (Values: float32 m = 12: 1.4139; float64 m = 16: 0.7894.)
    """
    u = float(np.finfo(dtype).eps) / 2
    theta = _theta(m, dtype)
    for _ in range(50):  # a contraction: theta = ((m+1)! u e^-theta)^(1/(m+1))
        theta = math.exp((math.lgamma(m + 2) + math.log(u) - theta) / (m + 1))
    return theta


_THETA_GENERAL = {dt: _theta_general(m, dt) for dt, m in _DEGREE.items()}


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y, precision=_PRECISION)


def _trace(x: jax.Array) -> jax.Array:
    return jnp.trace(x, axis1=-2, axis2=-1)


def pair(x: jax.Array, y: jax.Array) -> jax.Array:
    """<x, y> = tr(x^T y) over the last two axes."""
    return jnp.sum(x * y, axis=(-2, -1))


def _symmetric(x: jax.Array) -> jax.Array:
    return 0.5 * (x + jnp.swapaxes(x, -1, -2))


@jax.custom_jvp
def _sq(x: jax.Array) -> jax.Array:
    """x @ x of a symmetric x (whose tangents are symmetric too)."""
    return _mm(x, x)


@_sq.defjvp
def _sq_jvp(primals, tangents):
    # For symmetric x and dx, x dx = (dx x)^T: one product, not two.
    (x,), (dx,) = primals, tangents
    p = _mm(dx, x)
    return _sq(x), p + jnp.swapaxes(p, -1, -2)


def _pow2(n: jax.Array, dtype) -> jax.Array:
    """Exactly 2**n (n int32) in ``dtype`` for n in the normal range; 0 below it.

    Built from the bit pattern, not ``exp2``/``pow``, whose results on integer
    arguments no backend promises to be exact. n above the range gives the
    largest power (never reached: callers keep n small).
    """
    fi = np.finfo(dtype)
    itype = jnp.int32 if fi.bits == 32 else jnp.int64
    bias = fi.maxexp - 1
    nc = jnp.clip(n, fi.minexp, fi.maxexp - 1).astype(itype)
    bits = lax.shift_left(nc + bias, jnp.asarray(fi.nmant, itype))
    return jnp.where(n < fi.minexp, 0, lax.bitcast_convert_type(bits, dtype)).astype(dtype)


def _exponent(x: jax.Array) -> jax.Array:
    """frexp's exponent of a nonnegative normal x (2^(e-1) <= x < 2^e), from its bits.

    Subnormals and zero give minexp or less, inf and NaN maxexp + 1: callers clip.
    """
    fi = np.finfo(x.dtype)
    itype = jnp.int32 if fi.bits == 32 else jnp.int64
    biased = lax.shift_right_logical(lax.bitcast_convert_type(x, itype), itype(fi.nmant))
    return (biased - (fi.maxexp - 2)).astype(jnp.int32)


def _log2_frobenius(x: jax.Array) -> jax.Array:
    """log2 ||x||_F over the last two axes, without overflow or underflow (-inf at 0)."""
    mx = jnp.max(jnp.abs(x), axis=(-2, -1))
    safe = jnp.where(mx > 0, mx, 1)
    ss = jnp.sum(jnp.square(x / safe[..., None, None]), axis=(-2, -1))
    return jnp.where(mx > 0, jnp.log2(mx) + 0.5 * jnp.log2(ss), -jnp.inf)


class _Powers(NamedTuple):
    """:math:`Y^j = f_j P_j`, j = 1..s: the matrices and their exact power-of-two factors."""

    p: list  # P_j, (..., k, k)
    f: list  # f_j = 2^(j (e - q)), (..., 1, 1)


def _scaled_powers(
    a: jax.Array, c: jax.Array, symmetric: bool = True
) -> tuple[_Powers, jax.Array, jax.Array]:
    r"""Powers :math:`Y^j = (B/2^q)^j`, j = 1..s, of :math:`B = A - cI`; q; :math:`\log_2\eta`.

    Only the powers carry tangents: the scale factors are exact powers of two
    chosen from the primal, so :math:`Y_j` is the same function of :math:`B` as
    :math:`(B/2^q)^j` (also at :math:`B = 0`, where the unscaled tangent is kept).
    """
    dtype = a.dtype
    fi = np.finfo(dtype)
    eye = jnp.eye(a.shape[-1], dtype=dtype)
    b0 = lax.stop_gradient(a - c[..., None, None] * eye)
    e = _exponent(jnp.max(jnp.abs(b0), axis=(-2, -1)))
    # Scale down only: powers of a small B cannot overflow, and scaling it up
    # would blow its tangents up by the same factor. (NaN/inf give the largest
    # e: their results are NaN anyway.)
    e = jnp.clip(e, 0, -fi.minexp)
    # B' = 2^-e B, entries < 1 (< 4 beyond 2^1022), as 2^-e A - (2^-e c) I: the
    # same bits, formed from A in one pass, so that XLA keeps no unscaled B live
    # beside it for the polynomial's sums (one k x k buffer fewer).
    inv = _pow2(-e, dtype)
    bp = a * inv[..., None, None] - (c * inv)[..., None, None] * eye
    square = _sq if symmetric else (lambda x: _mm(x, x))
    p2 = square(bp)
    powers = [bp, p2, _mm(p2, bp)]
    if _BLOCK[dtype] == 4:
        powers.append(square(p2))
    s = len(powers)
    log2_ps = _log2_frobenius(lax.stop_gradient(powers[-1]))
    if symmetric:
        # eta = 2^e ||P_s||_F^(1/s) = ||lambda(B)||_2s >= rho(B): the sharpest of the
        # ||P_j||_F^(1/j) = ||lambda||_2j at hand (p-norms decrease with p).
        log2_eta = e + log2_ps / s
    else:
        # ||B^j|| <= max(d_s, d_(s+1))^j for every j >= s (s - 1), with d_j = ||B^j||^(1/j)
        # (Al-Mohy and Higham 2009, Lemma 4.1), and d_(s+1) <= (||B^s|| ||B||)^(1/(s+1)).
        # m + 1 >= s (s - 1) for both dtypes: eta bounds the remainder's every power.
        log2_p1 = _log2_frobenius(lax.stop_gradient(bp))
        log2_eta = e + jnp.maximum(log2_ps / s, (log2_ps + log2_p1) / (s + 1))
    # A non-finite bound (NaN/inf input, whose result is NaN anyway) squares
    # nothing; q beyond MAX_SQUARINGS (a spectrum too wide for the static loop)
    # is capped at MAX_SQUARINGS + 1 and its result set to NaN below.
    theta = (_THETA if symmetric else _THETA_GENERAL)[dtype]
    qf = jnp.ceil(log2_eta - math.log2(theta))
    q = jnp.where(jnp.isfinite(qf), jnp.clip(qf, 0, MAX_SQUARINGS + 1), 0).astype(jnp.int32)
    # Y^j = 2^(j (e - q)) P_j. As 2^(e-1) <= max|B| <= rho(B) <= eta <= k^(1+1/(2s)) 2^e
    # and 2^(q-1) < eta/theta <= 2^q (or q = 0, e <= 1):
    # -(s + 1/2) log2(k) - 2s < j (e - q) <= s for every q below the cap.
    # The factors stay scalars, folded into the polynomial's coefficients: no
    # scaled copy of a power is ever materialised.
    factors = [_pow2(j * (e - q), dtype)[..., None, None] for j in range(1, len(powers) + 1)]
    return _Powers(powers, factors), q, log2_eta


def _block(ys: _Powers, lo: int) -> jax.Array:
    r"""The block :math:`\sum_{i<s} Y^i/(lo+i)!` (``lo = l s``, ``ys`` = Y..Y^s)."""
    p, f = ys
    s = len(p)
    # Highest degree first: the small terms are summed before the large ones.
    acc = sum(f[i - 1] * p[i - 1] / math.factorial(lo + i) for i in range(s - 1, 0, -1))
    return acc + jnp.eye(p[0].shape[-1], dtype=p[0].dtype) / math.factorial(lo)


def _taylor_rest(ys: _Powers, m: int) -> jax.Array:
    r"""``rest`` with :math:`T = \sum_{j \le m} Y^j/j! = B_0 + Y^s\,rest` (``_block(ys, 0)``).

    Paterson--Stockmeyer: :math:`T = B_0 + Y^s(B_1 + Y^s(\cdots + Y^s(B_{r-1} + Y^s/m!)))`,
    :math:`s | m`, :math:`r = m/s`: :math:`r - 2` products here and the last one,
    :math:`Y^s\,rest`, left to the caller (``_last``), which needs only its trace
    where no squaring follows.
    """
    s = len(ys.p)
    assert m % s == 0 and m // s >= 2
    rest = _block(ys, m - s) + (ys.f[-1] / math.factorial(m)) * ys.p[-1]
    for lo in range(m - 2 * s, 0, -s):
        rest = _block(ys, lo) + _last(ys, rest)
    return rest


def _last(ys: _Powers, x: jax.Array) -> jax.Array:
    """Y^s x, as f_s (P_s x): the scalar factor applied to the product."""
    return ys.f[-1] * _mm(ys.p[-1], x)


# Squarings a finite input can need: log2(rho(B)/theta) stays below 129 for every
# finite float32 matrix. Wider float64 spectra (beyond ~7e40) give NaN.
MAX_SQUARINGS = 136
_CHUNK = 8  # the transposable loop's steps per chunk (MAX_SQUARINGS // 8 chunks)


def _square(
    t: jax.Array, q: jax.Array, transposable: bool, symmetric: bool = True
) -> tuple[jax.Array, jax.Array]:
    r"""q normalised squarings: :math:`E_q` and :math:`\sum_{j=0}^{q} 2^{-j}\log t_j`.

    Symmetric :math:`T` (positive definite) is normalised by the trace,
    :math:`t_j = \operatorname{tr} E_{j-1}^2`. Any other, whose trace can vanish
    or be negative, by the power of two :math:`t_j = 2^{k_j}` with
    :math:`\max|E_j| \in [1/2, 1)`: every normalisation is then exact, and the
    sum is returned in units of :math:`\log 2` (an exact sum of integers
    :math:`2^{-j}k_j`, while it fits the mantissa).

    Masked per matrix, so that every matrix squares exactly its own q times:
    extra squarings would amplify rounding errors (:math:`2^q u`) for nothing.
    The loop runs :math:`\max q` steps over the batch. By default it is a
    ``while_loop``, which forward mode differentiates but reverse mode cannot
    transpose; ``transposable`` runs ``MAX_SQUARINGS`` steps of a ``scan``
    instead, each a ``cond`` that skips the work once no matrix needs it (under
    ``vmap`` both branches run), for derivatives that reverse mode goes through.
    Its steps come in chunks of ``_CHUNK``, each chunk one more ``cond``, so that
    the steps past :math:`\max q` cost one skipped ``cond`` per chunk.
    A static count alone would spend accuracy: the count depends on the data
    and has no useful finite bound.
    """
    dtype = t.dtype
    # E_j^2 is symmetric only in exact arithmetic (XLA:CPU's float64 product
    # is not, bitwise); left alone, the antisymmetric part A feeds -A^T A into
    # the symmetric one at every squaring. The average is elementwise.
    fi = np.finfo(dtype)
    square = (lambda x: _symmetric(_sq(x))) if symmetric else (lambda x: _mm(x, x))

    def norm(x):
        """(t, log t) of x: the normaliser and its log (log2 for powers of two)."""
        if symmetric:
            t = _trace(x)
            return t, jnp.log(t)
        mx = jnp.max(jnp.abs(lax.stop_gradient(x)), axis=(-2, -1))
        k = jnp.clip(_exponent(mx), fi.minexp, fi.maxexp - 1)
        return _pow2(k, dtype), k.astype(dtype)

    t0, log_t0 = norm(t)

    def step(carry):
        j, e_j, acc, w = carry
        sq = square(e_j)
        t_j, log_t_j = norm(sq)
        active = j < q
        e_j = jnp.where(active[..., None, None], sq / t_j[..., None, None], e_j)
        w = 0.5 * w  # 2^-(j+1), exact while it matters (it underflows only for q > 1000)
        acc = acc + jnp.where(active, w * log_t_j, 0)
        return j + 1, e_j, acc, w

    init = (jnp.asarray(0, jnp.int32), t / t0[..., None, None], log_t0, jnp.asarray(1, dtype))
    if transposable:

        def skip(c, steps):
            return c[0] + steps, *c[1:3], c[3] * 0.5**steps

        def inner(carry, _):
            return lax.cond(jnp.any(carry[0] < q), step, lambda c: skip(c, 1), carry), None

        def chunk(carry, _):
            # A chunk of steps, skipped at the cost of one cond once no matrix needs it.
            def run(c):
                return lax.scan(inner, c, None, length=_CHUNK)[0]

            return lax.cond(jnp.any(carry[0] < q), run, lambda c: skip(c, _CHUNK), carry), None

        (_, e_q, acc, _), _ = lax.scan(chunk, init, None, length=MAX_SQUARINGS // _CHUNK)
    else:
        q_max = jnp.max(q, initial=0)  # (an empty batch squares nothing)
        _, e_q, acc, _ = lax.while_loop(lambda c: c[0] < q_max, step, init)
    return e_q, acc


def _squarings(a: jax.Array) -> jax.Array:
    """The number of squarings q chosen per matrix (for tests and diagnostics)."""
    a = _as_float(a)
    return _scaled_powers(a, _mean_eigenvalue(a))[1]


def _as_float(a: jax.Array) -> jax.Array:
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 1:
        raise ValueError(f"expected a (..., k, k) array with k >= 1, got shape {a.shape}")
    return a


def _mean_eigenvalue(a: jax.Array) -> jax.Array:
    """c = tr(A)/k, the shift of B = A - cI."""
    # Sum of diag/k rather than mean: no overflow near the largest float. c need
    # not be rounded correctly, only used consistently in B and in ell.
    return jnp.sum(jnp.diagonal(a, axis1=-2, axis2=-1) / a.shape[-1], axis=-1)


def _prepared(a: jax.Array, symmetric: bool = True):
    """(c, Y^1..s, q, log2 eta, out dtype) of ``a``, computed in float32 or float64."""
    a = _as_float(a)
    out_dtype = a.dtype
    if a.dtype not in _DEGREE:  # bfloat16, float16: compute in float32
        a = a.astype(jnp.float32)
    c = _mean_eigenvalue(a)
    ys, q, log2_eta = _scaled_powers(a, c, symmetric)
    return c, ys, q, log2_eta, out_dtype


def _ell(c, ell_b, q, log2_eta, k: int) -> jax.Array:
    """ell = c + ell_B, with ell_B's exact bounds and NaN beyond MAX_SQUARINGS."""
    # Exact bounds log k <= ell_B <= log k + lambda_max(B) <= log k + eta (Jensen,
    # tr B = 0) repair rounding at the ends; applied to the value only, so that
    # derivatives of every order stay those of the smooth function.
    log_k = math.log(k)
    eta = jnp.exp2(jnp.where(jnp.isnan(log2_eta), -jnp.inf, log2_eta))
    clamped = jnp.clip(lax.stop_gradient(ell_b), log_k, log_k + eta)
    ell_b = ell_b + lax.stop_gradient(clamped - ell_b)
    # Beyond MAX_SQUARINGS the polynomial would be evaluated out of its range.
    return jnp.where(q > MAX_SQUARINGS, jnp.nan, c + ell_b)


def times_pow2(x: jax.Array, q: jax.Array) -> jax.Array:
    """x 2^q, in two exact factors (2^q alone can exceed the range)."""
    qh = q // 2
    return x * _pow2(qh, x.dtype) * _pow2(q - qh, x.dtype)


def log_trace_and_weights(
    a: jax.Array, *, transposable: bool = False
) -> tuple[jax.Array, jax.Array]:
    r"""Log-trace and trace-normalised exponential of real symmetric matrices.

    .. math::

        \ell = \log \operatorname{tr} e^{A}, \qquad \hat E = e^{A}/\operatorname{tr} e^{A}.

    Matrix products only (see the module docstring for the algorithm and its
    error), overflow-free for any finite ``a``, and usable under ``jax.jit``,
    ``jax.vmap`` and ``jax.jvp`` (to any order). Each matrix of the batch gets
    its own number of squarings. Narrow floating types are computed in
    ``float32``; integer input is promoted to the default float type.

    Args:
        a: ``(..., k, k)`` real symmetric matrices, ``k >= 1``; only symmetric
            input is meaningful (the algorithm relies on it and does not
            symmetrise ``a``). NaN or inf anywhere in a matrix gives NaN for it.
        transposable: run the squarings as a fixed-length ``scan`` of skipped
            steps rather than a ``while_loop``, so that reverse mode can
            transpose the derivative (same result, more loop overhead).

    Returns:
        ``(ell, e_hat)``: ``ell`` of shape ``(...)`` and ``e_hat`` of shape
        ``(..., k, k)``, symmetric positive semi-definite with trace 1 (to
        rounding), both in the dtype of ``a``.

    Example:
        >>> import jax.numpy as jnp
        >>> ell, e_hat = log_trace_and_weights(jnp.zeros((3, 3)))
        >>> round(float(ell), 6), round(float(e_hat[0, 0]), 6)
        (1.098612, 0.333333)
    """
    c, ys, q, log2_eta, out_dtype = _prepared(a)
    rest = _taylor_rest(ys, _DEGREE[ys.p[0].dtype])
    # Y^s (...) is symmetric only in exact arithmetic (the factors commute). Left
    # alone, the asymmetry grows in the squarings (measured: to ~1e3 eps of
    # max|e_hat|, and eigenvalues of e_hat down to -7e-4 for -1e8 X^T X in float32).
    t = _symmetric(_block(ys, 0) + _last(ys, rest))
    e_hat, acc = _square(t, q, transposable)
    ell = _ell(c, times_pow2(acc, q), q, log2_eta, ys.p[0].shape[-1])
    e_hat = jnp.where((q > MAX_SQUARINGS)[..., None, None], jnp.nan, e_hat)
    return ell.astype(out_dtype), e_hat.astype(out_dtype)


def log_trace(a: jax.Array) -> jax.Array:
    r""":math:`\log\operatorname{tr} e^{A}` for real symmetric ``a`` of shape ``(..., k, k)``.

    The value of :func:`log_trace_and_weights` (same algorithm and error) with
    one matrix product fewer, since no :math:`\hat E` is formed: the last
    product contributes its trace alone. Where no squaring is needed,
    :math:`\operatorname{tr} T = \operatorname{tr} B_0 + \langle Y^s, R\rangle`
    for :math:`T = B_0 + Y^s R`; otherwise the last squaring's trace is
    :math:`\operatorname{tr} E_{q-1}^2 = \|E_{q-1}\|_F^2` (:math:`E_{q-1}`
    symmetric to rounding). Its peak working set is 5 k x k matrices in
    ``float32`` and 6 in ``float64``.
    Forward-differentiable; reverse mode cannot transpose its ``while_loop``.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(log_trace(jnp.eye(2))), 6)  # log(2 e)
        1.693147
    """
    c, ys, q, log2_eta, out_dtype = _prepared(a)
    rest = _taylor_rest(ys, _DEGREE[ys.p[0].dtype])
    # Y^s and rest are symmetric polynomials of Y: tr(Y^s rest) = <Y^s, rest>.
    trace_t = _trace(_block(ys, 0)) + ys.f[-1][..., 0, 0] * pair(ys.p[-1], rest)
    # The product P_s rest only where a matrix squares; its factor is applied
    # outside, fused with the sum. T is not symmetrised: every squaring
    # symmetrises its result.
    p_rest = lax.cond(jnp.any(q > 0), _mm, lambda p, rest: jnp.zeros_like(rest), ys.p[-1], rest)
    t = _block(ys, 0) + ys.f[-1] * p_rest
    e_last, acc = _square(t, jnp.maximum(q - 1, 0), transposable=False)
    # The q-th squaring's trace t_q = ||E_{q-1}||_F^2, weighted 2^-q in acc.
    squared = times_pow2(acc, q) + jnp.log(pair(e_last, e_last))
    ell_b = jnp.where(q > 0, squared, jnp.log(trace_t))
    ell = _ell(c, ell_b, q, log2_eta, ys.p[0].shape[-1])
    return ell.astype(out_dtype)


def exp_factors(a: jax.Array, *, transposable: bool = False) -> tuple[jax.Array, ...]:
    r""":math:`e^{A} = e^{c}\,2^{k} E`, :math:`\max|E_{ij}| \in [1/2, 1)`, any real square ``a``.

    The same scaling, Taylor polynomial and squarings as
    :func:`log_trace_and_weights`, for matrices that need not be symmetric: the
    number of squarings comes from the norms of :math:`B^s` and :math:`B` rather
    than the eigenvalues (see :func:`_theta_general`), nothing is symmetrised,
    and every squaring is normalised by a power of two (the trace of a
    non-symmetric matrix can vanish). So :math:`c = \operatorname{tr}A/d` and
    :math:`k = 2^q\sum_j 2^{-j}k_j` (an integer in the dtype, exact while it
    fits the mantissa) carry the scale and never overflow, and no normalisation
    rounds: a matrix whose exponential is exactly representable, such as that of
    a DAG's adjacency (:math:`\operatorname{tr} e^{A} = d`), comes out exactly.
    Relative errors of :math:`E` are about :math:`2^q u` times the conditioning
    of :math:`e^{A}` (large for far-from-normal :math:`A`).

    Args:
        a: ``(..., d, d)`` real matrices, ``d >= 1``. NaN or inf anywhere in a
            matrix gives NaN for it.
        transposable: as :func:`log_trace_and_weights`.

    Returns:
        ``(c, k, E)`` of shapes ``(...)``, ``(...)`` and ``(..., d, d)`` in the
        dtype of ``a``.

    Example:
        >>> import jax.numpy as jnp
        >>> c, k, e = exp_factors(jnp.array([[0.0, 1.0], [0.0, 0.0]]))
        >>> [[float(v * jnp.exp(c) * 2**k) for v in row] for row in e]
        [[1.0, 1.0], [0.0, 1.0]]
    """
    c, ys, q, _, out_dtype = _prepared(a, symmetric=False)
    t = _block(ys, 0) + _last(ys, _taylor_rest(ys, _DEGREE[ys.p[0].dtype]))
    e, acc = _square(t, q, transposable, symmetric=False)
    beyond = q > MAX_SQUARINGS  # the polynomial would be evaluated out of its range
    k = jnp.where(beyond, jnp.nan, times_pow2(acc, q))
    e = jnp.where(beyond[..., None, None], jnp.nan, e)
    return c.astype(out_dtype), k.astype(out_dtype), e.astype(out_dtype)

"""Time budgets: a measured matmul rate, when to skip the peer, how many repeats."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.cases import Case
from benchmarks.programs import peer_flops

MIN_REPEATS = 3


@dataclass(frozen=True)
class Limits:
    """When the peer is skipped and how long a case may take.

    Attributes:
      peer_limit_s: skip the peer when one call is estimated to take longer.
      peer_max_n: skip the peer when its n x n matrix is larger (a memory guard).
      case_budget_s: wall-clock seconds a case should take; slow cases are
        timed with fewer repeats, never fewer than :data:`MIN_REPEATS`.
    """

    peer_limit_s: float
    peer_max_n: int
    case_budget_s: float


def matmul_gflops(dtype: str, device: jax.Device, size: int = 1024, repeats: int = 3) -> float:
    """Measured GFLOP/s of a ``size``-square full-precision matmul on ``device``.

    Calibrates the peer's cost model to the machine at hand, so that the same
    rule skips the peer where it is hopeless (a 2-core CPU) and keeps it where it
    is fine (a GPU), with no per-platform constants.

    Args:
      dtype: dtype name.
      device: the benchmark device.
      size: matrix size.
      repeats: timed calls; the fastest counts.

    Returns:
      Billions of floating-point operations per second.
    """
    a = jax.device_put(jnp.ones((size, size), dtype=dtype) / size, device)
    f = jax.jit(lambda a: jnp.matmul(a, a, precision=lax.Precision.HIGHEST)).lower(a).compile()
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def peer_estimate_s(case: Case, gflops: float) -> float:
    """Estimated seconds of one peer call at the measured matmul rate."""
    return peer_flops(case.shape, case.mode) / (gflops * 1e9)


def peer_skip_reason(case: Case, gflops: float, limits: Limits) -> str | None:
    """Why the peer is not run on ``case``, or None if it is.

    Args:
      case: the case.
      gflops: measured matmul rate for the case's dtype.
      limits: the thresholds.

    Returns:
      A sentence for every output, or None.
    """
    if case.n > limits.peer_max_n:
        return (
            f"peer skipped: it forms a {case.n}x{case.n} matrix, above "
            f"--peer-max-n {limits.peer_max_n}"
        )
    estimate = peer_estimate_s(case, gflops)
    if estimate > limits.peer_limit_s:
        tflop = peer_flops(case.shape, case.mode) / 1e12
        return (
            f"peer skipped: estimated {estimate:.0f} s per call ({tflop:.1f} TFLOP at the "
            f"measured {gflops:.0f} GFLOP/s), above --peer-limit {limits.peer_limit_s:g} s"
        )
    return None


def choose_repeats(requested: int, spent_s: float, round_s: float, budget_s: float) -> int:
    """Repeats that fit the rest of a case's budget, between MIN_REPEATS and ``requested``.

    Args:
      requested: ``--repeats``.
      spent_s: seconds the case has taken so far (compilation, check, warm-up).
      round_s: seconds of one round of all its programs (from the warm-up).
      budget_s: the case's budget.

    Returns:
      The number of timed rounds.
    """
    if requested <= MIN_REPEATS or round_s <= 0:
        return requested
    fit = int((budget_s - spent_s) / round_s)
    return max(MIN_REPEATS, min(requested, fit))

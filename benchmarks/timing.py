"""Compiled memory and interleaved wall-clock timing of compiled, zero-argument calls."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

# A timed round of a fast program repeats its call until the round lasts this long
# (as timeit does): a lone sub-millisecond call after a slow program mostly measures
# caches and thread pools waking up. A slow program runs once per round.
MIN_ROUND_S = 0.1
MAX_CALLS_PER_ROUND = 1000
MIN_ROUNDS = 3  # rounds always completed, whatever the case's budget


def temp_bytes(executable: Any) -> int | None:
    """Compiled temporary memory, None where the backend does not say."""
    try:
        return int(executable.memory_analysis().temp_size_in_bytes)
    except Exception:  # Some backends raise or return None instead of reporting.
        return None


def call_seconds(run: Callable[[], Any], calls: int = 1) -> tuple[Any, float]:
    """The last output and mean seconds of ``calls`` consecutive calls, each waited for.

    Every call is blocked on, so this is latency with dispatch, not pipelined throughput.
    """
    start = time.perf_counter()
    for _ in range(calls):
        out = jax.block_until_ready(run())
    return out, (time.perf_counter() - start) / calls


def calls_per_round(seconds_per_call: float) -> int:
    """Consecutive calls that make one round last :data:`MIN_ROUND_S`."""
    if seconds_per_call >= MIN_ROUND_S:
        return 1
    return min(MAX_CALLS_PER_ROUND, math.ceil(MIN_ROUND_S / max(seconds_per_call, 1e-7)))


def interleaved(
    runs: Sequence[Callable[[], Any]], calls: Sequence[int], repeats: int, deadline: float
) -> list[list[float]]:
    """Times the calls in turn, A, B, C, A, B, C, ..., for up to ``repeats`` rounds.

    Interleaving spreads slow drifts (other processes, clocks, heat) over all
    programs alike and makes per-round ratios meaningful. No round starts after
    ``deadline`` (a ``time.perf_counter()`` value) once :data:`MIN_ROUNDS` are done.

    Returns:
      Per program, its mean call time in each round.
    """
    times: list[list[float]] = [[] for _ in runs]
    for done in range(repeats):
        if done >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
        for run, c, t in zip(runs, calls, times, strict=True):
            t.append(call_seconds(run, c)[1])
    return times


def median(values: Sequence[float]) -> float:
    """The median."""
    return float(statistics.median(values))


def ratio(num: Sequence[float], den: Sequence[float], definition: str) -> dict[str, Any]:
    """The median of per-round ratios ``num / den``.

    A program timed by its checking call alone (too slow for rounds) has one
    time; its ratio is then against the other's median.
    """
    if len(num) != len(den):
        num, den = [median(num)], [median(den)]
    per_round = [a / b for a, b in zip(num, den, strict=True)]
    return {"definition": definition, "median": median(per_round), "per_round": per_round}

"""Compilation, compiled memory and interleaved wall-clock timing."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax


@dataclass
class Compiled:
    """An ahead-of-time compiled program.

    Attributes:
      name: name of the program in the outputs.
      executable: the compiled callable.
      compile_s: seconds spent lowering and compiling.
      temp_bytes: compiled temporary memory, or None where the backend does not say.
    """

    name: str
    executable: Any
    compile_s: float
    temp_bytes: int | None


def temp_bytes(compiled: Any) -> int | None:
    """``compiled.memory_analysis().temp_size_in_bytes``, or None where unavailable."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # Some backends and versions raise instead of returning None.
        return None
    value = getattr(stats, "temp_size_in_bytes", None)
    return None if value is None else int(value)


def compile_program(name: str, fn: Callable[..., Any], args: Sequence[Any]) -> Compiled:
    """Jits, lowers and compiles ``fn`` for ``args`` before anything is timed.

    Args:
      name: name of the program.
      fn: a function of JAX arrays.
      args: example arguments, already placed on the benchmark device.

    Returns:
      The :class:`Compiled` program.
    """
    start = time.perf_counter()
    executable = jax.jit(fn).lower(*args).compile()
    elapsed = time.perf_counter() - start
    return Compiled(name, executable, elapsed, temp_bytes(executable))


def timed_run(program: Compiled, args: Sequence[Any]) -> tuple[Any, float]:
    """Runs a compiled program once; returns its ready outputs and the seconds taken."""
    start = time.perf_counter()
    out = jax.block_until_ready(program.executable(*args))
    return out, time.perf_counter() - start


# A timed round of a fast program repeats its call until the round lasts this
# long (as timeit does): a single sub-millisecond call that follows a slow
# program mostly measures caches and thread pools waking up.
MIN_ROUND_S = 0.1
MAX_CALLS_PER_ROUND = 1000


def call_seconds(program: Compiled, args: Sequence[Any], calls: int = 1) -> float:
    """Mean wall-clock seconds of ``calls`` consecutive calls, each waited for.

    Every call is blocked on (``block_until_ready``), so this is latency with
    asynchronous dispatch included, not pipelined throughput.
    """
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(program.executable(*args))
    return (time.perf_counter() - start) / calls


def calls_per_round(seconds_per_call: float) -> int:
    """How many consecutive calls make one timed round last :data:`MIN_ROUND_S`."""
    if seconds_per_call >= MIN_ROUND_S:
        return 1
    return min(MAX_CALLS_PER_ROUND, math.ceil(MIN_ROUND_S / max(seconds_per_call, 1e-7)))


def interleaved(
    programs: Sequence[Compiled],
    args: Sequence[Sequence[Any]],
    repeats: int,
    deadline: float | None = None,
    min_repeats: int = 1,
    calls: Sequence[int] | None = None,
) -> list[list[float]]:
    """Times the programs in turn, A, B, A, B, ..., up to ``repeats`` rounds.

    Interleaving spreads slow drifts (other processes, clock, thermals) over all
    programs alike, and makes per-round ratios meaningful.

    Args:
      programs: compiled programs.
      args: the arguments of each program.
      repeats: the most rounds.
      deadline: a ``time.perf_counter()`` value after which no new round starts
        once ``min_repeats`` are done (calls can turn much slower than the
        warm-up predicted on a busy host).
      min_repeats: rounds always completed.
      calls: consecutive calls per round of each program (see
        :func:`calls_per_round`); one each by default.

    Returns:
      For each program, its mean call time in seconds, one per completed round.
    """
    calls = [1] * len(programs) if calls is None else list(calls)
    times: list[list[float]] = [[] for _ in programs]
    for done in range(repeats):
        if deadline is not None and done >= min_repeats and time.perf_counter() > deadline:
            break
        for i, program in enumerate(programs):
            times[i].append(call_seconds(program, args[i], calls[i]))
    return times


def median(values: Sequence[float]) -> float:
    """The median."""
    return float(statistics.median(values))


def pair_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios ``numerator[i] / denominator[i]``."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def summary(program: Compiled, times: Sequence[float]) -> dict[str, Any]:
    """The JSON record of one program: median, spread, raw times, compile and memory."""
    return {
        "median_s": median(times),
        "min_s": float(min(times)),
        "max_s": float(max(times)),
        "times_s": [float(t) for t in times],
        "compile_s": program.compile_s,
        "temp_bytes": program.temp_bytes,
    }

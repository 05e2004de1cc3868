"""One comparison from inputs to figures: compile, check, warm up, time.

Every comparison yields a JSON-ready record of the same layout, whatever its
kind (``"peer"``: jaxtrace against the peer; ``"core"``: jaxtrace against the
design's core; ``"hvp"``: the Hessian-vector product against value-and-grad):
``programs`` holds each program's figures and ``ratio`` the median of the
per-round ratios. Correctness is checked before anything is timed; a failed
check sets ``status`` to ``"MISMATCH"`` and is never hidden.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from benchmarks import budget, checks, programs, timing
from benchmarks.cases import Case, make_input

CORE_TARGET = 1.2  # jaxtrace / core, value and gradient
HVP_TARGET = 3.0  # HVP / value and gradient
SLOW_CALL_S = 1.0  # calls slower than this need no warm-up beyond the checking call


@dataclass(frozen=True)
class Settings:
    """How every comparison is run.

    Attributes:
      repeats: timed rounds requested per comparison.
      warmup: untimed calls of each program after the checking call.
      limits: peer skipping and per-case time budget.
      peer_precision: default matmul precision of the peer (``"highest"`` or ``"default"``).
      seed: seed of the inputs.
    """

    repeats: int
    warmup: int
    limits: budget.Limits
    peer_precision: str
    seed: int


def _base_record(kind: str, case: Case) -> dict[str, Any]:
    """A record with the case's description and empty figures."""
    return {
        "kind": kind,
        "label": case.label,
        "family": case.family,
        "shape": list(case.shape),
        "batch_shape": list(case.batch_shape),
        "n": case.n,
        "m": case.m,
        "size": case.size,
        "dtype": case.dtype,
        "mode": case.mode,
        "status": "ok",
        "skip_reason": None,
        "error": None,
        "check": None,
        "reference_errors": {},
        "programs": {},
        "ratio": None,
        "repeats": 0,
    }


def _gate(record: dict[str, Any], *results: checks.Check) -> None:
    """Records the checks that decide the case; any failure marks it loudly."""
    record["check"] = results[0].to_dict()
    failed = [r for r in results if not r.passed]
    if failed:
        record["status"] = "MISMATCH"
        record["check"]["passed"] = False
        record["check"]["message"] = "; ".join(f"vs {r.reference}: {r.message}" for r in failed)


def _dtype_check(out: Any, mode: str, dtype: str) -> list[checks.Check]:
    """A failed check if a program's value came back in another dtype (e.g. x64 off)."""
    value, _ = checks.split_outputs(out, mode)
    got = str(np.asarray(value).dtype)
    if got == dtype:
        return []
    return [checks.Check("dtype", {}, 0.0, False, f"returned {got}, not {dtype}")]


@dataclass(frozen=True)
class _Spec:
    """A program to measure: its name, function and arguments (on the device)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


def _measure(
    record: dict[str, Any],
    specs: Sequence[_Spec],
    check: Callable[[list[Any]], list[checks.Check]],
    settings: Settings,
    started: float,
) -> list[list[float]]:
    """Compile, check, warm up, time: the method shared by every comparison.

    1. Every program is compiled ahead of time (``lower().compile()``), which
       also yields its compiled temporary memory.
    2. Each runs once and ``check`` compares the outputs, before any timing.
    3. Warm-up: that first call plus up to ``settings.warmup`` more; a program
       slower than :data:`SLOW_CALL_S` is taken as warm after its first call,
       as one-time costs are then negligible and the budget is better spent on
       timed rounds.
    4. ``repeats`` interleaved rounds (A, B, A, B, ...); within a round a fast
       program repeats its call until the round lasts ``timing.MIN_ROUND_S``
       and counts the mean. Fewer rounds where the rest
       of the case's budget does not allow them, as predicted from the warm-up
       or as it runs out (never below 3).

    Args:
      record: the record to fill (``programs``, ``repeats``, ``phases_s``, checks).
      specs: the programs, A first.
      check: from the outputs of the first calls, the checks that gate the case.
      settings: repeats, warm-up and budget.
      started: ``time.perf_counter()`` at the start of the case.

    Returns:
      The call times of each program, in the order of ``specs``.
    """
    mark = time.perf_counter()
    progs = [timing.compile_program(s.name, s.fn, s.args) for s in specs]
    phases = {"compile": time.perf_counter() - mark}

    mark = time.perf_counter()
    firsts = [timing.timed_run(p, s.args) for p, s in zip(progs, specs, strict=True)]
    phases["first_calls"] = time.perf_counter() - mark
    mark = time.perf_counter()
    _gate(record, *check([out for out, _ in firsts]))
    phases["check"] = time.perf_counter() - mark  # mostly the float64 reference

    mark = time.perf_counter()
    last = [seconds for _, seconds in firsts]
    warm_calls = [1] * len(progs)
    for i, (prog, spec) in enumerate(zip(progs, specs, strict=True)):
        for _ in range(settings.warmup):
            if last[i] > SLOW_CALL_S:
                break
            last[i] = timing.call_seconds(prog, spec.args)
            warm_calls[i] += 1
    phases["warmup"] = time.perf_counter() - mark

    repeats = budget.choose_repeats(
        settings.repeats,
        time.perf_counter() - started,
        sum(max(t, timing.MIN_ROUND_S) for t in last),
        settings.limits.case_budget_s,
    )
    mark = time.perf_counter()
    deadline = started + settings.limits.case_budget_s
    calls = [timing.calls_per_round(seconds) for seconds in last]
    times = timing.interleaved(
        progs, [s.args for s in specs], repeats, deadline, min(repeats, budget.MIN_REPEATS), calls
    )
    phases["timed"] = time.perf_counter() - mark

    record["repeats"] = len(times[0])
    record["calls_per_round"] = {p.name: c for p, c in zip(progs, calls, strict=True)}
    record["phases_s"] = phases
    record["programs"] = {
        p.name: {**timing.summary(p, t), "first_call_s": f[1], "warmup_calls": w}
        for p, t, f, w in zip(progs, times, firsts, warm_calls, strict=True)
    }
    return times


def _ratio(
    record: dict[str, Any], num: Sequence[float], den: Sequence[float], definition: str
) -> None:
    """Records the per-round ratios ``num / den`` and their median."""
    per_round = timing.pair_ratios(num, den)
    record["ratio"] = {
        "definition": definition,
        "median": timing.median(per_round),
        "per_round": per_round,
    }


def _guarded(record: dict[str, Any], body: Callable[[], None], started: float) -> dict[str, Any]:
    """Runs ``body``; an exception marks the record as an error instead of ending the sweep."""
    try:
        body()
    except Exception as exc:  # One broken case (e.g. out of memory) must not lose the others.
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=8)
    record["wall_s"] = time.perf_counter() - started
    return record


def run_peer_case(
    case: Case, device: jax.Device, gflops: float, settings: Settings
) -> dict[str, Any]:
    """jaxtrace against the peer on one case.

    The peer is skipped, with the reason recorded, where its estimated cost
    exceeds the limits; jaxtrace is then timed alone and checked against the
    float64 reference only.

    Args:
      case: shape, dtype and mode.
      device: where inputs and programs live.
      gflops: measured matmul rate for the case's dtype (for the peer estimate).
      settings: repeats, warm-up, limits, peer precision, seed.

    Returns:
      The case's record.
    """
    started = time.perf_counter()
    record = _base_record("peer", case)
    record["peer_estimate_s"] = budget.peer_estimate_s(case, gflops)
    skip = budget.peer_skip_reason(case, gflops, settings.limits)
    if skip is not None:
        record["status"] = "peer skipped"
        record["skip_reason"] = skip

    def check(outs: list[Any]) -> list[checks.Check]:
        x_host = make_input(case.shape, case.dtype, settings.seed)
        ref = checks.reference_output(x_host, case.mode)
        vs_ref = checks.compare(outs[0], ref, case.mode, case.dtype, "float64 reference")
        record["reference_errors"]["jaxtrace"] = vs_ref.to_dict()
        gates = [vs_ref, *_dtype_check(outs[0], case.mode, case.dtype)]
        if len(outs) > 1:
            peer_ref = checks.compare(outs[1], ref, case.mode, case.dtype, "float64 reference")
            record["reference_errors"]["peer"] = peer_ref.to_dict()
            gates.insert(0, checks.compare(outs[0], outs[1], case.mode, case.dtype, "peer"))
        return gates

    def body() -> None:
        x = jax.device_put(make_input(case.shape, case.dtype, settings.seed), device)
        specs = [_Spec("jaxtrace", programs.jaxtrace_program(case.mode), (x,))]
        if skip is None:
            peer_fn = programs.peer_program(case.mode, settings.peer_precision)
            specs.append(_Spec("peer", peer_fn, (x,)))
        times = _measure(record, specs, check, settings, started)
        if len(times) > 1:
            _ratio(record, times[1], times[0], "peer/jaxtrace")

    return _guarded(record, body, started)


def run_core_case(
    shape: tuple[int, ...], dtype: str, device: jax.Device, settings: Settings
) -> dict[str, Any]:
    """jaxtrace's value-and-gradient against its unavoidable core (target ratio <= 1.2).

    Args:
      shape: ``(n, m)``, a single matrix.
      dtype: dtype name.
      device: where inputs and programs live.
      settings: repeats, warm-up, limits, seed.

    Returns:
      The record, with ``ratio`` = jaxtrace / core and ``target``.
    """
    started = time.perf_counter()
    case = Case(tuple(shape), dtype, "value_and_grad")
    record = _base_record("core", case)
    record["target"] = {"ratio": "jaxtrace/core", "max": CORE_TARGET, "met": None}
    x_host = make_input(case.shape, dtype, settings.seed)

    def check(outs: list[Any]) -> list[checks.Check]:
        out_jt, out_core = outs
        ref = checks.reference_output(x_host, case.mode)
        vs_ref = checks.compare(out_jt, ref, case.mode, dtype, "float64 reference")
        core_ref = checks.compare(out_core, ref, case.mode, dtype, "float64 reference")
        record["reference_errors"] = {"jaxtrace": vs_ref.to_dict(), "core": core_ref.to_dict()}
        return [checks.compare(out_jt, out_core, case.mode, dtype, "core"), vs_ref]

    def body() -> None:
        x = jax.device_put(x_host, device)
        specs = [
            _Spec("jaxtrace", programs.jaxtrace_program(case.mode), (x,)),
            _Spec("core", programs.core_program(), (x,)),
        ]
        times = _measure(record, specs, check, settings, started)
        _ratio(record, times[0], times[1], "jaxtrace/core")
        record["target"]["met"] = record["ratio"]["median"] <= CORE_TARGET

    return _guarded(record, body, started)


def run_hvp_case(
    shape: tuple[int, ...], dtype: str, device: jax.Device, settings: Settings
) -> dict[str, Any]:
    """The forward-over-reverse HVP against value-and-grad (target ratio <= 3).

    Args:
      shape: ``(..., n, m)``.
      dtype: dtype name.
      device: where inputs and programs live.
      settings: repeats, warm-up, limits, seed.

    Returns:
      The record, with ``ratio`` = HVP / value-and-grad and ``target``.
    """
    started = time.perf_counter()
    case = Case(tuple(shape), dtype, "value_and_grad")
    record = _base_record("hvp", case)
    record["mode"] = "hvp"
    record["label"] = case.label.replace("value_and_grad", "hvp")
    record["target"] = {"ratio": "hvp/value_and_grad", "max": HVP_TARGET, "met": None}
    x_host = make_input(case.shape, dtype, settings.seed)
    v_host = make_input(case.shape, dtype, settings.seed + 1)

    def check(outs: list[Any]) -> list[checks.Check]:
        (grad, hvp), vg = outs
        ref = checks.reference_output(x_host, "value_and_grad")
        errors = {
            "hvp": checks.array_rel_err(hvp, checks.reference_hvp(x_host, v_host)),
            "grad": checks.array_rel_err(grad, ref[1]),
        }
        hvp_check = checks.make_check(
            "float64 finite-difference HVP", errors, checks.RTOL[dtype], {"hvp": hvp, "grad": grad}
        )
        vg_ref = checks.compare(vg, ref, "value_and_grad", dtype, "float64 reference")
        record["reference_errors"] = {
            "hvp": hvp_check.to_dict(),
            "value_and_grad": vg_ref.to_dict(),
        }
        return [hvp_check, vg_ref]

    def body() -> None:
        x = jax.device_put(x_host, device)
        v = jax.device_put(v_host, device)
        specs = [
            _Spec("hvp", programs.hvp_program(), (x, v)),
            _Spec("value_and_grad", programs.jaxtrace_program("value_and_grad"), (x,)),
        ]
        times = _measure(record, specs, check, settings, started)
        _ratio(record, times[0], times[1], "hvp/value_and_grad")
        record["target"]["met"] = record["ratio"]["median"] <= HVP_TARGET

    return _guarded(record, body, started)

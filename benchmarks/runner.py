"""One comparison from inputs to figures: compile, check, warm up, time.

Every comparison yields a JSON-ready record of one layout, whatever its kind
(``"peer"``: jaxtrace's three methods against the peers; ``"core"``: the eigh
method against the design's core; ``"hvp"``: a Hessian-vector product against
value-and-grad; ``"notears"``: ``jaxtrace.trace_expm`` against autodiff of
``jax.scipy.linalg.expm`` in NOTEARS' constraint): ``programs`` holds each
program's check and figures, ``ratios`` the medians of per-round ratios. Every
program is checked against the float64 reference before anything is timed. A
jaxtrace program that fails sets ``status`` to ``"MISMATCH"`` (the run then exits
1); a peer that fails (NaN or overflow in its log form, say) is marked invalid
and not timed.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import checks, programs, timing
from benchmarks.cases import NOTEARS, Case, make_input, make_notears_input
from jaxtrace._src import methods

WARMUP_CALLS = 2  # untimed calls after the checking call, for programs under SLOW_CALL_S
SLOW_CALL_S = 1.0  # one-time costs are negligible against calls this slow


@dataclass(frozen=True)
class Settings:
    """How every comparison is run: ``--repeats``, ``--budget``, ``--peer-limit``,
    ``--peer-precision`` and ``--seed``."""

    repeats: int
    budget_s: float
    peer_limit_s: float
    peer_precision: str
    seed: int


@dataclass(frozen=True)
class Spec:
    """A program to measure: ``fn`` of ``args`` (on the device), ``check`` of its output
    (a :func:`checks.verdict` dict); ``required``: jaxtrace's, not a peer."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    check: Callable[[Any], dict[str, Any]]
    required: bool = True


def _record(kind: str, case: Case, label: str, method: str | None) -> dict[str, Any]:
    """A record describing ``case``, with empty figures."""
    rec = {"kind": kind, "label": label, "family": case.family, **asdict(case), "method": method}
    rec |= {"shape": list(case.shape), "n": case.n, "m": case.m, "k": case.k, "batch": case.batch}
    rec |= {"status": "ok", "failures": [], "notes": [], "programs": {}, "ratios": {}}
    return rec


def measure(
    record: dict[str, Any], specs: Sequence[Spec], settings: Settings
) -> dict[str, list[float]]:
    """Compile, check, warm up and time ``specs``: the method of every comparison.

    1. Each program is compiled ahead of time (``lower().compile()``), which also
       gives its compiled temporary memory; one whose lowered text equals an
       earlier one's is that program, compiled and timed once, under both names.
    2. Each runs once and is checked, before any timing.
    3. Programs faster than :data:`SLOW_CALL_S` get :data:`WARMUP_CALLS` more calls;
       one slower than ``settings.peer_limit_s`` is timed by its checking call alone.
    4. Interleaved rounds until ``settings.repeats`` or the case's budget
       (:func:`timing.interleaved`).

    Returns:
      Per program name (valid programs only), its time in each round.
    """
    deadline = time.perf_counter() + settings.budget_s
    hlos: dict[str, str] = {}  # lowered text -> name: identical text, identical program
    timed: dict[str, Callable[[], Any]] = {}  # programs timed in rounds
    times: dict[str, list[float]] = {}
    aliases: dict[str, str] = {}
    for spec in specs:
        entry = record["programs"].setdefault(spec.name, {"valid": True})
        try:
            start = time.perf_counter()
            lowered = jax.jit(spec.fn).lower(*spec.args)
            same = hlos.setdefault(lowered.as_text(), spec.name)
            if same != spec.name:  # e.g. method auto and the method it picks
                aliases[spec.name] = same
                entry.update(same_program_as=same, **record["programs"][same])
                continue
            executable = lowered.compile()
            entry.update(
                compile_s=time.perf_counter() - start, temp_bytes=timing.temp_bytes(executable)
            )
            run = functools.partial(executable, *spec.args)
            out, first = timing.call_seconds(run)
        except Exception as exc:  # A peer out of memory must not lose jaxtrace's figures.
            if spec.required:
                raise
            entry.update(valid=False, note=f"{type(exc).__name__}: {exc}"[:300])
            continue
        entry.update(first_call_s=first, check=spec.check(out))
        message = entry["check"]["message"]
        if not entry["check"]["passed"] and not spec.required:
            entry.update(valid=False, note=f"invalid: {message}")
        elif first > settings.peer_limit_s:
            entry["note"] = f"timed by its checking call alone ({first:.1f} s > --peer-limit)"
            times[spec.name] = [first]
        else:
            timed[spec.name] = run
        if not entry["check"]["passed"] and spec.required:
            record["status"] = "MISMATCH"
            record["failures"].append(f"{spec.name}: {message}")

    calls = []
    for name, run in timed.items():
        last = record["programs"][name]["first_call_s"]
        for _ in range(WARMUP_CALLS if last < SLOW_CALL_S else 0):
            last = timing.call_seconds(run)[1]
        calls.append(timing.calls_per_round(last))
        record["programs"][name]["calls_per_round"] = calls[-1]
    rounds = timing.interleaved(list(timed.values()), calls, settings.repeats, deadline)
    times |= dict(zip(timed, rounds, strict=True))
    times |= {name: times[same] for name, same in aliases.items() if same in times}
    for name, t in times.items():
        stats = {"median_s": timing.median(t), "min_s": min(t), "max_s": max(t), "times_s": t}
        record["programs"][name].update(stats)
    record["repeats"] = max(map(len, rounds), default=0)
    return times


def _run(
    record: dict[str, Any],
    case: Case,
    device: jax.Device,
    settings: Settings,
    body: Callable[[np.ndarray, jax.Array, Callable[[Any], dict[str, Any]]], None],
) -> dict[str, Any]:
    """Runs ``body(x_host, x, check)`` on the case's input, ``check`` against the reference.

    An exception marks the record as an error instead of ending the sweep.
    """
    started = time.perf_counter()
    try:
        if case.function == NOTEARS:
            x_host = make_notears_input(case.shape, case.dtype, settings.seed)
            ref, scale = checks.notears_reference(x_host)
        else:
            x_host = make_input(case.shape, case.dtype, settings.seed)
            ref, scale = checks.reference_output(x_host, case.function, case.mode), None
        x = jax.device_put(x_host, device)
        body(x_host, x, lambda out: checks.compare(out, ref, case.mode, case.dtype, scale))
    except Exception as exc:  # One broken case (e.g. out of memory) must not lose the others.
        record["status"] = "error"
        record["failures"].append(f"{type(exc).__name__}: {exc}")
        record["traceback"] = traceback.format_exc(limit=8)
    record["wall_s"] = time.perf_counter() - started
    return record


def run_peer_case(case: Case, device: jax.Device, settings: Settings) -> dict[str, Any]:
    """jaxtrace (method auto, eigh, expm) against every peer of :data:`programs.PEERS`.

    ``ratios`` holds each valid peer's time over jaxtrace's (method auto) and
    ``best_peer``, the fastest valid peer's.
    """
    # Asked, not assumed: another part of the project owns this rule.
    auto = methods.auto(
        platform=jax.default_backend(), k=case.k, batch=case.batch, dtype=jnp.dtype(case.dtype)
    )
    record = _record("peer", case, case.label, auto)

    def body(x_host: np.ndarray, x: jax.Array, check: Callable[[Any], dict[str, Any]]) -> None:
        fns = {"jaxtrace": programs.jaxtrace_fn(case.function)}
        fns |= {f"jaxtrace_{m}": programs.jaxtrace_fn(case.function, m) for m in programs.METHODS}
        prec = settings.peer_precision
        fns |= {p: programs.peer_fn(p, case.function, prec) for p in programs.PEERS}
        specs = [
            Spec(name, programs.with_grad(fn, case.mode), (x,), check, name not in programs.PEERS)
            for name, fn in fns.items()
        ]
        times = measure(record, specs, settings)
        progs = record["programs"]
        same = [m for m in programs.METHODS if progs[f"jaxtrace_{m}"].get("same_program_as")]
        if same != [auto]:  # the lowered programs tell which method auto used
            record["notes"].append(f"method auto compiled as {same}, not {auto}")
        peers = [p for p in programs.PEERS if p in times]
        for p in peers:
            record["ratios"][p] = timing.ratio(times[p], times["jaxtrace"], f"{p}/jaxtrace")
        if peers:
            best = min(peers, key=lambda p: timing.median(times[p]))
            record["ratios"]["best_peer"] = {**record["ratios"][best], "peer": best}

    return _run(record, case, device, settings, body)


def run_core_case(shape: tuple[int, ...], device: jax.Device, settings: Settings) -> dict[str, Any]:
    """The eigh method's value and gradient (float32) against its core: ``ratios["core"]``."""
    case = Case(tuple(shape), "float32", "value_and_grad")
    record = _record("core", case, f"core {case.label}", "eigh")

    def body(x_host: np.ndarray, x: jax.Array, check: Callable[[Any], dict[str, Any]]) -> None:
        fn = programs.with_grad(programs.jaxtrace_fn("trace", "eigh"), case.mode)
        specs = [Spec("jaxtrace_eigh", fn, (x,), check)]
        times = measure(
            record, [*specs, Spec("core", programs.core_program(), (x,), check)], settings
        )
        record["ratios"]["core"] = timing.ratio(
            times["jaxtrace_eigh"], times["core"], "jaxtrace_eigh/core"
        )

    return _run(record, case, device, settings, body)


def run_hvp_case(
    shape: tuple[int, ...], function: str, method: str, device: jax.Device, settings: Settings
) -> dict[str, Any]:
    """The forward-over-reverse HVP against value-and-grad (float32): ``ratios["hvp"]``."""
    case = Case(tuple(shape), "float32", "value_and_grad", function)
    label = f"hvp {method} {case.label.removesuffix(' value_and_grad')}"
    record = _record("hvp", case, label, method)

    def body(x_host: np.ndarray, x: jax.Array, check: Callable[[Any], dict[str, Any]]) -> None:
        v_host = make_input(case.shape, case.dtype, settings.seed + 1)
        ref_grad = checks.reference(x_host, function)[1]
        ref_hvp = checks.reference_hvp(x_host, v_host, function)

        def check_hvp(out: Any) -> dict[str, Any]:
            errors = {
                "grad": checks.rel_err(out[0], ref_grad, elementwise=False),
                "hvp": checks.rel_err(out[1], ref_hvp, elementwise=False),
            }
            return checks.verdict(errors, checks.RTOL[case.dtype], {"grad": out[0], "hvp": out[1]})

        hvp = programs.hvp_program(function, method)
        vg = programs.with_grad(programs.jaxtrace_fn(function, method), case.mode)
        args = (x, jax.device_put(v_host, device))
        specs = [Spec("hvp", hvp, args, check_hvp), Spec("value_and_grad", vg, (x,), check)]
        times = measure(record, specs, settings)
        record["ratios"]["hvp"] = timing.ratio(
            times["hvp"], times["value_and_grad"], "hvp/value_and_grad"
        )

    record["mode"] = "hvp"
    return _run(record, case, device, settings, body)


def run_notears_case(
    shape: tuple[int, ...], device: jax.Device, settings: Settings
) -> dict[str, Any]:
    """NOTEARS' ``h(W)``, value and gradient (float32): ``trace_expm`` against ``peer_expm``.

    ``ratios["peer_expm"]``: the peer's time over jaxtrace's; ``memory_ratio``:
    jaxtrace's compiled temporary memory over the peer's (None if not reported).
    """
    case = Case(tuple(shape), "float32", "value_and_grad", NOTEARS)
    record = _record("notears", case, case.label, None)

    def body(x_host: np.ndarray, w: jax.Array, check: Callable[[Any], dict[str, Any]]) -> None:
        fns = {"trace_expm": programs.notears_fn}
        fns["peer_expm"] = programs.notears_peer_fn(settings.peer_precision)
        specs = [
            Spec(name, programs.with_grad(fn, case.mode), (w,), check, name == "trace_expm")
            for name, fn in fns.items()
        ]
        times = measure(record, specs, settings)
        if "peer_expm" in times:
            record["ratios"]["peer_expm"] = timing.ratio(
                times["peer_expm"], times["trace_expm"], "peer_expm/trace_expm"
            )
        a, b = (record["programs"][name].get("temp_bytes") for name in fns)
        record["memory_ratio"] = a / b if a is not None and b else None

    return _run(record, case, device, settings, body)

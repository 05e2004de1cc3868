"""The command line: ``python -m benchmarks [--full] [options]``."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import budget, cases, checks, environment, report, runner

JSON_NAME = "benchmark.json"
MARKDOWN_NAME = "benchmark.md"
PLOT_NAME = "benchmark.png"

# Defaults that differ between the quick sweep and --full.
QUICK = {"dtypes": "float32", "mode": "value_and_grad", "repeats": 7, "budget": 15.0}
FULL = {"dtypes": "float32,float64", "mode": "both", "repeats": 10, "budget": 120.0}


def _shapes_arg(text: str) -> tuple[tuple[int, ...], ...]:
    """``--shapes`` with the parser's own error message on bad input."""
    try:
        return cases.parse_shapes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no side effects)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark jaxtrace.trace_expm_gram against jnp.trace(jax.scipy.linalg.expm(x @ x.T)), "
            "against its own core (Gram, eigh, two products) and its HVP against value-and-grad. "
            "Without --full, a quick sweep (about a minute on 2 CPU cores)."
        ),
    )
    p.add_argument(
        "--full", action="store_true", help="the complete sweep (all shapes, dtypes, modes)"
    )
    p.add_argument(
        "--shapes",
        type=_shapes_arg,
        help="comma-separated shapes, batch dimensions first, e.g. 2048x64,8x1024x32x16",
    )
    p.add_argument(
        "--dtypes", help="float32, float64 or both, comma-separated (quick float32, full both)"
    )
    p.add_argument(
        "--mode",
        choices=("value", "value_and_grad", "both"),
        help="what is computed (quick value_and_grad, full both)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmark-results"),
        help="output directory for benchmark.json, .md and .png (benchmark-results)",
    )
    p.add_argument(
        "--platform",
        choices=("cpu", "gpu", "tpu"),
        help="device platform (default: JAX's default backend)",
    )
    p.add_argument("--repeats", type=int, help="timed rounds per case (quick 7, full 10)")
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls after the checking call; none for calls over 1 s (3)",
    )
    p.add_argument(
        "--budget",
        type=float,
        help="seconds per case; slow cases get fewer repeats, at least 3 (quick 15, full 120)",
    )
    p.add_argument(
        "--peer-limit",
        type=float,
        default=30.0,
        help="skip the peer where one call is estimated above this many seconds (30)",
    )
    p.add_argument(
        "--peer-max-n",
        type=int,
        default=8192,
        help="skip the peer where its n x n matrix has n above this (8192)",
    )
    p.add_argument(
        "--peer-precision",
        choices=("highest", "default"),
        default="highest",
        help="matmul precision of the peer; jaxtrace always uses highest (highest)",
    )
    p.add_argument(
        "--core-shape",
        default="1024x768",
        help="shape of the jaxtrace-vs-core row, or 'none' (1024x768)",
    )
    p.add_argument(
        "--hvp-shape", default="1024x256", help="shape of the HVP row, or 'none' (1024x256)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (0)")
    return p


def _optional_shape(text: str, two_d: bool) -> tuple[int, ...] | None:
    """A shape, or None for ``"none"``; ``two_d`` refuses batch dimensions."""
    if text.strip().lower() == "none":
        return None
    shape = cases.parse_shape(text)
    if two_d and len(shape) != 2:
        raise ValueError(f"bad shape {text!r}: the core row takes a single matrix n x m")
    return shape


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and completes the arguments (sweep defaults, validated lists).

    Args:
      argv: arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
      The namespace, with ``shapes``, ``dtypes``, ``modes``, ``repeats``,
      ``budget``, ``core_shape`` and ``hvp_shape`` resolved.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = FULL if args.full else QUICK
    try:
        args.sweep = "full" if args.full else "quick"
        if args.shapes is None:
            args.shapes = cases.FULL_SHAPES if args.full else cases.QUICK_SHAPES
        else:
            args.sweep += " (custom shapes)"
        args.dtypes = cases.parse_choices(args.dtypes or defaults["dtypes"], cases.DTYPES, "dtypes")
        mode = args.mode or defaults["mode"]
        args.modes = cases.MODES if mode == "both" else (mode,)
        args.core_shape = _optional_shape(args.core_shape, two_d=True)
        args.hvp_shape = _optional_shape(args.hvp_shape, two_d=False)
    except ValueError as exc:
        parser.error(str(exc))
    args.repeats = defaults["repeats"] if args.repeats is None else args.repeats
    args.budget = defaults["budget"] if args.budget is None else args.budget
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def _tasks(
    args: argparse.Namespace, device: Any, gflops: dict[str, float], settings: runner.Settings
) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """The sweep as (label, thunk) pairs: peer cases, then the core and HVP rows."""
    tasks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (c.label, lambda c=c: runner.run_peer_case(c, device, gflops[c.dtype], settings))
        for c in cases.build_cases(args.shapes, args.dtypes, args.modes)
    ]
    if args.core_shape:
        shape = args.core_shape
        tasks.append(
            (
                f"core {cases.format_shape(shape)}",
                lambda: runner.run_core_case(shape, "float32", device, settings),
            )
        )
    if args.hvp_shape:
        shape_h = args.hvp_shape
        tasks.append(
            (
                f"hvp {cases.format_shape(shape_h)}",
                lambda: runner.run_hvp_case(shape_h, "float32", device, settings),
            )
        )
    return tasks


def _one_line(rec: dict[str, Any]) -> str:
    """A progress line for a finished record."""
    times = ", ".join(
        f"{name} {report.format_seconds(stats['median_s'])}"
        for name, stats in rec["programs"].items()
    )
    ratio = rec["ratio"]
    ratio_text = f", {ratio['definition']} {report.format_ratio(ratio['median'])}" if ratio else ""
    return f"{rec['label']} [{rec['kind']}]: {rec['status']}; {times}{ratio_text}"


def _failures(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per record whose check failed or which raised."""
    out = []
    for rec in records:
        if rec["status"] in ("MISMATCH", "error"):
            detail = rec.get("error") or (rec.get("check") or {}).get("message", "")
            out.append(f"{rec['label']} [{rec['kind']}]: {rec['status']}: {detail}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the sweep and writes the results.

    Args:
      argv: arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
      0 if every check passed, 1 if a check failed or a case raised, 2 if the
      requested platform is not available.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # The bench extras (tqdm, matplotlib) are imported only when a run needs them.
    import jax
    from tqdm import tqdm

    from benchmarks import plot

    environment.configure(args.dtypes)
    try:
        device = environment.select_device(args.platform)
    except RuntimeError as exc:
        print(f"error: platform {args.platform!r} is not available: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    limits = budget.Limits(args.peer_limit, args.peer_max_n, args.budget)
    settings = runner.Settings(args.repeats, args.warmup, limits, args.peer_precision, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (args.out / n for n in (JSON_NAME, MARKDOWN_NAME, PLOT_NAME))

    results: dict[str, Any] = {
        "schema": "jaxtrace-benchmarks/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sweep": args.sweep,
        "environment": environment.describe(device, argv),
        "settings": {
            "shapes": [list(s) for s in args.shapes],
            "dtypes": list(args.dtypes),
            "modes": list(args.modes),
            "repeats": args.repeats,
            "warmup": args.warmup,
            "case_budget_s": args.budget,
            "min_repeats": budget.MIN_REPEATS,
            "peer_limit_s": args.peer_limit,
            "peer_max_n": args.peer_max_n,
            "peer_precision": args.peer_precision,
            "core_shape": None if args.core_shape is None else list(args.core_shape),
            "hvp_shape": None if args.hvp_shape is None else list(args.hvp_shape),
            "seed": args.seed,
            "rtol": dict(checks.RTOL),
            "core_target": runner.CORE_TARGET,
            "hvp_target": runner.HVP_TARGET,
        },
        "calibration": {},
        "records": [],
        "failures": [],
    }
    with jax.default_device(device):
        # The peer's cost model needs this machine's matmul rate, per dtype.
        gflops = {d: budget.matmul_gflops(d, device) for d in args.dtypes}
        results["calibration"] = {"matmul_gflops": gflops, "matmul_size": 1024}
        tasks = _tasks(args, device, gflops, settings)
        bar = tqdm(tasks, desc="benchmarks", unit="case", file=sys.stderr, dynamic_ncols=True)
        for label, thunk in bar:
            bar.set_postfix_str(label)
            rec = thunk()
            results["records"].append(rec)
            bar.write(_one_line(rec), file=sys.stderr)
            if rec["status"] in ("MISMATCH", "error"):
                bar.write(f"!!! {_failures([rec])[0]}", file=sys.stderr)
            # Written after every case, so an interrupted --full run keeps what it measured.
            report.write_json(results, json_path)
        bar.close()

    results["failures"] = _failures(results["records"])
    results["wall_s"] = time.perf_counter() - started
    results["load_average_at_end"] = environment.load_average()
    report.write_json(results, json_path)
    plotted = plot.write_plot(results, png_path)
    report.write_markdown(results, md_path, PLOT_NAME if plotted else None)
    print(report.terminal(results))
    print(
        f"\nWrote {json_path}, {md_path}" + (f", {png_path}" if plotted else " (nothing to plot)")
    )
    print(f"Total {results['wall_s']:.0f} s.")
    if results["failures"]:
        print("\nFAILED CHECKS:\n" + "\n".join(results["failures"]), file=sys.stderr)
        return 1
    return 0

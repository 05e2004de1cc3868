"""The command line: ``python -m benchmarks [--full] [options]``."""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import cases, checks, environment, flops, programs, report, runner, targets

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "benchmark.json", "benchmark.md", "benchmark.png"
# Defaults that differ between the quick sweep and --full.
# Quick rounds: 11, since a case near a target (plain evaluation of wide 64x2048 is
# Gram-bound, about 1.2x its peer) moves by 0.8-1.4x from round to round here.
QUICK = {"dtypes": "float32", "repeats": 11, "budget": 15.0}
FULL = {"dtypes": "float32,float64", "repeats": 10, "budget": 120.0}
PRECISIONS = ("highest", "default")  # jaxtrace always uses highest
DESCRIPTION = (
    "Benchmark jaxtrace.trace_expm_gram and log_trace_expm_gram (method auto, eigh and expm) "
    "against three peers (jnp.trace(expm(x @ x.T)), the same on the smaller Gram, and eigvalsh), "
    "the eigh method against its core, HVPs against value-and-grad and NOTEARS' h(W) = "
    "trace_expm(W * W) - d against autodiff of jax.scipy.linalg.expm; check the targets and "
    "tabulate a flop model. Without --full, a quick sweep of 20 cases and 8 extra rows (core, "
    "HVPs, NOTEARS): about 5 minutes on 2 idle CPU cores. --full runs 64 "
    "cases, float64 too, and the same extra rows: expect well over an hour there."
)


def _shapes(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        return tuple(cases.parse_shape(s) for s in text.split(",") if s.strip())
    except ValueError as exc:  # argparse's own message for bad input
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape_or_none(text: str) -> tuple[int, ...] | None:
    return None if text.strip().lower() == "none" else _shapes(text)[0]


def _square_shapes(text: str) -> tuple[tuple[int, ...], ...]:
    shapes = () if text.strip().lower() == "none" else _shapes(text)
    if any(s[-1] != s[-2] for s in shapes):
        raise argparse.ArgumentTypeError(f"NOTEARS shapes must be square (d x d): {text!r}")
    return shapes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no side effects)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    add = p.add_argument
    add("--full", action="store_true", help="every shape, float32 and float64")
    add("--shapes", type=_shapes, help="e.g. 2048x64,8x1024x32x16 (batch dimensions first)")
    add("--dtypes", help="float32 and/or float64, comma-separated (quick float32, full both)")
    add("--mode", choices=("value", "value_and_grad", "both"), default="both", help="(both)")
    add("--functions", default="trace,log_trace", help="trace and/or log_trace (both)")
    add(
        "--out",
        type=Path,
        default=Path("benchmark-results"),
        metavar="DIR",
        help="where benchmark.json, .md and .png go (benchmark-results)",
    )
    add("--platform", choices=("cpu", "gpu", "tpu"), help="(JAX's default backend)")
    add("--repeats", type=int, help="most timed rounds per case (quick 11, full 10)")
    add(
        "--budget",
        type=float,
        metavar="S",
        help="no new round once a case has taken S seconds, after 3 rounds (quick 15, full 120)",
    )
    add(
        "--peer-limit",
        type=float,
        default=30.0,
        metavar="S",
        help="a program whose checking call takes over S seconds is timed by it alone (30)",
    )
    add(
        "--peer-precision",
        choices=PRECISIONS,
        default="highest",
        help="matmul precision of the peers; jaxtrace always uses highest (highest)",
    )
    add(
        "--core-shape",
        type=_shape_or_none,
        default=(1024, 768),
        help="n x m of the core row, or none (1024x768)",
    )
    add(
        "--hvp-shape",
        type=_shape_or_none,
        default=(1024, 256),
        help="shape of the HVP rows, or none (1024x256)",
    )
    add(
        "--notears-shapes",
        type=_square_shapes,
        default=cases.NOTEARS_SHAPES,
        metavar="SHAPES",
        help="shapes of W of the NOTEARS rows (float32 value and gradient), or none "
        "(100x100,64x20x20,500x500)",
    )
    add("--seed", type=int, default=0, help="seed of the random inputs (0)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the arguments and completes the sweep's defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = FULL if args.full else QUICK
    args.sweep = ("full" if args.full else "quick") + (" (custom shapes)" if args.shapes else "")
    args.shapes = args.shapes or (cases.FULL_SHAPES if args.full else cases.QUICK_SHAPES)
    try:
        args.dtypes = cases.parse_choices(args.dtypes or defaults["dtypes"], cases.DTYPES, "dtypes")
        args.functions = cases.parse_choices(args.functions, cases.FUNCTIONS, "functions")
    except ValueError as exc:
        parser.error(str(exc))
    if args.core_shape is not None and len(args.core_shape) != 2:
        parser.error("--core-shape takes a single matrix, n x m")
    args.modes = cases.MODES if args.mode == "both" else (args.mode,)
    args.repeats = defaults["repeats"] if args.repeats is None else args.repeats
    args.budget = defaults["budget"] if args.budget is None else args.budget
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def _tasks(args: argparse.Namespace, device: Any, settings: runner.Settings) -> list[tuple]:
    """The sweep as (label, thunk) pairs: peer cases, then the core, HVP and NOTEARS rows."""
    tasks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (c.label, lambda c=c: runner.run_peer_case(c, device, settings))
        for d in args.dtypes
        for fn in args.functions
        for md in args.modes
        for c in (cases.Case(s, d, md, fn) for s in args.shapes)
    ]
    if args.core_shape:
        tasks.append(
            ("core", functools.partial(runner.run_core_case, args.core_shape, device, settings))
        )
    for fn in args.functions if args.hvp_shape else ():
        for m in programs.METHODS:
            hvp = functools.partial(runner.run_hvp_case, args.hvp_shape, fn, m, device, settings)
            tasks.append((f"hvp {fn} {m}", hvp))
    for shape in args.notears_shapes:
        notears = functools.partial(runner.run_notears_case, shape, device, settings)
        tasks.append((f"notears {cases.format_shape(shape)}", notears))
    return tasks


def _one_line(rec: dict[str, Any]) -> str:
    """A progress line for a finished record."""
    times = ", ".join(
        f"{report.SHORT.get(n, n)} {report.format_seconds(p.get('median_s'))}"
        for n, p in rec["programs"].items()
    )
    ratios = ", ".join(f"{k} {report.format_ratio(r['median'])}" for k, r in rec["ratios"].items())
    return f"{rec['label']}: {rec['status']}; {times}; {ratios}"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the sweep and writes the results.

    Returns:
      0 if every check passed, 1 if a jaxtrace check failed or a case raised
      (targets never change it), 2 if the requested platform is not available.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # The bench extras (tqdm, matplotlib) are imported only when a run needs them.
    import jax
    from tqdm import tqdm

    from benchmarks import plot

    try:
        device = environment.setup(args.dtypes, args.platform)
    except RuntimeError as exc:
        print(f"error: platform {args.platform!r} is not available: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    settings = runner.Settings(
        args.repeats, args.budget, args.peer_limit, args.peer_precision, args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (args.out / n for n in (JSON_NAME, MARKDOWN_NAME, PLOT_NAME))
    env = environment.describe(device, argv)
    names = ("shapes", "dtypes", "modes", "functions", "repeats", "budget", "peer_limit")
    names += ("peer_precision", "core_shape", "hvp_shape", "notears_shapes", "seed")
    results: dict[str, Any] = {
        "schema": "jaxtrace-benchmarks/2",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sweep": args.sweep,
        "environment": env,
        "settings": {n: getattr(args, n) for n in names} | {"rtol": dict(checks.RTOL)},
        "records": [],
        "targets": [],
        "flops": [],
        "failures": [],
    }
    if environment.load_warning(env):
        print(environment.load_warning(env), file=sys.stderr)
    with jax.default_device(device):
        bar = tqdm(_tasks(args, device, settings), desc="benchmarks", unit="case", file=sys.stderr)
        for label, thunk in bar:
            bar.set_postfix_str(label)
            rec = thunk()
            results["records"].append(rec)
            bar.write(_one_line(rec), file=sys.stderr)
            results["failures"] += [f"{rec['label']}: {f}" for f in rec["failures"]]
            # Written after every case, so an interrupted --full run keeps what it measured.
            report.write_json(results, json_path)
        bar.close()
        results["flops"] = [
            flops.value_and_grad_flops(s, d, args.seed) for d in args.dtypes for s in args.shapes
        ]
    results["targets"] = targets.evaluate(results["records"])
    results["wall_s"] = time.perf_counter() - started
    results["load_average_at_end"] = environment.load_average()
    report.write_json(results, json_path)
    plotted = plot.write_plot(results, png_path)
    md_path.write_text(report.markdown(results, PLOT_NAME if plotted else None))
    print(report.markdown(results))
    print(f"\nWrote {json_path}, {md_path}" + (f", {png_path}" if plotted else " (no plot)"))
    print(f"Total {results['wall_s']:.0f} s.")
    if results["failures"]:
        print("\nFAILED CHECKS:\n" + "\n".join(results["failures"]), file=sys.stderr)
        return 1
    return 0

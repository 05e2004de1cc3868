"""The written results: terminal tables, the JSON file and the Markdown file.

The three sections (jaxtrace against the peer, against its core, and the HVP)
share one table layout: two programs, A and B, their medians, the median of
the per-round ratios, compiled temporary memory, the correctness check and a
footnote for anything skipped or failed, so nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SECTIONS = {
    "peer": ("jaxtrace against the peer", "jaxtrace", "peer"),
    "core": ("jaxtrace against its core (value and gradient)", "jaxtrace", "core"),
    "hvp": ("Hessian-vector product against value and gradient", "hvp", "value_and_grad"),
}
RATIO_NOTES = {
    "peer": "peer/jaxtrace: the median of per-round ratios; above 1, jaxtrace is faster.",
    "core": (
        "jaxtrace/core: the core is the Gram product, one eigh, V diag(2e^mu) V^T and "
        "x @ W; target <= 1.2."
    ),
    "hvp": "hvp/value_and_grad: jax.jvp(jax.grad(f)) against jax.value_and_grad(f); target <= 3.",
}


def format_seconds(seconds: float | None) -> str:
    """``0.0123`` -> ``"12.3 ms"``; None -> ``"-"``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def format_ratio(ratio: float) -> str:
    """``1114.09`` -> ``"1114x"``, ``2.251`` -> ``"2.25x"``."""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def format_bytes(size: int | None) -> str:
    """``8392856`` -> ``"8.0 MiB"``; None (backend does not report) -> ``"n/a"``."""
    if size is None:
        return "n/a"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _fmt_err(value: float | None) -> str:
    """A relative error in scientific notation, ``"-"`` if absent."""
    return "-" if value is None else f"{value:.1e}"


def _median(record: dict[str, Any], program: str) -> float | None:
    """A program's median time, None if it did not run."""
    stats = record["programs"].get(program)
    return None if stats is None else stats["median_s"]


def _temp(record: dict[str, Any], program: str) -> str:
    """A program's compiled temporary memory, formatted."""
    stats = record["programs"].get(program)
    return "-" if stats is None else format_bytes(stats["temp_bytes"])


def table(
    records: Sequence[dict[str, Any]], kind: str
) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and footnotes of one section.

    Args:
      records: the section's records.
      kind: ``"peer"``, ``"core"`` or ``"hvp"``.

    Returns:
      ``(headers, rows, notes)``; a row's last cell points to its notes.
    """
    _, a, b = SECTIONS[kind]
    ratio_name = f"{b}/{a}" if kind == "peer" else f"{a}/{b}"
    headers = ["case", "shape", "dtype", "mode", a, b, ratio_name]
    if kind != "peer":
        headers.append("target")
    headers += [
        f"mem {a}",
        f"mem {b}",
        "err A-B",
        "err A-f64",
        "err B-f64",
        "status",
        "reps",
        "note",
    ]
    rows: list[list[str]] = []
    notes: list[str] = []
    for rec in records:
        ratio = rec["ratio"]
        row = [
            rec["family"],
            "x".join(str(d) for d in rec["shape"]),
            rec["dtype"],
            rec["mode"],
            format_seconds(_median(rec, a)),
            format_seconds(_median(rec, b)),
            "-" if ratio is None else format_ratio(ratio["median"]),
        ]
        if kind != "peer":
            target = rec.get("target") or {}
            met = target.get("met")
            row.append(f"<={target.get('max')} " + {True: "met", False: "MISSED", None: "-"}[met])
        check = rec.get("check") or {}
        row += [
            _temp(rec, a),
            _temp(rec, b),
            _fmt_err(check.get("max_error") if check.get("reference") == b else None),
            _fmt_err((rec["reference_errors"].get(a) or {}).get("max_error")),
            _fmt_err((rec["reference_errors"].get(b) or {}).get("max_error")),
            rec["status"],
            str(rec["repeats"]),
        ]
        reasons = [
            text
            for text in (rec.get("skip_reason"), rec.get("error"), check.get("message"))
            if text
        ]
        if reasons:
            notes.append(f"[{len(notes) + 1}] {rec['label']}: " + "; ".join(reasons))
            row.append(f"[{len(notes)}]")
        else:
            row.append("")
        rows.append(row)
    return headers, rows, notes


def render_text(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, rule, *body])


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def legend(kind: str) -> str:
    """What the columns of a section mean."""
    _, a, b = SECTIONS[kind]
    return (
        f"A = {a}, B = {b}. {RATIO_NOTES[kind]} err A-B: relative error of A against B; "
        "err A-f64, B-f64: against an independent float64 reference (NumPy SVD; for the "
        "HVP, central differences of its gradient). mem: compiled temporary memory."
    )


def _by_kind(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The records grouped by section, in section order."""
    return {kind: [r for r in results["records"] if r["kind"] == kind] for kind in SECTIONS}


def _environment_line(env: dict[str, Any]) -> str:
    """Device and versions in one line."""
    return (
        f"{env['device_kind']} ({env['platform']}), JAX {env['jax_version']}, "
        f"jaxlib {env['jaxlib_version']}, Python {env['python_version']}, "
        f"{env['cpu_count']} CPUs"
    )


def load_warning(results: dict[str, Any]) -> str | None:
    """A warning when other processes held the CPUs as the run started.

    On CPU, LAPACK (eigh, LU) runs in its own thread pool whose workers spin
    while waiting; on an oversubscribed host its calls slow down erratically,
    by up to two orders of magnitude, which no number of repeats averages out.
    The load at the start (1-minute average above half the CPU count) is the
    signal: the load at the end includes this run's own threads.
    """
    env = results["environment"]
    cpus = env.get("cpu_count") or 0
    load = env.get("load_average")
    if env.get("platform") != "cpu" or not cpus or not load or load[0] <= cpus / 2:
        return None
    advice = "Re-run on an idle host"
    if not (env.get("env") or {}).get("OPENBLAS_NUM_THREADS"):
        advice += ", or with OPENBLAS_NUM_THREADS=1 (recorded under environment.env)"
    return (
        f"WARNING: busy host (1-min load {load[0]:.1f} on {cpus} CPUs at the start): CPU "
        f"timings, LAPACK-based ones (eigh) most of all, are unreliable. {advice}."
    )


def terminal(results: dict[str, Any]) -> str:
    """The tables of every non-empty section, with their footnotes, as plain text."""
    env = results["environment"]
    parts = [
        f"Device: {_environment_line(env)}; load average {env.get('load_average')} at start, "
        f"{results.get('load_average_at_end')} at end"
    ]
    warning = load_warning(results)
    if warning:
        parts.append(warning)
    for kind, records in _by_kind(results).items():
        if not records:
            continue
        headers, rows, notes = table(records, kind)
        parts += ["", f"== {SECTIONS[kind][0]} ==", render_text(headers, rows), legend(kind)]
        parts += notes
    return "\n".join(parts)


def markdown(results: dict[str, Any], plot_name: str | None) -> str:
    """The Markdown report: environment, settings, the sections and the plot."""
    env = results["environment"]
    settings = results["settings"]
    lines = [
        "# jaxtrace benchmarks",
        "",
        f"- Date: {results['created']}",
        f"- Device: {_environment_line(env)}",
        f"- Command: `{env['command']}`",
        f"- Host load average (1, 5, 15 min): {env.get('load_average')} at start, "
        f"{results.get('load_average_at_end')} at end; thread settings: "
        + (", ".join(f"{k}={v}" for k, v in env.get("env", {}).items() if v) or "none"),
        *([f"- **{load_warning(results)}**"] if load_warning(results) else []),
        f"- Sweep: {results['sweep']}; repeats requested: {settings['repeats']} "
        f"(interleaved A, B, A, B; fewer, never below 3, where a case exceeds its "
        f"{settings['case_budget_s']:g} s budget); warm-up calls: {settings['warmup']}",
        f"- Peer: `jnp.trace(jax.scipy.linalg.expm(x @ x.T))`, matmul precision "
        f"`{settings['peer_precision']}`; skipped where one call is estimated above "
        f"{settings['peer_limit_s']:g} s or n > {settings['peer_max_n']}",
        f"- Inputs: N(0, 1) * 0.5 / sqrt(max(n, m)), seed {settings['seed']}; "
        f"tolerances {settings['rtol']}",
        "- Times are medians; memory is compiled temporary memory "
        "(`memory_analysis().temp_size_in_bytes`, n/a where the backend does not report "
        "it); errors are relative (value: max over the batch; arrays: Frobenius norm).",
    ]
    for kind, records in _by_kind(results).items():
        if not records:
            continue
        headers, rows, notes = table(records, kind)
        lines += ["", f"## {SECTIONS[kind][0]}", "", render_markdown(headers, rows), ""]
        lines.append(legend(kind))
        if notes:
            lines += ["", *[f"- {n}" for n in notes]]
    if plot_name:
        lines += ["", "## Plot", "", f"![time against problem size]({plot_name})"]
    failures = results["failures"]
    lines += ["", "## Failures", ""]
    lines += [f"- {f}" for f in failures] if failures else ["None: every check passed."]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become None: strict JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(results: dict[str, Any], path: Path) -> None:
    """Writes the results as strict JSON (non-finite numbers as null)."""
    path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")


def write_markdown(results: dict[str, Any], path: Path, plot_name: str | None) -> None:
    """Writes the Markdown report."""
    path.write_text(markdown(results, plot_name))

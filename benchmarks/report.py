"""The written results: the JSON file and the Markdown report, also printed to the terminal.

The report's tables: jaxtrace against the peers, the core
and HVP rows, the NOTEARS rows, the targets and the flop model, with a numbered note for anything
invalid, skipped or failed, so that nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import targets
from benchmarks.environment import load_warning
from benchmarks.programs import PEERS

# Column names of the programs of a peer record.
SHORT = {
    "jaxtrace": "auto",
    "jaxtrace_eigh": "eigh",
    "jaxtrace_expm": "expm",
    "peer_card": "card",
    "peer_gram": "gram",
    "peer_eigvalsh": "eigvalsh",
}
LEGEND = (
    "auto, eigh, expm: jaxtrace with that method (auto's pick in column method); card: "
    "`jnp.trace(expm(x @ x.T))`, the design card's peer; gram: `jnp.trace(expm(x.T @ x)) + n - m` "
    "(the smaller Gram); eigvalsh: `sum(exp(eigvalsh(G))) + n - m`; log_trace rows use their log "
    "forms (`log(trace)`, `logsumexp`). card/auto and best/auto: medians of per-round ratios of "
    "the card's or the fastest valid peer's time over jaxtrace's (auto); above 1, jaxtrace is "
    "faster. mem: compiled temporary memory. err: largest relative error of jaxtrace's three "
    "programs against the float64 reference (NumPy SVD)."
)


def format_seconds(seconds: float | None) -> str:
    """``0.0123`` -> ``"12.3 ms"``; None -> ``"-"``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    unit, scale = next(
        (u, c) for u, c in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)) if seconds >= c or u == "us"
    )
    value = seconds / scale
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def format_ratio(ratio: float | None) -> str:
    """``1114.09`` -> ``"1114x"``, ``2.251`` -> ``"2.25x"``; None -> ``"-"``."""
    if ratio is None:
        return "-"
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def format_bytes(size: int | None) -> str:
    """``8392856`` -> ``"8.0 MiB"``; None (not reported) -> ``"n/a"``."""
    if size is None:
        return "n/a"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_flops(value: float) -> str:
    """``2.5e9`` -> ``"2.5 G"``."""
    exp = max(0, min(4, math.floor(math.log10(max(value, 1.0)) / 3)))
    return f"{value / 1000**exp:.3g} {' kMGT'[exp]}".rstrip()


def _cell(rec: dict[str, Any], name: str) -> str:
    prog = rec["programs"].get(name)
    if prog is None:
        return "-"
    return format_seconds(prog.get("median_s")) if prog.get("valid", True) else "invalid"


def _notes(rec: dict[str, Any]) -> list[str]:
    out = [f"{name}: {p['note']}" for name, p in rec["programs"].items() if p.get("note")]
    return out + rec["notes"] + rec["failures"]


def _with_note(row: list[str], rec: dict[str, Any], notes: list[str]) -> list[str]:
    """``row`` plus a pointer to the record's note, which joins ``notes``."""
    text = _notes(rec)
    if not text:
        return [*row, ""]
    notes.append(f"[{len(notes) + 1}] {rec['label']}: " + "; ".join(text))
    return [*row, f"[{len(notes)}]"]


def _ratio(rec: dict[str, Any], key: str) -> float | None:
    return (rec["ratios"].get(key) or {}).get("median")


def peer_table(records: Sequence[dict[str, Any]], notes: list[str]) -> tuple[list, list]:
    """Headers and rows of jaxtrace against the peers."""
    headers = ["function", "case", "shape", "dtype", "mode", "method", *SHORT.values()]
    headers += ["card/auto", "best/auto", "best", "mem auto", "mem card", "err", "status", "reps"]
    headers.append("note")
    rows = []
    for rec in records:
        progs = rec["programs"]
        errs = [
            p["check"]["max_error"] for n, p in progs.items() if n not in PEERS and p.get("check")
        ]
        best = rec["ratios"].get("best_peer") or {}
        row = [rec["function"], rec["family"], "x".join(map(str, rec["shape"])), rec["dtype"]]
        row += [rec["mode"], str(rec["method"]), *(_cell(rec, n) for n in SHORT)]
        row += [
            format_ratio(_ratio(rec, "peer_card")),
            format_ratio(best.get("median")),
            SHORT.get(best.get("peer", ""), "-"),
            format_bytes((progs.get("jaxtrace") or {}).get("temp_bytes")),
            format_bytes((progs.get("peer_card") or {}).get("temp_bytes")),
            f"{max(errs):.1e}" if errs else "-",
            rec["status"],
            str(rec["repeats"]),
        ]
        rows.append(_with_note(row, rec, notes))
    return headers, rows


def other_table(records: Sequence[dict[str, Any]], notes: list[str]) -> tuple[list, list]:
    """Headers and rows of the core and HVP comparisons (programs A and B)."""
    headers = ["comparison", "A", "B", "time A", "time B", "A/B", "target", "mem A", "mem B"]
    headers += ["status", "reps", "note"]
    rows = []
    for rec in records:
        (a, pa), (b, pb) = list(rec["programs"].items())[:2]
        key = rec["kind"]
        limit = targets.CORE_MAX if key == "core" else targets.HVP_MAX
        row = [rec["label"], a, b, _cell(rec, a), _cell(rec, b), format_ratio(_ratio(rec, key))]
        row += [
            f"<= {limit:g}",
            format_bytes(pa.get("temp_bytes")),
            format_bytes(pb.get("temp_bytes")),
        ]
        rows.append(_with_note([*row, rec["status"], str(rec["repeats"])], rec, notes))
    return headers, rows


def notears_table(records: Sequence[dict[str, Any]], notes: list[str]) -> tuple[list, list]:
    """Headers and rows of NOTEARS' ``h(W)``: ``trace_expm`` against ``peer_expm``."""
    headers = ["case", "shape", "dtype", "mode", "trace_expm", "peer_expm", "peer/jaxtrace"]
    headers += ["target", "mem trace_expm", "mem peer", "mem ratio", "mem target", "err"]
    headers += ["status", "reps", "note"]
    rows = []
    for rec in records:
        progs, shape = rec["programs"], tuple(rec["shape"])
        check = (progs.get("trace_expm") or {}).get("check")
        speed, (mem_shape, mem_limit) = targets.NOTEARS_VG.get(shape), targets.NOTEARS_MEMORY
        row = [rec["family"], "x".join(map(str, shape)), rec["dtype"], rec["mode"]]
        row += [_cell(rec, "trace_expm"), _cell(rec, "peer_expm")]
        row += [format_ratio(_ratio(rec, "peer_expm")), f">= {speed:g}" if speed else "-"]
        mem = [(progs.get(n) or {}).get("temp_bytes") for n in ("trace_expm", "peer_expm")]
        row += [*map(format_bytes, mem), format_ratio(rec.get("memory_ratio"))]
        row += [f"<= {mem_limit:g}" if shape == mem_shape else "-"]
        row += [f"{check['max_error']:.1e}" if check else "-", rec["status"], str(rec["repeats"])]
        rows.append(_with_note(row, rec, notes))
    return headers, rows


def flops_table(rows_in: Sequence[dict[str, Any]]) -> tuple[list, list]:
    """Headers and rows of the flop model (see :mod:`benchmarks.flops`)."""
    names = ["jaxtrace_expm", "jaxtrace_eigh", "peer_card", "peer_gram", "peer_eigvalsh"]
    headers = ["shape", "dtype", "k", "q", "card s", *(SHORT[n] for n in names)]
    headers += ["card/expm", "card/eigh", "per squaring"]
    rows = []
    for f in rows_in:
        fl = f["flops"]
        row = ["x".join(map(str, f["shape"])), f["dtype"], str(f["k"]), str(f["q"])]
        row += [str(f["card_squarings"]), *(format_flops(fl[n]) for n in names)]
        row += [format_ratio(fl["peer_card"] / fl["jaxtrace_expm"])]
        row += [format_ratio(fl["peer_card"] / fl["jaxtrace_eigh"])]
        rows.append([*row, format_flops(f["expm_per_squaring"])])
    return headers, rows


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, its columns aligned for the terminal too."""
    rows = [[c.replace("|", "\\|") for c in r] for r in [headers, *rows]]
    widths = [max(len(c) for c in col) for col in zip(*rows, strict=True)]
    lines = [rows[0], ["-" * w for w in widths], *rows[1:]]
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in lines
    )


def _sections(results: dict[str, Any]) -> list[tuple[str, tuple[list, list] | list[str], str]]:
    """(title, table or lines, legend) of every non-empty section, tables sharing one note list."""
    notes: list[str] = []
    records = results["records"]
    peer = [r for r in records if r["kind"] == "peer"]
    other = [r for r in records if r["kind"] in ("core", "hvp")]
    notears = [r for r in records if r["kind"] == "notears"]
    out: list[tuple[str, Any, str]] = []
    if peer:
        out.append(("jaxtrace against the peers", peer_table(peer, notes), LEGEND))
    if other:
        legend = (
            "core: the eigh method against its core (Gram, eigh, V diag(2e^mu) V^T, x @ W); "
            "hvp: jax.jvp(jax.grad(f)) against jax.value_and_grad(f), per method."
        )
        out.append(
            ("Core and Hessian-vector products (float32)", other_table(other, notes), legend)
        )
    if notears:
        legend = (
            "NOTEARS' acyclicity constraint h(W) = tr exp(W o W) - d, value and gradient of its "
            "sum over the batch: trace_expm: `jaxtrace.trace_expm(w * w) - d`; peer_expm: "
            "`jnp.trace(jax.scipy.linalg.expm(w * w)) - d`, vmapped, by autodiff. peer/jaxtrace: "
            "median of per-round ratios; mem ratio: compiled temporary memory trace_expm/peer. "
            "Inputs: W with N(0, 1) entries kept with probability 2/d, times 0.5. err: against "
            "SciPy's float64 expm, the value's error relative to tr exp(W o W) (h is formed as "
            "the trace minus d; a DAG's h is 0)."
        )
        out.append(("NOTEARS (float32)", notears_table(notears, notes), legend))
    if notes:
        out.append(("Notes", notes, ""))
    out.append(("Targets", targets.lines(results["targets"]), ""))
    if results.get("flops"):
        legend = (
            "Flops of one value-and-gradient call (whole batch) in the model of "
            "benchmarks/flops.py: q: squarings of the expm method on this input; card s: the "
            "card's peer's (16 under vmap); per squaring: flops each further squaring of the "
            "expm method adds. Estimates, not measurements."
        )
        out.append(("Flop model (value and gradient)", flops_table(results["flops"]), legend))
    return out


def _header(results: dict[str, Any]) -> list[str]:
    env, s = results["environment"], results["settings"]
    lines = [
        f"Device: {env['device_kind']} ({env['platform']}), JAX {env['jax_version']}, jaxlib "
        f"{env['jaxlib_version']}, Python {env['python_version']}, {env['cpu_count']} CPUs",
        f"Command: `{env['command']}`; sweep: {results['sweep']}",
        f"Load average (1, 5, 15 min): {env['load_average']} at start, "
        f"{results.get('load_average_at_end')} at end",
        f"Timing: up to {s['repeats']} interleaved rounds per case, no new one after "
        f"{s['budget']:g} s once 3 are done; a program slower than {s['peer_limit']:g} s per "
        f"call is timed by its checking call alone; peers' matmul precision: {s['peer_precision']}",
        f"Inputs: N(0, 1) * 0.5 / sqrt(max(n, m)), seed {s['seed']}; tolerances {s['rtol']}",
    ]
    warning = load_warning(env)
    return lines + ([warning] if warning else [])


def markdown(results: dict[str, Any], plot_name: str | None = None) -> str:
    """The report, in Markdown that reads as well in a terminal."""
    lines = ["# jaxtrace benchmarks", "", f"- Date: {results['created']}"]
    lines += [f"- {line}" for line in _header(results)]
    for title, body, legend in _sections(results):
        text = render(*body) if isinstance(body, tuple) else "\n".join(f"- {b}" for b in body)
        lines += ["", f"## {title}", "", text, *(["", legend] if legend else [])]
    if plot_name:
        lines += ["", "## Plot", "", f"![time per case]({plot_name})"]
    failures = [f"- {f}" for f in results["failures"]] or ["None: every check passed."]
    return "\n".join([*lines, "", "## Failures", "", *failures]) + "\n"


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

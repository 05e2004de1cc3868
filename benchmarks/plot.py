"""The PNG plot: time against problem size, jaxtrace and the peer, log-log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import format_ratio

MARKERS = {"square": "o", "tall": "^", "wide": "v", "batched": "s"}
COLORS = {"jaxtrace": "tab:blue", "peer": "tab:orange"}


def _plotted(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The peer-comparison records to plot: value-and-grad, or value if there is none."""
    timed = [r for r in records if r["kind"] == "peer" and "jaxtrace" in r["programs"]]
    for mode in ("value_and_grad", "value"):
        chosen = [r for r in timed if r["mode"] == mode]
        if chosen:
            return chosen, mode
    return [], "value_and_grad"


def _positions(records: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Plot abscissae: the size of ``x``, spread a little where cases share a size.

    Different shapes of the same size (2048x64, 4096x32 and 64x2048) are fanned
    out by up to +-15 %, float64 sits 4 % right of float32, so that no marker
    or label hides another; on a log axis spanning decades this stays readable
    as "the same size".
    """
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for rec in records:
        shapes = by_size.setdefault(rec["size"], [])
        if tuple(rec["shape"]) not in shapes:
            shapes.append(tuple(rec["shape"]))
    out = {}
    for rec in records:
        shapes = by_size[rec["size"]]
        rank = shapes.index(tuple(rec["shape"]))
        spread = 0.0 if len(shapes) == 1 else 0.3 * rank / (len(shapes) - 1) - 0.15
        shift = 0.04 if rec["dtype"] != "float32" else 0.0
        out[id(rec)] = rec["size"] * (1.0 + spread + shift)
    return out


def write_plot(results: dict[str, Any], path: Path) -> bool:
    """Draws median time against the number of elements of ``x`` and saves a PNG.

    One colour per program, one marker per case family, hollow markers for
    float64; a dotted line joins the two programs of a case, labelled with the
    peer/jaxtrace ratio. Skipped peers are listed under the axes.

    Args:
      results: the run's results (as written to JSON).
      path: where to write the PNG.

    Returns:
      True if a plot was written, False if there was nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")  # No display needed, on any machine.
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    records, mode = _plotted(results["records"])
    if not records:
        return False
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    positions = _positions(records)
    skipped = []
    lowest: dict[tuple[int, ...], tuple[float, float]] = {}
    for rec in records:
        x = positions[id(rec)]
        marker = MARKERS.get(rec["family"], "D")
        hollow = rec["dtype"] != "float32"
        points = {}
        for name, color in COLORS.items():
            stats = rec["programs"].get(name)
            if stats is None:
                continue
            points[name] = stats["median_s"]
            ax.plot(
                x,
                stats["median_s"],
                marker=marker,
                markersize=9,
                linestyle="none",
                color=color,
                markerfacecolor="white" if hollow else color,
                markeredgewidth=1.6,
                zorder=3,
            )
        shape = tuple(rec["shape"])
        low = min(points.values())
        if shape not in lowest or low < lowest[shape][1]:
            lowest[shape] = (x, low)
        if len(points) == 2 and rec["ratio"]:
            ax.plot([x, x], [points["jaxtrace"], points["peer"]], ":", color="0.6", zorder=2)
            # float32 labels left, float64 right: their markers sit side by side.
            ax.annotate(
                format_ratio(rec["ratio"]["median"]),
                (x, points["peer"]),
                textcoords="offset points",
                xytext=(7, 0) if hollow else (-7, 0),
                ha="left" if hollow else "right",
                va="center",
                fontsize=8,
                color="0.25",
            )
        elif rec.get("skip_reason"):
            skipped.append(f"{rec['label']}: {rec['skip_reason']}")
    for shape, (x, y) in lowest.items():
        # Each case's shape under its lowest marker: sizes alone do not tell them apart.
        ax.annotate(
            "x".join(map(str, shape)),
            (x, y),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            va="top",
            fontsize=7,
            color="0.35",
            rotation=90,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    lows = [y for _, y in lowest.values()]
    highs = [max(s["median_s"] for s in r["programs"].values()) for r in records]
    ax.set_ylim(min(lows) / 8, max(highs) * 2)  # room for the shape labels below
    xs = list(positions.values())
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)  # room for the ratio labels aside
    ax.set_xlabel("problem size: elements of x (batch x n x m)")
    ax.set_ylabel(f"median time per call [s] ({mode})")
    env = results["environment"]
    ax.set_title(
        f"tr expm(x x^T), {mode}: jaxtrace vs jnp.trace(expm(x @ x.T)); labels: peer/jaxtrace\n"
        f"{env['device_kind']} ({env['platform']}), JAX {env['jax_version']}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="none", label=n) for n, c in COLORS.items()
    ]
    families = sorted({r["family"] for r in records}, key=list(MARKERS).index)
    handles += [
        Line2D([], [], color="0.3", marker=MARKERS[f], linestyle="none", label=f) for f in families
    ]
    if any(r["dtype"] != "float32" for r in records):
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor="white",
                linestyle="none",
                label="float64 (hollow)",
            )
        )
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.9)
    if skipped:
        fig.text(0.01, 0.01, "\n".join(skipped), fontsize=7, va="bottom", wrap=True)
        fig.subplots_adjust(bottom=min(0.45, 0.12 + 0.025 * len(skipped)))
    fig.savefig(path)
    plt.close(fig)
    return True

"""The PNG plot: median time of every program per case, cases ordered by size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import SHORT

COLORS = {
    "jaxtrace": "tab:blue",
    "jaxtrace_eigh": "tab:cyan",
    "jaxtrace_expm": "tab:purple",
    "peer_card": "tab:orange",
    "peer_gram": "tab:red",
    "peer_eigvalsh": "tab:green",
}


def write_plot(results: dict[str, Any], path: Path) -> bool:
    """One panel per function: float32 value-and-grad (or value) times against ``x``'s size.

    Returns:
      True if a plot was written, False if there was nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")  # No display needed, on any machine.
    import matplotlib.pyplot as plt

    peer = [r for r in results["records"] if r["kind"] == "peer" and r["status"] != "error"]
    dtype = "float32" if any(r["dtype"] == "float32" for r in peer) else "float64"
    mode = "value_and_grad" if any(r["mode"] == "value_and_grad" for r in peer) else "value"
    chosen = [r for r in peer if r["dtype"] == dtype and r["mode"] == mode]
    functions = list(dict.fromkeys(r["function"] for r in chosen))
    if not functions:
        return False
    fig, axes = plt.subplots(1, len(functions), figsize=(7 * len(functions), 5.5), squeeze=False)
    for ax, fn in zip(axes[0], functions, strict=True):
        recs = sorted(
            (r for r in chosen if r["function"] == fn), key=lambda r: r["batch"] * r["n"] * r["m"]
        )
        for name, color in COLORS.items():
            points = [
                (i, r["programs"][name]["median_s"])
                for i, r in enumerate(recs)
                if "median_s" in r["programs"].get(name, {})
            ]
            if points:  # auto as a ring around the method it compiled to
                style = {"markersize": 13, "markerfacecolor": "none"} if name == "jaxtrace" else {}
                ax.plot(*zip(*points, strict=True), "o", color=color, label=SHORT[name], **style)
        ax.set_xticks(range(len(recs)), ["x".join(map(str, r["shape"])) for r in recs], fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("shape of x (batch first), by number of elements")
        ax.set_ylabel(f"median time per call [s], {dtype} {mode}")
        ax.set_title(f"{fn}: jaxtrace (auto, eigh, expm) and the peers", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    env = results["environment"]
    fig.suptitle(f"{env['device_kind']} ({env['platform']}), JAX {env['jax_version']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

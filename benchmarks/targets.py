"""The targets of issues #12 and #13 (NOTEARS), checked against a run's records (float32).

A target whose case was not run is reported as such (``met`` None), so that a
sweep which misses one says so. Targets are reported, never turned into the
exit status: that stays with the correctness checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.cases import FUNCTIONS, QUICK_SHAPES, format_shape
from benchmarks.programs import METHODS

# Fastest peer / jaxtrace, value and gradient.
BEST_PEER_VG = {
    (1024, 32, 16): 1.5,
    (4096, 8, 8): 1.5,
    (2048, 64): 1.15,
    (64, 2048): 1.15,
    (1024, 1024): 1.15,
}
BEST_PEER_VALUE = 1.0  # fastest peer / jaxtrace, value, every quick-sweep shape
CARD_TALL = ((2048, 64), 1000.0)  # card's peer / jaxtrace, value and gradient
CORE_MAX = 1.2  # jaxtrace (eigh) / core
HVP_MAX = 3.0  # HVP / value and gradient, every method
BEST = "fastest peer/jaxtrace"
NOTEARS_VG = {(100, 100): 3.0, (64, 20, 20): 6.0}  # peer_expm / trace_expm, value and grad
NOTEARS_MEMORY = ((100, 100), 0.25)  # compiled temporary memory, trace_expm / peer_expm


def _find(records: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first record whose fields equal ``match``."""
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def _target(
    name: str, rec: dict[str, Any] | None, key: str, op: str, threshold: float, what: str
) -> dict[str, Any]:
    """One target from the ratio ``key`` of ``rec`` (``what`` describes it)."""
    ratio = (rec or {}).get("ratios", {}).get(key) or {}
    value = ratio.get("median")
    met = None if value is None else bool(value >= threshold if op == ">=" else value <= threshold)
    return {
        "name": name,
        "case": None if rec is None else rec["label"],
        "ratio": what,
        "op": op,
        "threshold": threshold,
        "value": value,
        "met": met,
    }


def _memory(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """jaxtrace's compiled temporary memory at most the card's peer's, in every case."""
    worst = None
    for rec in records:
        progs = rec["programs"]
        a = (progs.get("jaxtrace") or {}).get("temp_bytes")
        b = (progs.get("peer_card") or {}).get("temp_bytes")
        if rec["kind"] == "peer" and a is not None and b:
            if worst is None or a / b > worst[0]:
                worst = (a / b, rec)
    what = "largest temp memory jaxtrace/peer_card"
    target = _target("memory, every case", None, "", "<=", 1.0, what)
    if worst is not None:
        target.update(case=worst[1]["label"], value=worst[0], met=worst[0] <= 1.0)
    return target


def evaluate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target, in a fixed order, from the records of a run."""
    out = []
    f32 = [r for r in records if r["dtype"] == "float32"]
    for fn in FUNCTIONS:
        peer = {"kind": "peer", "function": fn}
        for shape, threshold in BEST_PEER_VG.items():
            rec = _find(f32, **peer, shape=list(shape), mode="value_and_grad")
            name = f"{fn} value_and_grad {format_shape(shape)} vs best peer"
            out.append(_target(name, rec, "best_peer", ">=", threshold, BEST))
        for shape in QUICK_SHAPES:
            rec = _find(f32, **peer, shape=list(shape), mode="value")
            name = f"{fn} value {format_shape(shape)} vs best peer"
            out.append(_target(name, rec, "best_peer", ">=", BEST_PEER_VALUE, BEST))
        shape, threshold = CARD_TALL
        rec = _find(f32, **peer, shape=list(shape), mode="value_and_grad")
        name = f"{fn} value_and_grad {format_shape(shape)} vs card's peer"
        out.append(_target(name, rec, "peer_card", ">=", threshold, "card's peer/jaxtrace"))
    out.append(_memory(records))
    core = _find(records, kind="core")
    out.append(_target("core ratio", core, "core", "<=", CORE_MAX, "jaxtrace (eigh)/core"))
    for fn in FUNCTIONS:
        for method in METHODS:
            rec = _find(records, kind="hvp", function=fn, method=method)
            name = f"{fn} HVP, method {method}"
            out.append(_target(name, rec, "hvp", "<=", HVP_MAX, "hvp/value_and_grad"))
    notears = {tuple(r["shape"]): r for r in f32 if r["kind"] == "notears"}
    for shape, threshold in NOTEARS_VG.items():
        name = f"notears value_and_grad {format_shape(shape)} vs autodiff peer"
        what = "peer_expm/trace_expm"
        out.append(_target(name, notears.get(shape), "peer_expm", ">=", threshold, what))
    shape, limit = NOTEARS_MEMORY
    rec, what = notears.get(shape), "temp memory trace_expm/peer_expm"
    target = _target(f"notears memory {format_shape(shape)}", rec, "", "<=", limit, what)
    if (rec or {}).get("memory_ratio") is not None:
        target.update(value=rec["memory_ratio"], met=rec["memory_ratio"] <= limit)
    out.append(target)
    return out


def lines(targets: Sequence[dict[str, Any]]) -> list[str]:
    """A ``PASS`` or ``FAIL`` line per target that was run, and a count of the others."""
    out = []
    for t in targets:
        if t["met"] is not None:
            verdict = "PASS" if t["met"] else "FAIL"
            rule = f"{t['op']} {t['threshold']:g}"
            value = f"{t['value']:.0f}" if t["value"] >= 100 else f"{t['value']:.3g}"
            out.append(f"{verdict} {t['name']}: {t['ratio']} = {value} ({rule})")
    missing = [t["name"] for t in targets if t["met"] is None]
    if missing:
        out.append(
            f"NOT RUN ({len(missing)}, their cases not in this sweep): " + ", ".join(missing)
        )
    return out

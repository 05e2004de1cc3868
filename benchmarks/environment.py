"""The benchmark device and the description of the machine a run took place on."""

from __future__ import annotations

import os
import platform as host_platform
from typing import Any

import jax
import numpy as np

import jaxtrace

# Thread settings change CPU timings (LAPACK and XLA keep separate thread pools).
_ENV_VARS = ("JAX_PLATFORMS", "XLA_FLAGS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
_ENV_VARS += ("MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def load_average() -> list[float] | None:
    """The host's 1, 5 and 15 minute load averages (other processes skew timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # Not available on every OS.
        return None


def setup(dtypes: tuple[str, ...], platform: str | None) -> jax.Device:
    """Process-wide JAX settings and the benchmark device; call before any array exists.

    Args:
      dtypes: the run's dtypes; float64 needs 64-bit types enabled (float32
        programs compile to the same HLO either way).
      platform: ``"cpu"``, ``"gpu"``, ``"tpu"``, or None for JAX's default backend.

    Raises:
      RuntimeError: if JAX has no such platform here (JAX's own message).
    """
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    return jax.devices(platform)[0] if platform else jax.devices()[0]


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None


def describe(device: jax.Device, argv: list[str]) -> dict[str, Any]:
    """Device, platform, versions and host of the run, for the JSON and Markdown.

    Args:
      device: the benchmark device.
      argv: the command-line arguments of the run (without the program name).
    """
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device": str(device),
        "device_count": len(jax.devices(device.platform)),
        "default_backend": jax.default_backend(),  # what method="auto" is decided for
        "platform_version": getattr(getattr(device, "client", None), "platform_version", None),
        "jax_version": jax.__version__,
        "jaxlib_version": _version("jaxlib"),
        "jaxtrace_version": jaxtrace.__version__,
        "numpy_version": np.__version__,
        # On CPU, jaxlib's eigh calls LAPACK through SciPy's OpenBLAS.
        "scipy_version": _version("scipy"),
        "python_version": host_platform.python_version(),
        "os": host_platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
        "x64_enabled": bool(jax.config.jax_enable_x64),
        "command": " ".join(["python", "-m", "benchmarks", *argv]),
    }


def load_warning(env: dict[str, Any]) -> str | None:
    """A warning when other processes held the CPUs as the run started.

    On CPU, LAPACK (eigh, LU) runs in its own thread pool whose workers spin while
    waiting; on an oversubscribed host its calls slow down erratically, which no
    number of repeats averages out. The load at the start (1-minute average above
    half the CPU count) is the signal: the load at the end includes this run's threads.
    """
    cpus, load = env.get("cpu_count") or 0, env.get("load_average")
    if env.get("platform") != "cpu" or not cpus or not load or load[0] <= cpus / 2:
        return None
    advice = "Re-run on an idle host"
    if not (env.get("env") or {}).get("OPENBLAS_NUM_THREADS"):
        advice += ", or with OPENBLAS_NUM_THREADS=1 (recorded under environment.env)"
    return (
        f"WARNING: busy host (1-min load {load[0]:.1f} on {cpus} CPUs at the start): CPU "
        f"timings, LAPACK-based ones (eigh) most of all, are unreliable. {advice}."
    )

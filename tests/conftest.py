import contextlib
import os
import shutil
import tempfile

# Tests compile some thousand programs, and XLA:CPU's compile time dominates the
# suite: without LLVM's optimisations and with the classic fusion emitters it is
# 2-3x shorter (measured: the expm method's HVP at 5x3 float64 compiles in 0.22 s
# rather than 0.67 s). They change how XLA:CPU fuses and emits kernels, not the
# operations or their precision. The benchmarks run with XLA's defaults, and
# JAXTRACE_TEST_XLA_DEFAULTS=1 runs the suite with them too. Set before JAX starts
# its backend, so that the xdist workers and the subprocess checks inherit it.
COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if os.environ.get("JAXTRACE_TEST_XLA_DEFAULTS") != "1" and COMPILE_FLAGS not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COMPILE_FLAGS}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxtrace._src import methods  # noqa: E402

# Every test that asks for `auto_method` (and every test in a module that uses it
# through `pytestmark`) runs once per method, with method="auto" resolved to it:
# the whole suite checks each method, not a sample.
METHOD_NAMES = tuple(methods.METHODS)
ACTIVE = [None]  # the method "auto" resolves to in the running test (None: the real rule)


# One compilation cache per test session, shared by the xdist workers: tests
# compile many identical programs (the same function, shape and dtype through
# different closures). Created by the controlling process before the workers
# start, and removed at its end; a fresh run starts cold.
_CACHE_ENV = "JAXTRACE_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="jaxtrace-jit-cache-")
        config._jaxtrace_cache = os.environ[_CACHE_ENV]
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    cache = getattr(config, "_jaxtrace_cache", None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


def pytest_generate_tests(metafunc):
    if "auto_method" in metafunc.fixturenames:
        metafunc.parametrize("auto_method", METHOD_NAMES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def auto_method(request):
    """The method that method="auto" resolves to in the tests that use this."""
    return request.param


@contextlib.contextmanager
def resolving_auto(name):
    """Within the block, method="auto" resolves to ``name`` (None: the real rule)."""
    if name != ACTIVE[0]:
        jax.clear_caches()  # programs traced under another method must not be reused
        ACTIVE[0] = name
    with pytest.MonkeyPatch.context() as patch:
        if name is not None:
            patch.setattr(methods, "auto", lambda **facts: name)
        yield


@pytest.fixture(autouse=True)
def _resolve_auto(request):
    # Per test, so that tests without `auto_method` see the real rule. A wider
    # fixture that computes with the library must take `auto_method` and enter
    # resolving_auto itself: it is set up before this one.
    name = request.getfixturevalue("auto_method") if "auto_method" in request.fixturenames else None
    with resolving_auto(name):
        yield


@pytest.fixture
def x64():
    """Runs a test with 64-bit types enabled (exactness tests)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def x32():
    """Runs a test with JAX's default 32-bit types (where users live)."""
    with jax.enable_x64(False):
        yield

"""Benchmark suite of jaxtrace: both Gram functions, three methods, three peers, core, HVP
and NOTEARS (``trace_expm`` against autodiff of ``jax.scipy.linalg.expm``).

Run ``python -m benchmarks`` for the quick sweep or ``python -m benchmarks --full``
for the complete one; ``--help`` lists the options. Each run writes
``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` under ``--out``.

Modules, one job each: :mod:`~benchmarks.cases` (what is measured),
:mod:`~benchmarks.programs` (jaxtrace, the peers, the core, the HVP, NOTEARS),
:mod:`~benchmarks.checks` (the float64 reference), :mod:`~benchmarks.timing`
(compilation, memory, interleaved rounds), :mod:`~benchmarks.runner` (one
comparison from check to figures), :mod:`~benchmarks.targets` (the issue's
targets), :mod:`~benchmarks.flops` (the flop model), :mod:`~benchmarks.environment`
(device and host), :mod:`~benchmarks.report` (tables, JSON, Markdown),
:mod:`~benchmarks.plot` and :mod:`~benchmarks.cli`.
"""

"""Benchmark suite of jaxtrace: the operator against its peer, its core and its HVP.

Run ``python -m benchmarks`` for the quick sweep or ``python -m benchmarks --full``
for the complete one; ``python -m benchmarks --help`` lists the options. Each run
writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` under ``--out``.

Modules, one job each:

* :mod:`benchmarks.cases`: what is measured (shapes, dtypes, modes, inputs);
* :mod:`benchmarks.programs`: the functions compared (jaxtrace, peer, core, HVP);
* :mod:`benchmarks.checks`: correctness against the peer and a float64 reference;
* :mod:`benchmarks.budget`: matmul-rate calibration, peer skipping, repeat counts;
* :mod:`benchmarks.timing`: compilation, memory and interleaved timing;
* :mod:`benchmarks.runner`: one comparison from check to figures;
* :mod:`benchmarks.environment`: device selection and the run's environment;
* :mod:`benchmarks.report`: terminal table, JSON and Markdown;
* :mod:`benchmarks.plot`: the PNG plot;
* :mod:`benchmarks.cli`: the command line.
"""

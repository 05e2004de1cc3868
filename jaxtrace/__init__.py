"""jaxtrace: differentiable traces of matrix exponentials for JAX.

tr(expm(scale X X^T)) through the smaller Gram matrix, tr(expm(A)) of any real
square A, and their overflow-free logarithms.
"""

from jaxtrace._src.functions import log_trace_expm, log_trace_expm_gram, trace_expm, trace_expm_gram

__version__ = "0.1.0"

__all__ = ["__version__", "log_trace_expm", "log_trace_expm_gram", "trace_expm", "trace_expm_gram"]

"""jaxtrace: differentiable tr(expm(scale X X^T)) for JAX, through the smaller Gram matrix."""

from jaxtrace._src.functions import log_trace_expm_gram, trace_expm_gram

__version__ = "0.1.0"

__all__ = ["__version__", "log_trace_expm_gram", "trace_expm_gram"]

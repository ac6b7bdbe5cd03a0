"""lic_quant: fused quantization surrogates and discretized likelihoods for learned image
compression (docs/spec.md). ``quantize`` (and ``gaussian_quantize``) is the op; ``reference`` its
readable pure-PyTorch definition."""
import importlib

from . import reference, schedules
from ._checks import BACKENDS, FAMILIES, MODES
from ._ops import cuda_kernels_built, extension_available
from .api import (entropy_bottleneck, gaussian_quantize, make_seed, mixture_quantize, quantize,
                  uniform_noise)
from .reference import (entropy_bottleneck_reference, gaussian_quantize_reference,
                        mixture_quantize_reference, quantize_reference)

__all__ = [
    "BACKENDS",
    "FAMILIES",
    "MODES",
    "cuda_kernels_built",
    "entropy_bottleneck",
    "entropy_bottleneck_reference",
    "extension_available",
    "gaussian_quantize",
    "gaussian_quantize_reference",
    "make_seed",
    "mixture_quantize",
    "mixture_quantize_reference",
    "nn",
    "quantize",
    "quantize_reference",
    "reference",
    "schedules",
    "uniform_noise",
]
__version__ = "0.1.0"


def __getattr__(name):
    # lic_quant.nn imports compressai when it is installed (seconds): load it on first use only.
    if name == "nn":
        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'lic_quant' has no attribute {name!r}")

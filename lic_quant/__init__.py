"""lic_quant: fused quantization surrogates and discretized-Gaussian likelihoods for learned
image compression (SPEC.md). ``gaussian_quantize`` is the op; ``reference`` its readable
pure-PyTorch definition."""
from . import reference
from ._ops import cuda_kernels_built, extension_available
from .api import gaussian_quantize, make_seed, uniform_noise
from .reference import MODES, gaussian_quantize_reference

__all__ = [
    "MODES",
    "cuda_kernels_built",
    "extension_available",
    "gaussian_quantize",
    "gaussian_quantize_reference",
    "make_seed",
    "reference",
    "uniform_noise",
]
__version__ = "0.1.0"

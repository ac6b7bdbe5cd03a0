"""Test hooks into the Triton kernels (not part of the package): the noise function, the float32
normal tail and the forward kernel at shifted logical indices, launched directly from
lic_quant._triton_kernels with lic_quant.triton_ops' launch settings."""
from __future__ import annotations

import torch
import triton

from lic_quant import _triton_kernels as K
from lic_quant import triton_ops
from lic_quant._checks import MODES


def _launch(kernel, n: int, *args, **consts) -> None:
    on_gpu = not triton_ops.INTERPRETED
    block = 1024 if on_gpu else min(triton_ops.INTERPRETER_BLOCK,
                                    max(16, triton.next_power_of_2(n)))
    kernel[(triton.cdiv(n, block),)](*args, **consts, ON_GPU=on_gpu, BLOCK=block)


def uniform_noise(numel: int, seed: torch.Tensor, *, start: int = 0) -> torch.Tensor:
    """u for logical indices start .. start + numel - 1; `start` a multiple of 4 (the kernels draw
    whole Philox blocks) reaches indices >= 2^32 without allocating them."""
    assert start % 4 == 0, start
    out = torch.empty(numel, dtype=torch.float32, device=seed.device)
    if numel:
        _launch(K.uniform_noise_kernel, numel, seed, out, numel, start)
    return out


def normal_sf(x: torch.Tensor) -> torch.Tensor:
    """Q(x) = P(X > x) of a float32 tensor by the kernels' float32 normal tail."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        _launch(K.normal_sf_kernel, x.numel(), x, out, x.numel())
    return out


def quantize_forward_at(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                        zero_center, index_base):
    """The forward kernel with logical indices shifted by index_base (a multiple of 4)."""
    assert index_base % 4 == 0, index_base
    y_hat = torch.empty_like(y)
    lik = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    raw = triton_ops._raw
    _launch(K.quantize_forward_kernel, y.numel(), raw(y), raw(means if means is not None else y),
            raw(scales), seed, temperature, raw(y_hat), lik, y.numel(), index_base,
            float(scale_bound), float(likelihood_bound), MODE=MODES.index(mode),
            ZERO_CENTER=zero_center, HAS_MEANS=means is not None,
            IS_BF16=y.dtype == torch.bfloat16)
    return y_hat, lik

"""The noise stream (version 2, docs/spec.md section 3) in plain torch integer arithmetic.

Element i takes word i % 4 of the Philox4x32-10 block at counter (lo32(i // 4), hi32(i // 4), 0, 0)
and key (lo32(seed), hi32(seed)): one block serves four consecutive elements, bit for bit
``tl.rand4x(seed, i // 4)[i % 4] - 0.5``.

This is the readable definition the kernels are tested against (the compiled ops compute the same
bits far faster; ``lic_quant.uniform_noise`` uses them when the extension is built). Philox4x32-10
runs on int64 tensors holding 32-bit words; the 32x32 -> 64-bit products are split in 16-bit
halves so nothing overflows int64.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_MUL_A = 0xD2511F53  # multiplies c0
PHILOX_MUL_B = 0xCD9E8D57  # multiplies c2
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
# Triton's uint_to_uniform_float scale: the largest float32 with (2^31 - 1) * scale < 1.
UNIT_SCALE = 4.6566127342e-10


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi32, lo32) of const * x for 32-bit const and a tensor of 32-bit words (int64 storage)."""
    c_hi, c_lo = const >> 16, const & 0xFFFF
    hi_part = x * c_hi  # < 2^48
    lo_part = x * c_lo  # < 2^48
    # const * x = hi_part * 2^16 + lo_part
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (((hi_part & 0xFFFF) << 16) + lo_part) & MASK32
    return hi, lo


def philox4x32_10(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
                  k0: int, k1: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors of 32-bit words; the key is two Python ints."""
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(PHILOX_MUL_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_MUL_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def words_to_uniform(word: torch.Tensor) -> torch.Tensor:
    """32-bit words (int64 storage) -> float32 in [-1/2, 1/2), as Triton's uint_to_uniform_float."""
    x = torch.where(word >= 2**31, word - 2**32, word)  # reinterpret as int32
    x = torch.where(x < 0, -x - 1, x)
    rand = x.to(torch.float32) * torch.tensor(UNIT_SCALE, dtype=torch.float32)
    return rand - 0.5


def seed_to_int(seed: int | torch.Tensor) -> int:
    """The 64-bit seed as an unsigned Python int (tensor seeds are read once, on the host)."""
    if isinstance(seed, torch.Tensor):
        seed = int(seed.item())
    return int(seed) & 0xFFFFFFFFFFFFFFFF


def philox_uniform(shape, seed: int | torch.Tensor, *, device=None, start: int = 0) -> torch.Tensor:
    """u for logical indices start .. start + numel - 1, shaped `shape`, float32 (pure torch)."""
    shape = torch.Size(shape)
    seed64 = seed_to_int(seed)
    n = shape.numel()
    first, last = start // 4, (start + n + 3) // 4  # the Philox blocks that cover the range
    block = torch.arange(first, max(last, first), dtype=torch.int64, device=device)
    zero = torch.zeros_like(block)
    words = philox4x32_10(block & MASK32, block >> 32, zero, zero, seed64 & MASK32, seed64 >> 32)
    stream = torch.stack(words, dim=1).reshape(-1)  # element 4 b + j <- word j of block b
    offset = start - 4 * first
    return words_to_uniform(stream[offset:offset + n]).reshape(shape)

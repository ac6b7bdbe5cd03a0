"""docs/spec.md section 4, the ops: every kernel backend's forward and backward op (and the
uniform_noise op) pass torch.library.opcheck, including at huge residuals, and run under
torch.compile(fullgraph=True) without graph breaks, with the eager bits, and with a fresh seed or
temperature tensor per call without recompiling; compiled autograd traces the backward."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import LIKELIHOOD_BOUND as LB, SCALE_BOUND as SB, lik_dtype, make_inputs, \
    make_upstream, same_bits

# (dtype, mode, with_means, zero_center, scale_bound, likelihood_bound): every mode and dtype
# once at least, with and without means, both lattice centres, the bounds at 0.
FORWARD_SAMPLES = [
    (torch.float32, "noise", True, True, SB, LB),
    (torch.float32, "ste", False, True, SB, LB),
    (torch.float32, "mixed", True, False, SB, LB),
    (torch.float32, "sua", True, True, SB, LB),
    (torch.bfloat16, "noise", False, False, SB, LB),
    (torch.bfloat16, "ste", True, True, SB, LB),
    (torch.bfloat16, "mixed", True, False, 0.0, 0.0),
    (torch.bfloat16, "sua", False, True, SB, LB),
    (torch.float16, "ste", False, False, SB, LB),
    (torch.float64, "sua", True, True, SB, LB),
    (torch.float64, "mixed", False, False, SB, LB),
]


def _scalars(device, seed=123, temperature=0.4):
    return (torch.tensor(seed, dtype=torch.int64, device=device),
            torch.tensor(temperature, dtype=torch.float64, device=device))


@pytest.mark.parametrize("dtype,mode,with_means,zero_center,sb,lb", FORWARD_SAMPLES,
                         ids=lambda v: str(v).replace("torch.", ""))
def test_opcheck_forward(kernel_backend, dtype, mode, with_means, zero_center, sb, lb):
    kernel_backend.need_dtype(dtype)
    y, s, m = kernel_backend.to(*make_inputs((2, 3, 5), dtype, with_means=with_means))
    y.requires_grad_(), s.requires_grad_()
    if m is not None:
        m.requires_grad_()
    seed, temp = _scalars(y.device)
    torch.library.opcheck(kernel_backend.forward_op,
                          (y, s, m, seed, temp, mode, sb, lb, zero_center))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_opcheck_backward(kernel_backend, dtype):
    kernel_backend.need_dtype(dtype)
    if kernel_backend.is_interpreter and dtype != torch.float32:
        pytest.skip("the interpreter checks float32 only here (numpy is slow; its float16 "
                    "backward is in test_values_gradients.py and test_bit_identity.py)")
    y, s, m = kernel_backend.to(*make_inputs((3, 5, 7), dtype))
    seed, temp = _scalars(y.device)
    g_yhat, g_lik = kernel_backend.to(*make_upstream(y.shape, dtype, lik_dtype(dtype)))
    for mode, means, zc, mask in (("sua", m, True, [True, True, True]),
                                  ("mixed", None, False, [False, True, False]),
                                  ("noise", m, True, [True, False, True])):
        for gy in (g_yhat, None):
            torch.library.opcheck(kernel_backend.backward_op,
                                  (gy, g_lik, y, s, means, seed, temp, mode, SB, LB, zc, mask))
    # all-negative upstream: the kernels skip recomputing p for the bound
    torch.library.opcheck(kernel_backend.backward_op,
                          (None, -g_lik.abs(), y, s, m, seed, temp, "ste", SB, LB, True,
                           [True, True, True]))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_opcheck_uniform_noise(device):
    if not lq.extension_available():
        pytest.skip("the C++ extension lic_quant._C is not built")
    if device == "cuda" and not (torch.cuda.is_available() and lq.cuda_kernels_built()):
        pytest.skip("no CUDA device or no CUDA kernels built")
    seed, _ = _scalars(device, seed=17)
    torch.library.opcheck(torch.ops.lic_quant.uniform_noise, (seed, [4, 9]))


def test_opcheck_at_huge_residuals(kernel_backend):
    y = torch.tensor([-1e38, 1e38, 3.0e38, 2.5])
    s = torch.tensor([0.11, 1e-3 + 0.11, 5.0, 1e30])
    y, s = (t.requires_grad_() for t in kernel_backend.to(y, s))
    seed, temp = _scalars(y.device, seed=5, temperature=0.5)
    torch.library.opcheck(kernel_backend.forward_op,
                          (y, s, None, seed, temp, "ste", SB, LB, True))


# ---------------------------------------------------------------------------------------------
# torch.compile


def _compiler(backend):
    """Inductor where it has code to generate around the op; under Triton's interpreter the op is
    opaque to it (a custom_op on CPU tensors), so aot_eager checks the same tracing, fake kernel
    and autograd without an Inductor C++ build per test."""
    return "aot_eager" if backend.is_interpreter else "inductor"


@pytest.mark.parametrize("mode", ["noise", "sua", "mixed"])
def test_compile_fullgraph_matches_eager(kernel_backend, mode):
    """Values and the three gradients bit for bit those of eager calls; a fresh seed tensor runs
    the same graph (error_on_recompile) with new noise."""
    torch._dynamo.reset()
    y, s, m = kernel_backend.to(*make_inputs((2, 16, 9, 11), torch.float32, seed=8))
    g_yhat, g_lik = kernel_backend.to(*make_upstream(y.shape, torch.float32, torch.float32))
    seed, temp = _scalars(y.device, seed=41, temperature=0.45)

    def step(y, s, m, seed, temp):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode=mode, temperature=temp, seed=seed,
                                          backend=kernel_backend.name)
        return y_hat * 2.0, lik

    compiled = torch.compile(step, fullgraph=True, backend=_compiler(kernel_backend))
    outs = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (y, s, m)]
        y_hat, lik = fn(*leaves, seed, temp)
        torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
        outs.append((y_hat.detach(), lik.detach(), [t.grad for t in leaves]))
    (a_yh, a_lik, a_g), (b_yh, b_lik, b_g) = outs
    assert same_bits(a_yh, b_yh) and same_bits(a_lik, b_lik)
    for ga, gb in zip(a_g, b_g):
        assert same_bits(ga, gb)
    seed2, _ = _scalars(y.device, seed=42)
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        c_yh, c_lik = compiled(*leaves, seed2, temp)
    e_yh, e_lik = step(*leaves, seed2, temp)
    assert same_bits(c_yh, e_yh) and same_bits(c_lik, e_lik)
    assert not torch.equal(c_lik, a_lik)  # new noise (the rate path is noisy in these modes)


def test_compile_one_graph_for_fresh_seeds_and_temperatures(kernel_backend):
    """A training step compiled once: four calls with new seed and temperature tensors, one
    graph, four different losses, each the eager loss."""
    torch._dynamo.reset()
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    @torch.compile(fullgraph=True, backend=counting_backend)
    def step(y, s, m, seed, temperature):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode="sua", seed=seed, temperature=temperature,
                                          backend=kernel_backend.name)
        return (y_hat - y).square().mean() - lik.log2().mean()

    y, s, m = (t.requires_grad_() for t in kernel_backend.to(*make_inputs((2, 4, 6),
                                                                          torch.float32)))
    results = []
    for i in range(4):
        seed, temp = _scalars(y.device, seed=1000 + i, temperature=1.0 - 0.2 * i)
        loss = step(y, s, m, seed, temp)
        loss.backward()
        eager = lq.gaussian_quantize(y.detach(), s.detach(), m.detach(), mode="sua", seed=seed,
                                     temperature=temp, backend=kernel_backend.name)
        ref_loss = (eager[0] - y.detach()).square().mean() - eager[1].log2().mean()
        assert torch.allclose(loss.detach(), ref_loss, rtol=1e-6)
        results.append(loss.item())
    assert len(compiles) == 1 and len(set(results)) == 4


def test_compile_with_generator_seed(kernel_backend):
    """seed=None inside a compiled graph draws a fresh seed per call."""
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(y, s):
        return lq.gaussian_quantize(y, s, mode="noise", backend=kernel_backend.name)[0]

    y, s, _ = kernel_backend.to(*make_inputs((4, 9), torch.float32, with_means=False))
    torch.manual_seed(3)
    assert not torch.equal(f(y, s), f(y, s))


def test_compiled_autograd_matches_eager(kernel_backend):
    from torch._dynamo import compiled_autograd

    y, s, m = kernel_backend.to(*make_inputs((4, 6), torch.float32))
    g_yhat, g_lik = kernel_backend.to(*make_upstream(y.shape, torch.float32, torch.float32))

    def step():
        leaves = [t.clone().requires_grad_() for t in (y, s, m)]
        y_hat, lik = lq.gaussian_quantize(*leaves, mode="mixed", seed=9,
                                          backend=kernel_backend.name)
        torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
        return [t.grad for t in leaves]

    want = step()
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="eager", fullgraph=True)):
        got = step()
    for a, b in zip(got, want):
        assert same_bits(a, b)

"""docs/spec.md section 9, the factorized prior: lq.entropy_bottleneck and
lic_quant.nn.EntropyBottleneck against lic_quant.reference and against CompressAI's
EntropyBottleneck (values and parameter gradients in eval and in training), the modes centred at
the medians, deterministic parameter gradients, identical bitstreams, errors, NaN, the
non-cancelling likelihood (mpmath), opcheck and torch.compile."""
from __future__ import annotations

import warnings

import pytest
import torch

import lic_quant as lq
from helpers import same_bits

compressai = pytest.importorskip("compressai")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.entropy_models import EntropyBottleneck as CompressAIEntropyBottleneck
import lic_quant.nn as lnn  # noqa: E402

# CPU tensors: "triton" runs in Triton's interpreter here (without a GPU); the CUDA and compiled
# Triton kernels are held to the CPU kernel's bits by test_entropy_bottleneck_backends.py.
EB_BACKENDS = ("reference", "cpu", "triton")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MODES = lq.MODES


def _backend(name, dtype=None):
    if name == "cpu" and not lq.extension_available():
        pytest.skip("the C++ extension lic_quant._C is not built")
    if name == "triton":
        try:
            from lic_quant import triton_ops
        except ImportError as exc:  # pragma: no cover
            pytest.skip(f"lic_quant.triton_ops does not import ({exc})")
        if triton_ops.TRITON_ERROR is not None:
            pytest.skip(f"triton does not import ({triton_ops.TRITON_ERROR})")
        if not triton_ops.interpreted():
            pytest.skip("these cases use CPU tensors, which the Triton kernels take only in "
                        "Triton's interpreter (TRITON_INTERPRET=1)")
        if dtype == torch.float64:
            pytest.skip("the Triton kernels compute in float32 (no float64)")
    return name


@pytest.fixture(params=EB_BACKENDS)
def eb_backend(request):
    return _backend(request.param)


def compressai_module(channels, *, seed=0, spread=0.3, dtype=torch.float32, filters=(3, 3, 3, 3)):
    """CompressAI's module with perturbed parameters (the initial CDF is nearly flat)."""
    torch.manual_seed(seed)
    m = CompressAIEntropyBottleneck(channels, filters=filters)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * spread)
    return m.to(dtype)


def params(m):
    return [list(m.matrices), list(m.biases), list(m.factors)]


def flat_params(m):
    return [p for group in params(m) for p in group]


def medians(m):
    return m.quantiles[:, 0, 1].detach()


def make_z(shape, dtype=torch.float32, seed=1, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def upstream(shape, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    g_zhat = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    g_lik = torch.randn(shape, generator=g, dtype=torch.float64).to(
        torch.float64 if dtype == torch.float64 else torch.float32)
    return g_zhat, g_lik


def run(module, z, g_zhat, g_lik, **kw):
    """Values and gradients (z, then every parameter) of lq.entropy_bottleneck."""
    for p in module.parameters():
        p.grad = None
    leaf = z.detach().clone().requires_grad_(True)
    z_hat, lik = lq.entropy_bottleneck(leaf, medians(module), *params(module), **kw)
    torch.autograd.backward([z_hat, lik], [g_zhat, g_lik])
    return z_hat.detach(), lik.detach(), leaf.grad, [p.grad.clone() for p in flat_params(module)]


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


# float32 compute: the logits carry a few ulps of their magnitude (tens), which p = sigma(u) -
# sigma(l) turns into ~1e-6 relative per unit of |u|, |l|; gradients summed over thousands of
# elements in another order.
TOL = {torch.float64: 1e-11, torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4}


# ---------------------------------------------------------------------------------------------
# values and gradients: the kernels against the reference, every mode, dtype and layout


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_matches_reference(mode, dtype):
    _backend("cpu")
    m = compressai_module(5, dtype=dtype)
    z = make_z((3, 5, 7, 11), dtype)
    g_zhat, g_lik = upstream(z.shape, dtype)
    kw = dict(mode=mode, temperature=0.4, seed=11)
    want = run(m, z, g_zhat, g_lik, backend="reference", **kw)
    got = run(m, z, g_zhat, g_lik, backend="cpu", **kw)
    assert same_bits(got[0], want[0])  # z_hat: the same surrogate arithmetic
    lik_tol = TOL[dtype]
    assert torch.allclose(got[1], want[1], rtol=lik_tol, atol=1e-12)
    assert rel_err(got[2], want[2]) < TOL[dtype] * 10
    for a, b in zip(got[3], want[3]):
        assert rel_err(a, b) < (TOL[dtype] * 10 if dtype in (torch.float32, torch.float64)
                                else 2e-2)


@pytest.mark.parametrize("shape", [(2, 4), (1, 3, 17), (5, 2, 3, 1, 7), (2, 3, 70, 70)])
def test_odd_shapes(eb_backend, shape):
    if eb_backend == "triton" and shape[-1] == 70:
        pytest.skip("Triton's interpreter: about a second per 32-element block of the backward")
    m = compressai_module(shape[1])
    z = make_z(shape)
    g_zhat, g_lik = upstream(shape, torch.float32)
    got = run(m, z, g_zhat, g_lik, backend=eb_backend, mode="sua", temperature=0.7, seed=3)
    want = run(m, z, g_zhat, g_lik, backend="reference", mode="sua", temperature=0.7, seed=3)
    assert got[0].shape == shape and got[1].shape == shape
    assert same_bits(got[0], want[0])
    assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-12)
    for a, b in zip(got[3], want[3]):
        assert rel_err(a, b) < 1e-3


def test_layouts_give_the_values_of_contiguous_copies(eb_backend):
    m = compressai_module(6)
    z = make_z((4, 6, 9, 5))
    kw = dict(backend=eb_backend, mode="mixed", seed=5)
    want = lq.entropy_bottleneck(z, medians(m), *params(m), **kw)
    for view in (z.to(memory_format=torch.channels_last),
                 z.transpose(2, 3).contiguous().transpose(2, 3)):
        got = lq.entropy_bottleneck(view, medians(m), *params(m), **kw)
        assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])
    # non-contiguous parameters and medians (quantiles[:, 0, 1] is a strided view)
    mats = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in m.matrices]
    got = lq.entropy_bottleneck(z, m.quantiles[:, 0, 1].detach(), mats, list(m.biases),
                                list(m.factors), **kw)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


def test_empty(eb_backend):
    m = compressai_module(3)
    z = torch.zeros(0, 3, 4, 4, requires_grad=True)
    z_hat, lik = lq.entropy_bottleneck(z, medians(m), *params(m), backend=eb_backend)
    assert z_hat.shape == z.shape and lik.shape == z.shape
    (z_hat.sum() + lik.sum()).backward()
    assert z.grad.shape == z.shape
    assert all(p.grad is not None and not p.grad.any() for p in flat_params(m))


# ---------------------------------------------------------------------------------------------
# against CompressAI's EntropyBottleneck


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", EB_BACKENDS)
def test_eval_is_compressai_dequantize(backend, dtype):
    """Eval: outputs bit for bit round(z - medians) + medians (CompressAI's dequantize), the
    likelihoods CompressAI's to float rounding (its sigma(upper) - sigma(lower) cancels where
    both logits are large; ours does not)."""
    _backend(backend, dtype)
    ref = compressai_module(8, dtype=dtype).eval()
    mine = lnn.EntropyBottleneck(8, backend=backend).to(dtype).eval()
    mine.load_state_dict(ref.state_dict())
    z = make_z((4, 8, 6, 5), dtype)
    want_out, want_lik = ref(z)
    got_out, got_lik = mine(z)
    assert same_bits(got_out, want_out)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    big = want_lik > 1e-6  # CompressAI's own cancellation error grows below
    assert torch.allclose(got_lik[big], want_lik[big], rtol=tol)
    assert torch.allclose(got_lik, want_lik, rtol=1e-2, atol=1e-7)


class _InjectedNoise:
    """CompressAI's quantize(values, "noise") with lic_quant's noise for z (laid out as
    CompressAI's (C, 1, N*H*W) values), so both modules see the same perturbed values."""

    def __init__(self, u):
        self.u = u

    def __call__(self, values, mode, medians=None):
        assert mode == "noise"
        return values + self.u.transpose(0, 1).reshape(values.shape).to(values.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", EB_BACKENDS)
def test_training_noise_is_compressai(backend, dtype):
    """mode='noise': CompressAI's training forward (values and gradients of z and of every
    parameter) on the same noise."""
    _backend(backend, dtype)
    ref = compressai_module(8, dtype=dtype).train()
    mine = lnn.EntropyBottleneck(8, mode="noise", backend=backend).to(dtype).train()
    mine.load_state_dict(ref.state_dict())
    z = make_z((3, 8, 5, 4), dtype)
    seed = 1234
    ref.quantize = _InjectedNoise(lq.uniform_noise(z.shape, seed))
    g_zhat, g_lik = upstream(z.shape, dtype)

    def step(module, **kw):
        leaf = z.clone().requires_grad_(True)
        out, lik = module(leaf) if not kw else lq.entropy_bottleneck(
            leaf, medians(module), *params(module), **kw)
        torch.autograd.backward([out, lik], [g_zhat, g_lik.to(lik.dtype)])
        return out.detach(), lik.detach(), leaf.grad, [p.grad.clone() for p in flat_params(module)]

    want = step(ref)
    got = step(mine, mode="noise", seed=seed, backend=backend)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # z_hat: median + ((z - median) + u) here, z + u in CompressAI
    assert torch.allclose(got[0], want[0], rtol=0, atol=4 * torch.finfo(dtype).eps * 16)
    assert torch.allclose(got[1], want[1], rtol=tol * 10, atol=1e-7 if dtype == torch.float32
                          else 1e-13)
    assert rel_err(got[2], want[2]) < tol
    for a, b in zip(got[3], want[3]):
        assert rel_err(a, b) < tol * 10


def test_module_is_compressai_drop_in():
    ref = compressai_module(16)
    mine = lnn.EntropyBottleneck(16, mode="sua", temperature=0.25)
    assert isinstance(mine, CompressAIEntropyBottleneck)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    mine.load_state_dict(ref.state_dict())
    assert torch.equal(mine.loss(), ref.loss())
    assert float(mine.temperature) == 0.25 and mine.mode == "sua"
    mine.mode = "mixed"
    mine.temperature = 0.5
    mine.backend = "reference"
    with pytest.raises(ValueError, match="backend"):
        mine.backend = "gpu"
    with pytest.raises(ValueError, match="mode"):
        lnn.EntropyBottleneck(4, mode="round")
    with pytest.raises(ValueError, match="temperature"):
        mine.temperature = 2.0


def test_identical_bitstreams():
    """compress() and decompress() are CompressAI's on the same state: the same strings."""
    ref = compressai_module(16).eval()
    mine = lnn.EntropyBottleneck(16)
    mine.load_state_dict(ref.state_dict())
    mine.eval()
    # a training step of lic_quant's module changes nothing the coder reads
    mine.train()
    _, lik = mine(make_z((2, 16, 4, 4)))
    (-lik.log().sum()).backward()
    mine.eval()
    ref.update(force=True)
    mine.update(force=True)
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        assert torch.equal(getattr(mine, name), getattr(ref, name))
    z = make_z((2, 16, 8, 8))
    strings = ref.compress(z)
    assert mine.compress(z) == strings
    got = mine.decompress(strings, z.shape[2:])
    assert torch.equal(got, ref.decompress(strings, z.shape[2:]))
    assert same_bits(got, mine(z)[0])  # the decoder rebuilds the eval outputs


# ---------------------------------------------------------------------------------------------
# the modes, centred at the medians


def test_modes_at_the_medians(eb_backend):
    m = compressai_module(4)
    with torch.no_grad():
        m.quantiles[:, 0, 1] = torch.tensor([0.3, -1.7, 0.5, 2.25])
    z = make_z((3, 4, 5, 6))
    med = medians(m).reshape(1, 4, 1, 1)
    rounded = torch.round(z - med) + med
    out = {mode: lq.entropy_bottleneck(z, medians(m), *params(m), mode=mode, temperature=0.0,
                                       seed=9, backend=eb_backend) for mode in MODES}
    u = lq.uniform_noise(z.shape, 9)
    assert same_bits(out["ste"][0], rounded)
    assert same_bits(out["mixed"][0], rounded)  # the decoder path of TCM, STF, MLIC++
    assert same_bits(out["sua"][0], rounded)  # T = 0
    assert same_bits(out["sua"][1], out["ste"][1])
    assert same_bits(out["noise"][0], med + ((z - med) + u))
    assert same_bits(out["mixed"][1], out["noise"][1])  # noise for the rate
    # ste: the likelihood of the rounded value, as CompressAI's eval
    ref = lq.entropy_bottleneck_reference(rounded, medians(m), *params(m), mode="ste")
    assert torch.allclose(out["ste"][1], ref[1], rtol=1e-5)


def test_straight_through_and_no_median_gradient(eb_backend):
    m = compressai_module(3)
    m.quantiles.requires_grad_(True)
    z = make_z((2, 3, 4, 4)).requires_grad_(True)
    z_hat, lik = lq.entropy_bottleneck(z, m.quantiles[:, 0, 1], *params(m), mode="mixed",
                                       backend=eb_backend)
    z_hat.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert m.quantiles.grad is None or not m.quantiles.grad.any()


def test_temperature_tensor_and_schedule(eb_backend):
    m = compressai_module(3)
    z = make_z((2, 3, 4, 4))
    a = lq.entropy_bottleneck(z, medians(m), *params(m), mode="sua", temperature=0.3, seed=2,
                              backend=eb_backend)
    b = lq.entropy_bottleneck(z, medians(m), *params(m), mode="sua",
                              temperature=torch.tensor(0.3, dtype=torch.float64), seed=2,
                              backend=eb_backend)
    assert same_bits(a[0], b[0]) and same_bits(a[1], b[1])
    from lic_quant.schedules import LinearSchedule

    mod = lnn.EntropyBottleneck(3, mode="sua")
    sched = LinearSchedule(1.0, 0.0, 4).attach(mod)
    sched.step()
    assert float(mod.temperature) == 0.75


# ---------------------------------------------------------------------------------------------
# deterministic parameter gradients


def test_parameter_gradients_do_not_depend_on_threads():
    _backend("cpu")
    m = compressai_module(4)
    z = make_z((8, 4, 40, 40))  # 12800 elements per channel: several chunks
    g_zhat, g_lik = upstream(z.shape, torch.float32)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 1):
            torch.set_num_threads(threads)
            results.append(run(m, z, g_zhat, g_lik, backend="cpu", mode="noise", seed=4))
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        assert same_bits(r[2], results[0][2])
        assert all(same_bits(a, b) for a, b in zip(r[3], results[0][3]))


# ---------------------------------------------------------------------------------------------
# errors, NaN, non-cancelling likelihood


def test_errors_name_the_argument(eb_backend):
    m = compressai_module(3)
    z = make_z((2, 3, 4))
    med, (mats, biases, factors) = medians(m), params(m)
    q = lambda *a, **k: lq.entropy_bottleneck(*a, backend=eb_backend, **k)  # noqa: E731
    cases = [
        (ValueError, "z must have shape", lambda: q(z[0, 0], med, mats, biases, factors)),
        (TypeError, "z must be float16", lambda: q(z.int(), med.int(), mats, biases, factors)),
        (ValueError, "medians must have shape", lambda: q(z, med[:2], mats, biases, factors)),
        (TypeError, "medians must have the dtype", lambda: q(z, med.double(), mats, biases,
                                                             factors)),
        (ValueError, r"matrices\[1\] must have shape", lambda: q(z, med, [mats[0], mats[1][:, :, :2]]
                                                               + mats[2:], biases, factors)),
        (ValueError, "biases must hold", lambda: q(z, med, mats, biases[:-1], factors)),
        (ValueError, "factors must hold", lambda: q(z, med, mats, biases, factors[:-1])),
        (ValueError, r"factors\[2\] must have shape",
         lambda: q(z, med, mats, biases, factors[:2] + [factors[2][:1]] + factors[3:])),
        (TypeError, r"biases\[0\] must have the dtype",
         lambda: q(z, med, mats, [biases[0].double()] + biases[1:], factors)),
        (ValueError, "mode must be one of", lambda: q(z, med, mats, biases, factors, mode="x")),
        (ValueError, "likelihood_bound", lambda: q(z, med, mats, biases, factors,
                                                    likelihood_bound=1.0)),
        (ValueError, "temperature", lambda: q(z, med, mats, biases, factors, temperature=1.5)),
        (TypeError, "seed", lambda: q(z, med, mats, biases, factors, seed=1.5)),
    ]
    for exc, words, fn in cases:
        with pytest.raises(exc, match=words):
            fn()


def test_op_errors_match_python_checks():
    """The C++ checker (checks.h check_eb_call) gives the Python checker's words."""
    _backend("cpu")
    m = compressai_module(3)
    z = make_z((2, 3, 4))
    med, (mats, biases, factors) = medians(m), params(m)
    seed, temp = torch.tensor(1), torch.tensor(0.5, dtype=torch.float64)
    op = torch.ops.lic_quant.entropy_bottleneck_forward
    cases = [
        (med[:2], mats, biases, factors, "medians must have shape"),
        (med, mats[:1] + [mats[1][:, :, :2]] + mats[2:], biases, factors,
         r"matrices\[1\] must have shape"),
        (med, mats, biases[:-1], factors, "biases must hold"),
        (med, mats, biases, factors[:-1], "factors must hold"),
    ]
    for md, ma, bi, fa, words in cases:
        with pytest.raises(ValueError, match=words):
            op(z, md, ma, bi, fa, seed, temp, "noise", 1e-9)
    with pytest.raises(NotImplementedError, match="hidden widths of 3"):
        wide = compressai_module(3, filters=(4, 4))
        op(z, medians(wide), *params(wide), seed, temp, "noise", 1e-9)


def test_other_filters_run_the_reference():
    m = compressai_module(3, filters=(2, 5))
    with pytest.warns(UserWarning, match="runs the reference"):  # said, not silently slower
        mine = lnn.EntropyBottleneck(3, filters=(2, 5))
    mine.load_state_dict(m.state_dict())
    m.eval(), mine.eval()
    z = make_z((2, 3, 4, 4))
    assert same_bits(mine(z)[0], m(z)[0])
    assert torch.allclose(mine(z)[1], m(z)[1], rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_nan_propagates(eb_backend, dtype):
    _backend(eb_backend, dtype)
    m = compressai_module(3, dtype=dtype)
    z = make_z((2, 3, 4, 4), dtype)
    z[1, 2, 3, 0] = float("nan")
    leaf = z.clone().requires_grad_(True)
    z_hat, lik = lq.entropy_bottleneck(leaf, medians(m), *params(m), seed=1, backend=eb_backend)
    nan = torch.zeros_like(z, dtype=torch.bool)
    nan[1, 2, 3, 0] = True
    assert torch.equal(z_hat.isnan(), nan) and torch.equal(lik.isnan(), nan)
    (z_hat.sum() + lik.sum()).backward()
    assert torch.equal(leaf.grad.isnan(), nan)
    # channel 2's parameters see the NaN, the others do not
    for p in flat_params(m):
        assert p.grad[2].isnan().all() and not p.grad[:2].isnan().any()
    # huge finite values: finite everything
    for p in flat_params(m):
        p.grad = None
    big = torch.full((1, 3, 2, 2), 3e4 if dtype != torch.float64 else 1e200, dtype=dtype)
    big[0, 1] *= -1
    leaf = big.clone().requires_grad_(True)
    z_hat, lik = lq.entropy_bottleneck(leaf, medians(m), *params(m), seed=1, backend=eb_backend,
                                       likelihood_bound=0.0)
    (z_hat.sum() + lik.sum()).backward()
    assert lik.isfinite().all() and leaf.grad.isfinite().all()
    assert all(p.grad.isfinite().all() for p in flat_params(m))


def test_likelihood_does_not_cancel_where_both_logits_are_large():
    """sigma(u) - sigma(l) with u, l around 20-35: against mpmath on the same logits. The
    channel MLP is one layer (filters=()): logits = softplus(M) x + b, computed exactly enough in
    float64 to serve as the oracle's input."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    channels = 4
    mats = [torch.tensor([[[2.0]], [[0.5]], [[5.0]], [[1.0]]])]
    biases = [torch.tensor([[[20.0]], [[-30.0]], [[25.0]], [[0.0]]])]
    z = torch.tensor([[[3.1, 0.2, -7.0], [8.0, 100.0, -30.0], [1.0, 2.0, -9.0],
                       [30.0, -31.0, 0.25]]])  # (1, C, 3)
    for dtype in (torch.float32, torch.float64):
        for backend in EB_BACKENDS:
            try:
                _backend(backend, dtype)
            except pytest.skip.Exception:
                continue  # this backend here (triton: float32 compute, the interpreter)
            _, lik = lq.entropy_bottleneck(z.to(dtype), torch.zeros(channels, dtype=dtype),
                                           [mats[0].to(dtype)], [biases[0].to(dtype)], [],
                                           mode="ste", likelihood_bound=0.0, backend=backend)
            for c in range(channels):
                w = mpmath.log1p(mpmath.exp(mpmath.mpf(float(mats[0][c, 0, 0]))))
                b = mpmath.mpf(float(biases[0][c, 0, 0]))
                for i in range(3):
                    v = mpmath.mpf(float(torch.round(z[0, c, i])))
                    up, lo = w * (v + 0.5) + b, w * (v - 0.5) + b
                    want = 1 / (1 + mpmath.exp(-up)) - 1 / (1 + mpmath.exp(-lo))
                    got = float(lik[0, c, i])
                    if want < mpmath.mpf("1e-30"):
                        continue
                    tol = 1e-5 if dtype == torch.float32 else 1e-12
                    assert abs(got - want) <= tol * want, (dtype, backend, c, i, got, want)


# ---------------------------------------------------------------------------------------------
# the ops: opcheck, torch.compile


def test_opcheck():
    _backend("cpu")
    m = compressai_module(3)
    z = make_z((2, 3, 5)).requires_grad_(True)
    mats, biases, factors = ([p.detach().clone().requires_grad_(True) for p in group]
                             for group in params(m))
    seed, temp = torch.tensor(3), torch.tensor(0.4, dtype=torch.float64)
    for mode in ("noise", "sua"):
        torch.library.opcheck(torch.ops.lic_quant.entropy_bottleneck_forward,
                              (z, medians(m), mats, biases, factors, seed, temp, mode, 1e-9))
    g_zhat, g_lik = upstream(z.shape, torch.float32)
    for mask in ([True, True, True, True], [True, False, True, False]):
        torch.library.opcheck(torch.ops.lic_quant.entropy_bottleneck_backward,
                              (g_zhat, g_lik, z.detach(), medians(m), [t.detach() for t in mats],
                               [t.detach() for t in biases], [t.detach() for t in factors], seed,
                               temp, "noise", 1e-9, mask))


def test_second_derivative_raises():
    _backend("cpu")
    m = compressai_module(2)
    z = make_z((2, 2, 3)).requires_grad_(True)
    _, lik = lq.entropy_bottleneck(z, medians(m), *params(m), seed=1, backend="cpu")
    (g,) = torch.autograd.grad(lik.sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        g.sum().backward()


def test_torch_compile_fullgraph():
    _backend("cpu")
    mod = lnn.EntropyBottleneck(4, mode="mixed")
    z = make_z((2, 4, 3, 3))
    seed = torch.tensor(7)

    def step(z):
        return lq.entropy_bottleneck(z, mod.quantiles[:, 0, 1].detach(), list(mod.matrices),
                                     list(mod.biases), list(mod.factors), mode="mixed",
                                     seed=seed)

    compiled = torch.compile(step, fullgraph=True)
    want = step(z)
    got = compiled(z)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


def test_replace_entropy_models():
    from compressai.models import FactorizedPrior, MeanScaleHyperprior

    model = MeanScaleHyperprior(8, 8)
    eb = model.entropy_bottleneck
    opt_params = set(map(id, eb.parameters()))
    lnn.replace_entropy_models(model, mode="mixed", temperature=0.5)
    assert type(model.entropy_bottleneck) is lnn.EntropyBottleneck
    assert type(model.gaussian_conditional) is lnn.GaussianConditional
    assert model.entropy_bottleneck.mode == "mixed"
    assert set(map(id, model.entropy_bottleneck.parameters())) == opt_params  # same Parameters
    out = model(torch.rand(1, 3, 64, 64))
    assert out["likelihoods"]["z"].shape == (1, 8, 1, 1)
    # the old names keep working and touch only their kind
    fp = FactorizedPrior(8, 8)
    lnn.replace_gaussian_conditionals(fp)
    assert type(fp.entropy_bottleneck) is CompressAIEntropyBottleneck
    lnn.replace_entropy_bottlenecks(fp, mode="ste")
    assert type(fp.entropy_bottleneck) is lnn.EntropyBottleneck
    with pytest.raises(TypeError, match="unknown settings"):
        lnn.replace_entropy_bottlenecks(fp, family="laplace")
    # an updated model still compresses the same
    ref = MeanScaleHyperprior(8, 8).eval()
    ref.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    want = ref.compress(x)
    swapped = lnn.replace_entropy_models(ref)
    assert swapped.compress(x)["strings"] == want["strings"]

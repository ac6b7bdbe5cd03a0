"""lic_quant.nn.GaussianMixtureConditional, the rate option of the nn modules, bits_per_pixel
and RateDistortionLoss, against the real CompressAI package (1.2.8).

Tolerances: the training outputs are y + u on both sides (bit for bit). The likelihoods are
the same mixture sum in the same order; only the erfc differs (the kernels' own against
torch's), hence a relative 1e-5 in float32 and 1e-9 in float64 (tests/contract/test_mixtures.py
checks the op itself to the same bounds).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import lic_quant
from lic_quant import api
from lic_quant._checks import component_layout
from lic_quant.api import make_seed

compressai = pytest.importorskip("compressai")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.entropy_models import EntropyBottleneck
    from compressai.entropy_models import GaussianConditional as CaiGC
    from compressai.entropy_models import GaussianMixtureConditional as CaiGMM
    from compressai.losses import RateDistortionLoss as CaiRDLoss
    from compressai.models import MeanScaleHyperprior

import lic_quant.nn as lnn  # noqa: E402
from lic_quant.schedules import LinearSchedule  # noqa: E402

# The backends with mixture kernels that run on CPU tensors here.
BACKENDS = ["auto"] + [b for b in api.MIXTURE_BACKENDS if b in ("reference", "cpu")]
if not lic_quant.extension_available():
    BACKENDS = ["reference"]
K, M = 3, 4
SHAPE = (2, M, 5, 6)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-12), torch.float64: dict(rtol=1e-9, atol=1e-300)}


def blocked_inputs(dtype=torch.float32, seed=0, shape=SHAPE, logits=False):
    """y (N, M, H, W) and CompressAI's channel-blocked (N, K*M, H, W) scales, means, weights."""
    g = torch.Generator().manual_seed(seed)
    n, m, *rest = shape
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    full = (n, K * m, *rest)
    scales = torch.rand(full, generator=g, dtype=torch.float64) * 2 + 0.05
    means = torch.randn(full, generator=g, dtype=torch.float64) * 2
    weights = torch.randn(full, generator=g, dtype=torch.float64)
    if not logits:
        weights = weights.unflatten(1, (K, m)).softmax(1).flatten(1, 2)
    return [t.to(dtype) for t in (y, scales, means, weights)]


def leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def compressai_training(cai, u, y, scales, means, weights):
    """CompressAI's GaussianMixtureConditional.forward in training, with the noise u."""
    outputs = y + u  # its quantize(inputs, "noise")
    lik = cai._likelihood(outputs, scales, means, weights)
    return outputs, cai.likelihood_lower_bound(lik)


# ------------------------------------------------------------------------------------------
# The module
# ------------------------------------------------------------------------------------------

def test_is_a_compressai_mixture_with_the_same_state():
    ours, theirs = lnn.GaussianMixtureConditional(), CaiGMM()
    assert isinstance(ours, CaiGMM) and isinstance(ours, CaiGC)
    assert ours.K == theirs.K == 3
    assert lnn.GaussianMixtureConditional(5).K == 5
    assert ours.mode == "noise" and not ours.zero_center and not ours.weights_are_logits
    assert ours.family == "gaussian" and ours.backend == "auto" and not ours.rate
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # no temperature key
    ours.load_state_dict(theirs.state_dict())  # strictly, both ways
    theirs.load_state_dict(ours.state_dict())
    # update() is CompressAI's: the same tables from the same scale table; the updated state
    # loads both ways too.
    table = torch.exp(torch.linspace(math.log(0.11), math.log(64.0), 16)).tolist()
    theirs, ours = CaiGMM(scale_table=table), lnn.GaussianMixtureConditional(scale_table=table)
    theirs.update()
    ours.update()
    for (name, a), (name_b, b) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def test_settings_are_checked():
    for bad in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="K must be an int"):
            lnn.GaussianMixtureConditional(bad)
    with pytest.raises(ValueError, match="mode"):
        lnn.GaussianMixtureConditional(mode="round")
    with pytest.raises(ValueError, match="backend"):
        lnn.GaussianMixtureConditional(backend="gpu")
    with pytest.raises(ValueError, match="family"):
        lnn.GaussianMixtureConditional(family="cauchy")
    gmc = lnn.GaussianMixtureConditional(weights_are_logits=True, rate=True, family="laplace")
    assert "K=3" in repr(gmc) and "weights_are_logits=True" in repr(gmc)
    assert "rate=True" in repr(gmc) and "family='laplace'" in repr(gmc)
    with pytest.raises(TypeError, match="weights_are_logits"):
        gmc.weights_are_logits = 1
    with pytest.raises(TypeError, match="rate"):
        gmc.rate = "yes"
    y, scales, means, weights = blocked_inputs()
    with pytest.raises(ValueError, match=r"K\*M = 3\*4 = 12 channels"):
        gmc(y, scales[:, :8], means, weights)
    with pytest.raises(ValueError, match="does not broadcast"):
        gmc(y, scales, means, weights[:, :, :2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_with_the_defaults_equals_compressai_given_the_same_noise(backend, dtype):
    y, scales, means, weights = blocked_inputs(dtype, seed=1)
    ours = lnn.GaussianMixtureConditional(backend=backend)
    theirs = CaiGMM().to(dtype)
    torch.manual_seed(7)
    u = lic_quant.uniform_noise(SHAPE, make_seed(None, y.device)).to(dtype)

    mine = leaves(y, scales, means, weights)
    torch.manual_seed(7)  # the op draws the seed that make_seed drew above
    y_hat, lik = ours(*mine)
    their = leaves(y, scales, means, weights)
    c_hat, c_lik = compressai_training(theirs, u, *their)
    assert y_hat.dtype == lik.dtype == dtype
    assert torch.equal(y_hat, c_hat)
    torch.testing.assert_close(lik, c_lik, **TOL[dtype])

    g = torch.Generator().manual_seed(3)
    a = torch.randn(SHAPE, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(SHAPE, generator=g, dtype=torch.float64).to(dtype)
    (y_hat * a + torch.log(lik) * b).sum().backward()
    (c_hat * a + torch.log(c_lik) * b).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-10)
    for name, p, q in zip(("y", "scales", "means", "weights"), mine, their):
        assert p.grad.shape == q.grad.shape and p.grad.stride() == q.grad.stride(), name
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=name)


def test_parameters_reach_the_op_as_views_without_a_copy(monkeypatch):
    """The (N, K*M, H, W) tensors go in as t.unflatten(1, (K, M)).movedim(1, 0): same storage,
    a layout the kernels read in place; slices of one entropy-parameters output included."""
    seen, rates = [], []

    def spy(y, *params, **kwargs):
        seen.extend(params)
        rates.append(kwargs["rate"])
        return api.mixture_quantize(y, *params, **kwargs)

    monkeypatch.setattr(lnn, "mixture_quantize", spy)
    y, scales, means, weights = blocked_inputs()
    params = torch.cat([scales, means, weights], 1)  # as entropy_parameters(...).chunk(3, 1)
    chunks = params.chunk(3, 1)
    lnn.GaussianMixtureConditional()(y, *chunks)
    assert len(seen) == 3
    for view, chunk in zip(seen, chunks):
        assert view.shape == (K, *SHAPE) and view.data_ptr() == chunk.data_ptr()
        assert component_layout(view) is not None
        torch.testing.assert_close(view, chunk.unflatten(1, (K, M)).movedim(1, 0))
    # rate=True is the op's own (no likelihood tensor in between)
    lnn.GaussianMixtureConditional(rate=True)(y, *chunks)
    assert rates == [False, True]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["noise", "mixed", "sua"])
def test_eval_equals_compressai(backend, mode):
    y, scales, means, weights = blocked_inputs(seed=2)
    ours = lnn.GaussianMixtureConditional(mode=mode, temperature=0.5, zero_center=True,
                                          backend=backend).eval()
    theirs = CaiGMM().eval()
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    y_hat, lik = ours(y, scales, means, weights)
    assert torch.equal(torch.rand(3), expected_draw)  # eval draws no noise, as CompressAI's
    c_hat, c_lik = theirs(y, scales, means, weights)
    assert torch.equal(y_hat, c_hat)  # round(y): CompressAI's "dequantize" with means=None
    torch.testing.assert_close(lik, c_lik, **TOL[torch.float32])
    y_hat2, _ = ours.train()(y, scales, means, weights, training=False)
    assert torch.equal(y_hat2, c_hat)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_are_softmaxed_in_the_kernel(backend):
    y, scales, means, logits = blocked_inputs(seed=4, logits=True)
    probs = logits.unflatten(1, (K, M)).softmax(1).flatten(1, 2)
    a = lnn.GaussianMixtureConditional(backend=backend, weights_are_logits=True)
    b = lnn.GaussianMixtureConditional(backend=backend)
    for training in (True, False):
        torch.manual_seed(5)
        y_a, lik_a = a(y, scales, means, logits, training=training)
        torch.manual_seed(5)
        y_b, lik_b = b(y, scales, means, probs, training=training)
        assert torch.equal(y_a, y_b)
        torch.testing.assert_close(lik_a, lik_b, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("mode", ["noise", "mixed", "sua"])
def test_quantize_then_forward_shares_one_noise_draw(mode):
    """The JointAutoregressive pattern (quantize(y, "noise") for context model and decoder, then
    forward for the rate): the rate is evaluated at the value the decoder got."""
    y, scales, means, weights = blocked_inputs(torch.float64, seed=6)
    gmc = lnn.GaussianMixtureConditional(mode=mode, temperature=0.3)
    y_hat = gmc.quantize(y, "noise")
    _, lik = gmc(y, scales, means, weights)
    assert gmc._shared_noise is None
    if mode in ("noise", "sua"):  # the rate surrogate is the decoder's
        expected = CaiGMM().double()
        expected = expected.likelihood_lower_bound(expected._likelihood(y_hat, scales, means,
                                                                        weights))
        torch.testing.assert_close(lik, expected, **TOL[torch.float64])
    else:
        assert torch.equal(y_hat, torch.round(y))
    assert torch.equal(gmc.quantize(y, "dequantize"), torch.round(y))


def test_other_families_train():
    y, scales, means, weights = blocked_inputs(seed=8)
    for family in lic_quant.FAMILIES:
        gmc = lnn.GaussianMixtureConditional(family=family, mode="mixed")
        p = leaves(y, scales, means, weights)
        torch.manual_seed(1)
        y_hat, lik = gmc(*p)
        views = [t.unflatten(1, (K, M)).movedim(1, 0) for t in (scales, means, weights)]
        torch.manual_seed(1)
        want = lic_quant.mixture_quantize(y, *views, family=family, mode="mixed")
        assert torch.equal(y_hat, want[0]) and torch.equal(lik, want[1])
        (y_hat.sum() - lik.log().sum()).backward()
        assert all(torch.isfinite(t.grad).all() for t in p)


def test_schedule_drives_the_mixture_temperature():
    model = torch.nn.ModuleDict({"gc": lnn.GaussianConditional(None, mode="sua"),
                                 "gmc": lnn.GaussianMixtureConditional(mode="sua")})
    schedule = LinearSchedule(1.0, 0.0, steps=4).attach(model)
    schedule.step()
    assert float(model["gmc"].temperature) == float(model["gc"].temperature) == 0.75


def test_standalone_mixture_trains_without_the_compressai_base():
    gmc = lnn.StandaloneGaussianMixtureConditional(mode="mixed")
    assert not isinstance(gmc, CaiGMM) and gmc.K == 3
    assert gmc.state_dict().keys() == CaiGMM().state_dict().keys()
    y, scales, means, weights = blocked_inputs(seed=9)
    torch.manual_seed(3)
    got = gmc(y, scales, means, weights)
    torch.manual_seed(3)
    want = lnn.GaussianMixtureConditional(mode="mixed")(y, scales, means, weights)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(RuntimeError, match="compressai"):
        gmc.compress(y, scales, means, weights)


# ------------------------------------------------------------------------------------------
# compress / decompress: CompressAI's, on the same state the same strings
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("logits", [False, True])
def test_compress_gives_compressais_strings(logits):
    y, scales, means, weights = blocked_inputs(seed=10, shape=(1, M, 6, 7), logits=logits)
    y[:, 1] = 0.1  # a channel that rounds to zero: the zero bitmap skips it
    probs = weights.unflatten(1, (K, M)).softmax(1).flatten(1, 2) if logits else weights
    theirs = CaiGMM()
    ours = lnn.GaussianMixtureConditional(weights_are_logits=logits)
    ours.load_state_dict(theirs.state_dict())
    c_enc, c_yq = theirs.compress(y, scales, means, probs)
    enc, yq = ours.compress(y, scales, means, weights)
    assert enc[0] == c_enc[0] and enc[1] == c_enc[1] and torch.equal(enc[2], c_enc[2])
    assert torch.equal(yq, c_yq)
    dec = ours.decompress(*enc, scales, means, weights)
    assert torch.equal(dec, theirs.decompress(*c_enc, scales, means, probs))
    assert torch.equal(dec, torch.round(y))
    # eval forward's outputs are what the decoder rebuilds
    assert torch.equal(ours.eval()(y, scales, means, weights)[0], dec)


def _mixture_samples(family, scales, means, weights, g):
    """Draws of the K-component mixture of `family` (channel-blocked parameters)."""
    sc, mu, w = (t.unflatten(1, (K, -1)).movedim(1, 0).double() for t in (scales, means, weights))
    pick = torch.multinomial(w.movedim(0, -1).reshape(-1, K), 1, generator=g)
    pick = pick.reshape(w.shape[1:]).unsqueeze(0)
    u = torch.rand(w.shape[1:], generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    if family == "laplace":
        x = -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())
    elif family == "logistic":
        x = torch.log(u) - torch.log1p(-u)
    else:
        x = torch.special.ndtri(u)
    return (mu.gather(0, pick)[0] + x * sc.gather(0, pick)[0]).float()


@pytest.mark.parametrize("family", lic_quant.FAMILIES)
def test_compress_codes_each_familys_mixture(family):
    """compress/decompress round-trip the rounded latents for every family, and the bitstream
    is about the bits the eval likelihoods estimate; the Gaussian tables (CompressAI's) on data
    of another family cost more. Measured here (6144 latents): coded / estimate = 1.0085
    (Gaussian), 1.0047 (Laplace), 1.0057 (logistic); the Gaussian tables cost 1.035x the Laplace
    tables' bits on Laplace data and 1.084x on logistic data."""
    g = torch.Generator().manual_seed(13)
    m = 8
    full = (1, K * m, 16, 16)
    scales = torch.rand(full, generator=g) * 3 + 0.3
    means = torch.randn(full, generator=g) * 3
    weights = torch.randn(full, generator=g).unflatten(1, (K, m)).softmax(1).flatten(1, 2)
    y = _mixture_samples(family, scales, means, weights, g)
    gmc = lnn.GaussianMixtureConditional(family=family).eval()
    enc, y_q = gmc.compress(y, scales, means, weights)
    dec = gmc.decompress(*enc, scales, means, weights)
    assert torch.equal(dec, torch.round(y)) and torch.equal(y_q, torch.round(y))
    coded = len(enc[0]) * 8
    estimate = float(-gmc(y, scales, means, weights)[1].log2().sum())
    assert estimate * 0.98 < coded < estimate * 1.02 + 64, (coded, estimate)
    if family != "gaussian":
        gaussian = lnn.GaussianMixtureConditional(family="gaussian")
        assert len(gaussian.compress(y, scales, means, weights)[0][0]) * 8 > coded * 1.02


# ------------------------------------------------------------------------------------------
# replace_gaussian_conditionals on a model with a mixture
# ------------------------------------------------------------------------------------------

class TinyGMMModel(torch.nn.Module):
    """A hyperprior whose y is coded with CompressAI's GaussianMixtureConditional (the Cheng 2020
    pattern: entropy parameters of 3*K*M channels, weights softmaxed over K)."""

    def __init__(self, N=8, Mc=6, Kc=3):
        super().__init__()
        self.K, self.M = Kc, Mc
        self.g_a = torch.nn.Conv2d(3, Mc, 5, stride=4, padding=2)
        self.g_s = torch.nn.ConvTranspose2d(Mc, 3, 4, stride=4)
        self.h_a = torch.nn.Conv2d(Mc, N, 3, stride=2, padding=1)
        self.h_s = torch.nn.ConvTranspose2d(N, 3 * Kc * Mc, 2, stride=2)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = CaiGMM(K=Kc)

    def forward(self, x):
        y = self.g_a(x)
        z_hat, z_lik = self.entropy_bottleneck(self.h_a(y))
        scales, means, weights = self.h_s(z_hat).chunk(3, 1)
        weights = weights.unflatten(1, (self.K, self.M)).softmax(1).flatten(1, 2)
        y_hat, y_lik = self.gaussian_conditional(y, scales.abs(), means, weights)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_lik, "z": z_lik}}


def test_replace_swaps_a_mixture_and_keeps_its_state():
    torch.manual_seed(0)
    model = TinyGMMModel()
    old = model.gaussian_conditional
    old.update_scale_table([0.11, 0.5, 2.0, 8.0])
    old.update()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out_before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "left as is" warning for CompressAI's own class
        lnn.replace_gaussian_conditionals(model, mode="mixed", temperature=0.25)
    new = model.gaussian_conditional
    assert type(new) is lnn.GaussianMixtureConditional and new is not old
    assert new.K == 3 and new.mode == "mixed" and float(new.temperature) == 0.25
    assert not new.zero_center and not new.training  # the class default, the old module's flag
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name in before:
        assert torch.equal(after[name], before[name]), name
    with torch.no_grad():
        out_after = model(x)
    assert torch.equal(out_after["x_hat"], out_before["x_hat"])
    torch.testing.assert_close(out_after["likelihoods"]["y"], out_before["likelihoods"]["y"],
                               rtol=1e-5, atol=1e-12)
    # A second call sets the settings of the swapped module; subclasses are left alone.
    lnn.replace_gaussian_conditionals(model, rate=True, zero_center=True)
    assert model.gaussian_conditional is new and new.rate and new.zero_center

    class OwnGMM(CaiGMM):
        pass

    holder = torch.nn.ModuleDict({"own": OwnGMM()})
    with pytest.warns(UserWarning, match="OwnGMM"):
        lnn.replace_gaussian_conditionals(holder)
    assert type(holder["own"]) is OwnGMM


@pytest.mark.parametrize("backend", BACKENDS)
def test_replaced_model_trains_like_compressai_with_the_same_noise(backend, monkeypatch):
    """A training step of the model with CompressAI's mixture and with lic_quant's (defaults):
    the same loss and gradients when both draw the same noise."""
    torch.manual_seed(0)
    theirs = TinyGMMModel().train()
    ours = TinyGMMModel().train()
    ours.load_state_dict(theirs.state_dict())
    lnn.replace_gaussian_conditionals(ours, backend=backend)
    x = torch.rand(2, 3, 32, 32)

    def noise_like_the_kernels(self, inputs, mode, means=None):
        # The seed the op would draw at this point of torch's random stream, and its noise.
        assert mode == "noise"
        return inputs + lic_quant.uniform_noise(inputs.shape, make_seed(None, inputs.device))

    monkeypatch.setattr(CaiGMM, "quantize", noise_like_the_kernels)
    torch.manual_seed(4)
    out_c = theirs(x)
    torch.manual_seed(4)
    out_l = ours(x)
    assert torch.equal(out_l["x_hat"], out_c["x_hat"])
    assert torch.equal(out_l["likelihoods"]["z"], out_c["likelihoods"]["z"])
    torch.testing.assert_close(out_l["likelihoods"]["y"], out_c["likelihoods"]["y"],
                               rtol=1e-5, atol=1e-12)
    loss = CaiRDLoss(lmbda=0.01)
    loss(out_c, x)["loss"].backward()
    loss(out_l, x)["loss"].backward()
    for (name, p), q in zip(theirs.named_parameters(), ours.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------
# rate=True, bits_per_pixel and RateDistortionLoss
# ------------------------------------------------------------------------------------------

def _module_pair(kind, backend):
    if kind == "gaussian":
        return (lnn.GaussianConditional(None, mode="mixed", backend=backend),
                lnn.GaussianConditional(None, mode="mixed", backend=backend, rate=True))
    return (lnn.GaussianMixtureConditional(mode="mixed", backend=backend),
            lnn.GaussianMixtureConditional(mode="mixed", backend=backend, rate=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
def test_rate_option_returns_per_sample_bits(kind, backend):
    y, scales, means, weights = blocked_inputs(seed=11)
    args = (y, scales[:, :M], means[:, :M]) if kind == "gaussian" else (y, scales, means, weights)
    plain, rated = _module_pair(kind, backend)
    a, b = leaves(*args), leaves(*args)
    for training in (True, False):
        torch.manual_seed(2)
        y_hat, lik = plain(*a, training=training)
        torch.manual_seed(2)
        y_hat_r, bits = rated(*b, training=training)
        assert torch.equal(y_hat, y_hat_r)
        assert bits.shape == (SHAPE[0],) and bits.dtype == torch.float32
        expected = -torch.log2(lik.double()).flatten(1).sum(1)
        torch.testing.assert_close(bits.double(), expected, rtol=1e-6, atol=0)
    (y_hat.square().sum() - torch.log2(lik).sum()).backward()
    (y_hat_r.square().sum() + bits.sum()).backward()
    for p, q in zip(a, b):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)


def test_bits_per_pixel_reads_likelihoods_and_bits():
    g = torch.Generator().manual_seed(0)
    lik_y = torch.rand(2, 4, 3, 3, generator=g) * 0.9 + 0.05
    lik_z = torch.rand(2, 2, 1, 1, generator=g) * 0.9 + 0.05
    pixels = 2 * 24 * 24
    expected = CaiRDLoss()({"likelihoods": {"y": lik_y, "z": lik_z},
                            "x_hat": torch.zeros(2, 3, 24, 24)},
                           torch.zeros(2, 3, 24, 24))["bpp_loss"]
    assert torch.equal(lnn.bits_per_pixel({"y": lik_y, "z": lik_z}, pixels), expected)
    bits_y = -torch.log2(lik_y.double()).flatten(1).sum(1).float()
    mixed = lnn.bits_per_pixel({"y": bits_y, "z": lik_z}, pixels)
    torch.testing.assert_close(mixed, expected, rtol=1e-6, atol=0)
    # nested dicts and lists (latent codecs such as ELIC's), a bare tensor
    nested = lnn.bits_per_pixel({"y": [bits_y], "z": {"z": lik_z}}, pixels)
    torch.testing.assert_close(nested, expected, rtol=1e-6, atol=0)
    assert torch.equal(lnn.bits_per_pixel(bits_y, 4), bits_y.sum() / 4)
    with pytest.raises(ValueError, match="no likelihoods"):
        lnn.bits_per_pixel({}, pixels)
    with pytest.raises(TypeError, match="str"):
        lnn.bits_per_pixel({"y": "a"}, pixels)


@pytest.mark.parametrize("metric", ["mse", "ms-ssim"])
def test_rate_distortion_loss_equals_compressais(metric):
    torch.manual_seed(0)
    model = MeanScaleHyperprior(N=8, M=8).train()
    size = 192 if metric == "ms-ssim" else 64  # MS-SSIM: 5 scales (> 160), a multiple of 64
    x = torch.rand(2, 3, size, size)
    out = model(x)
    theirs = CaiRDLoss(lmbda=0.02, metric=metric)(out, x)
    ours = lnn.RateDistortionLoss(lmbda=0.02, metric=metric)(out, x)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(lnn.RateDistortionLoss(0.02, metric, return_type="loss")(out, x),
                       theirs["loss"])
    with pytest.raises(NotImplementedError):
        lnn.RateDistortionLoss(metric="psnr")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kind", ["hyperprior", "mixture"])
def test_rate_true_training_step_matches_compressais_loss(model_kind, backend):
    """The swap the README describes: lic_quant.nn.RateDistortionLoss and
    replace_gaussian_conditionals(model, rate=True) give CompressAI's RateDistortionLoss on the
    likelihoods of the same model (same weights, same noise), loss and gradients."""
    torch.manual_seed(0)
    make = (lambda: MeanScaleHyperprior(N=8, M=8)) if model_kind == "hyperprior" else TinyGMMModel
    reference, rated = make().train(), make().train()
    rated.load_state_dict(reference.state_dict())
    lnn.replace_gaussian_conditionals(reference, mode="mixed", backend=backend)
    lnn.replace_gaussian_conditionals(rated, mode="mixed", backend=backend, rate=True)
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    out_ref = reference(x)
    torch.manual_seed(3)
    out_rate = rated(x)
    assert out_rate["likelihoods"]["y"].shape == (2,)
    theirs = CaiRDLoss(lmbda=0.01)(out_ref, x)
    ours = lnn.RateDistortionLoss(lmbda=0.01)(out_rate, x)
    for key in ("bpp_loss", "mse_loss", "loss"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=0, msg=key)
    theirs["loss"].backward()
    ours["loss"].backward()
    for (name, p), q in zip(reference.named_parameters(), rated.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [False, True])
def test_compile_fullgraph_equals_eager(rate):
    """The module under torch.compile(fullgraph=True): no graph break, the eager values (inductor
    told to draw eager's random numbers, so both runs get the same seed), no recompilation for
    a new temperature."""
    if not lic_quant.extension_available():
        pytest.skip("lic_quant._C is not built")
    y, scales, means, weights = blocked_inputs(seed=12)
    gmc = lnn.GaussianMixtureConditional(mode="sua", temperature=0.7, rate=rate)
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(gmc, fullgraph=True, backend=counter)
    frames = None
    with torch._inductor.config.patch(fallback_random=True):
        for temperature in (0.7, 0.2):
            gmc.temperature = temperature
            a, b = leaves(y, scales, means, weights), leaves(y, scales, means, weights)
            torch.manual_seed(9)
            want = gmc(*a)
            torch.manual_seed(9)
            got = compiled(*b)
            for w, g in zip(want, got):
                torch.testing.assert_close(g, w, rtol=1e-6, atol=0)
            sum(t.sum() for t in want).backward()
            sum(t.sum() for t in got).backward()
            for p, q in zip(a, b):
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)
            frames = frames if temperature != 0.7 else counter.frame_count
    assert counter.frame_count == frames, "a new temperature recompiled the graph"

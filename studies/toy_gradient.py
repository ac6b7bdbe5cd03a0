"""The scalar toy of the gradient study, with the exact expected loss under hard rounding.

Model (one scalar each): encoder y = theta * x, x ~ N(0, 1); entropy model N(mu, sigma^2)
discretized on the unit lattice; decoder x_hat = g * y_hat. Loss per sample, in bits:

    L = -log2 P(v) + lam * (x - g * y_hat)^2

At test time (CompressAI's eval and its entropy coder) the lattice is centred on mu:
y_hat = round(y - mu) + mu, v = round(y - mu) = k, an integer. The expected loss is then a sum over
bins k of y - mu, i.e. x in [beta_{k-1}, beta_k) with beta_k = (k + 1/2 + mu) / theta:

    E[L] = sum_k  R_k * M_k  +  lam * int_{beta_{k-1}}^{beta_k} (x - c_k)^2 phi(x) dx

with R_k = -log2 max(q_k, b_p), q_k = Phi((1/2 - |k|)/s) - Phi((-1/2 - |k|)/s), s = max(sigma,
b_sigma), c_k = g (k + mu) and M_k the normal mass of the bin. The integrals have closed forms
(moments of the truncated normal), so E[L] is exact to float64 rounding.

Its gradient (Leibniz rule): theta and mu move the bin edges, so their derivatives carry boundary
terms phi(beta_k) * dbeta_k/dp * (h_k(beta_k) - h_{k+1}(beta_k)), the jump of the per-sample loss
h_k(x) = R_k + lam (x - c_k)^2 across the edge; mu and g also enter c_k inside the bins; sigma
enters only R_k. ``exact_gradient`` writes these out; ``finite_difference_gradient``
differentiates ``expected_loss`` numerically, and the study checks the two agree.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

PARAMS = ("theta", "mu", "sigma", "g")
LN2 = math.log(2.0)


def _phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _bins(theta: float, mu: float, reach: float = 12.0):
    """Bin indices k whose x-interval meets [-reach, reach] (outside: normal mass < 1e-32), and
    the edges beta_{k-1}, beta_k (the outermost ones at +-infinity)."""
    if not theta > 0:
        raise ValueError(f"theta must be positive; got {theta}")
    k_lo = math.floor(-reach * theta - mu) - 1
    k_hi = math.ceil(reach * theta - mu) + 1
    k = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    upper = (k + 0.5 + mu) / theta
    lower = (k - 0.5 + mu) / theta
    upper[-1], lower[0] = np.inf, -np.inf
    return k, lower, upper


def _rate_bits(k, sigma: float, scale_bound: float, likelihood_bound: float):
    s = max(sigma, scale_bound)
    a = (0.5 - np.abs(k)) / s
    b = (-0.5 - np.abs(k)) / s
    # |v| = |k| puts both arguments at or below the centre: ndtr is accurate in the lower tail,
    # so the difference keeps its relative accuracy (docs/spec.md section 1's reflected form).
    q = ndtr(a) - ndtr(b)
    P = np.maximum(q, likelihood_bound)
    dq_ds = -(a * _phi(a) - b * _phi(b)) / s
    passes = (q >= likelihood_bound) & (sigma >= scale_bound)
    dR_dsigma = np.where(passes, -dq_ds / (q * LN2), 0.0)
    return -np.log2(P), dR_dsigma


def _moments(lower, upper):
    """int phi, int x phi, int x^2 phi over [lower, upper) (edges may be infinite)."""
    phi_l = np.where(np.isfinite(lower), _phi(np.where(np.isfinite(lower), lower, 0.0)), 0.0)
    phi_u = np.where(np.isfinite(upper), _phi(np.where(np.isfinite(upper), upper, 0.0)), 0.0)
    xl = np.where(np.isfinite(lower), lower, 0.0)
    xu = np.where(np.isfinite(upper), upper, 0.0)
    j0 = ndtr(upper) - ndtr(lower)
    j1 = phi_l - phi_u
    j2 = j0 + xl * phi_l - xu * phi_u
    return j0, j1, j2


def expected_loss(theta, mu, sigma, g, *, lam, scale_bound=0.11, likelihood_bound=1e-9):
    """E_x[L] under zero-centred hard rounding, exact (closed form per bin)."""
    k, lower, upper = _bins(theta, mu)
    R, _ = _rate_bits(k, sigma, scale_bound, likelihood_bound)
    j0, j1, j2 = _moments(lower, upper)
    c = g * (k + mu)
    return float(np.sum(R * j0 + lam * (j2 - 2 * c * j1 + c * c * j0)))


def expected_rate_distortion(theta, mu, sigma, g, *, scale_bound=0.11, likelihood_bound=1e-9):
    """(E[R] in bits, E[D]) under zero-centred hard rounding."""
    k, lower, upper = _bins(theta, mu)
    R, _ = _rate_bits(k, sigma, scale_bound, likelihood_bound)
    j0, j1, j2 = _moments(lower, upper)
    c = g * (k + mu)
    return float(np.sum(R * j0)), float(np.sum(j2 - 2 * c * j1 + c * c * j0))


def exact_gradient(theta, mu, sigma, g, *, lam, scale_bound=0.11, likelihood_bound=1e-9):
    """d E[L] / d(theta, mu, sigma, g), written out with the boundary terms (module docstring)."""
    k, lower, upper = _bins(theta, mu)
    R, dR_dsigma = _rate_bits(k, sigma, scale_bound, likelihood_bound)
    j0, j1, _ = _moments(lower, upper)
    c = g * (k + mu)
    # Interior edges beta_k between bin k and bin k+1.
    edge = upper[:-1]
    jump = (R[:-1] + lam * (edge - c[:-1]) ** 2) - (R[1:] + lam * (edge - c[1:]) ** 2)
    boundary = _phi(edge) * jump  # times dbeta/dparam
    d_theta = float(np.sum(boundary * (-edge / theta)))
    inner_c = j1 - c * j0  # int (x - c_k) phi over bin k
    d_mu = float(np.sum(boundary / theta) - 2 * lam * g * np.sum(inner_c))
    d_sigma = float(np.sum(dR_dsigma * j0))
    d_g = float(-2 * lam * np.sum((k + mu) * inner_c))
    return {"theta": d_theta, "mu": d_mu, "sigma": d_sigma, "g": d_g}


def finite_difference_gradient(theta, mu, sigma, g, *, lam, scale_bound=0.11,
                               likelihood_bound=1e-9, rel_step=1e-5):
    """Central differences of ``expected_loss``. Step h = 1e-5 * max(1, |p|): the truncation
    error h^2/6 |E'''| and the rounding error ~ eps |E| / h are then both ~1e-10 for O(1)
    losses and derivatives, far below the biases measured."""
    point = {"theta": theta, "mu": mu, "sigma": sigma, "g": g}
    grad = {}
    for name in PARAMS:
        h = rel_step * max(1.0, abs(point[name]))
        hi = dict(point, **{name: point[name] + h})
        lo = dict(point, **{name: point[name] - h})
        f_hi = expected_loss(**hi, lam=lam, scale_bound=scale_bound,
                             likelihood_bound=likelihood_bound)
        f_lo = expected_loss(**lo, lam=lam, scale_bound=scale_bound,
                             likelihood_bound=likelihood_bound)
        grad[name] = (f_hi - f_lo) / (2 * h)
    return grad


# ------------------------------------------------------------------------------------------------
# The surrogate's own expected objective, by quadrature
# ------------------------------------------------------------------------------------------------

def own_objective(theta, mu, sigma, g, *, mode: str, temperature: float = 0.0,
                  zero_center: bool = True, lam: float, scale_bound: float = 0.11,
                  likelihood_bound: float = 1e-9, reach: float = 12.0, nodes_x: int = 48,
                  nodes_u: int = 32):
    """E_{x,u}[L] when training evaluates L at the surrogate's forward values, as torch float64
    scalars of the parameters (tensors with requires_grad give its exact gradient by autograd).

    The rounded part n = round(y - c) depends on x only (never on the noise u), so x splits into
    the bins of n: bin k is x in [(k - 1/2 + c)/theta, (k + 1/2 + c)/theta), c = mu with
    zero_center, else 0. Inside a bin the loss is smooth in x and u; Gauss-Legendre in x on each
    bin (its edges computed from the parameters, so autograd differentiates them too: the
    boundary terms of the Leibniz rule) and in u on [-1/2, 1/2]. Outside |x| < reach the normal
    mass is below 1e-32. For mode='ste' with zero_center this is the test-time objective
    (expected_loss), which checks the quadrature and its gradient against the closed forms."""
    import torch

    p = {k: v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
         for k, v in (("theta", theta), ("mu", mu), ("sigma", sigma), ("g", g))}
    th, m, sg, gg = p["theta"], p["mu"], p["sigma"], p["g"]
    c = m if zero_center else torch.zeros((), dtype=torch.float64)
    t_val = float(th.detach())
    c_val = float(c.detach())
    k_lo = math.floor(-reach * t_val - c_val) - 1
    k_hi = math.ceil(reach * t_val - c_val) + 1
    k = torch.arange(k_lo, k_hi + 1, dtype=torch.float64)
    lower = ((k - 0.5 + c) / th).clamp(-reach, reach)
    upper = ((k + 0.5 + c) / th).clamp(-reach, reach)
    tx, wx = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(nodes_x))
    tu, wu = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(nodes_u))
    u = 0.5 * tu  # nodes on [-1/2, 1/2], weights wu / 2 sum to 1
    half = 0.5 * (upper - lower)
    x = (0.5 * (upper + lower))[:, None] + half[:, None] * tx[None, :]  # (bins, nodes_x)
    wxx = half[:, None] * wx[None, :] * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    x3, k3, u3 = x[:, :, None], k[:, None, None], u[None, None, :]
    r = th * x3 - c
    if mode == "noise":
        rate, dec = r + u3, r + u3
    elif mode == "ste":
        rate, dec = k3 + 0 * u3, k3 + 0 * u3
    elif mode == "mixed":
        rate, dec = r + u3, k3 + 0 * u3
    elif mode == "sua":
        rate = k3 + temperature * ((r - k3) + u3)
        dec = rate
    else:
        raise ValueError(mode)
    v = c + rate - m
    s = torch.clamp_min(sg, scale_bound)
    av = v.abs()
    prob = torch.special.ndtr((0.5 - av) / s) - torch.special.ndtr((-0.5 - av) / s)
    bits = -torch.log2(torch.clamp_min(prob, likelihood_bound))
    y_hat = c + dec
    loss = bits + lam * (x3 - gg * y_hat) ** 2
    return torch.sum(wxx[:, :, None] * (0.5 * wu)[None, None, :] * loss)


def own_gradient(point: dict, **kw) -> dict:
    """d/d(theta, mu, sigma, g) of ``own_objective`` (autograd through the quadrature)."""
    import torch

    p = {k: torch.tensor(float(point[k]), dtype=torch.float64, requires_grad=True) for k in PARAMS}
    value = own_objective(*(p[k] for k in PARAMS), **kw)
    value.backward()
    return {k: float(p[k].grad) for k in PARAMS} | {"value": float(value.detach())}

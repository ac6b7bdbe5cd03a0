#!/usr/bin/env python
"""Study 2b: zero-centre quantization with a per-element mean, partial stop-gradient on and off.

The toy of studies/toy_gradient.py, but with a mean that differs per element, as the mean a
hyperprior predicts does: mu_i = mu0 + delta_i with delta_i ~ U(-1/2, 1/2) drawn per sample, so
the lattice offset of zero-centre quantization is spread uniformly over a bin instead of being one
constant. The parameters are theta, mu0 (a shared offset of the predicted means), sigma and g.

Three settings of the lattice:

    lattice at 0      zero_center=False: n = round(y), the Gaussian sees n - mu
    zc, sg on         zero_center=True (lic_quant's default, docs/spec.md section 2): the offset
                      is a constant, so d y_hat / d mu = 0 (CompressAI's round(y - mu) + mu with a
                      straight-through round)
    zc, sg off        zero_center=True with the lattice position differentiated as inside a bin
                      of the true objective: y_hat = n + mu, d y_hat / d mu = 1 (the rate path
                      is lic_quant's in both zc settings)

Per setting and parameter: the bias against the true gradient of the test-time objective
(zero-centred rounding, expected over x and delta: toy_gradient.exact_gradient averaged over
delta by Gauss-Legendre), and the per-sample variance split into the part over the data (x,
delta) and the part over the quantization noise u. Each (x, delta) is used twice with independent
noise: Cov(g1, g2) is the data part, E[(g1 - g2)^2] / 2 the noise part.

    python studies/zero_center.py --quick --out studies_out
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lic_quant as lq  # noqa: E402
from studies import common  # noqa: E402
from studies.gradient_bias_variance import (LAMBDA, LIKELIHOOD_BOUND, POINTS,  # noqa: E402
                                            SCALE_BOUND)
from studies.toy_gradient import PARAMS, exact_gradient  # noqa: E402

SIZES = {"tiny": {"samples": 4_000}, "quick": {"samples": 400_000},
         "full": {"samples": 4_000_000}}
SETTINGS = {"lattice at 0": (False, True), "zc, sg on": (True, True), "zc, sg off": (True, False)}
SURROGATES = (("noise", 0.0), ("ste", 0.0), ("mixed", 0.0), ("sua", 0.5))
MU_SPREAD = 1.0  # delta ~ U(-MU_SPREAD/2, MU_SPREAD/2): a full bin


def true_gradient(point: dict, nodes: int = 64) -> dict:
    t, w = np.polynomial.legendre.leggauss(nodes)
    grads = [exact_gradient(**dict(point, mu=point["mu"] + 0.5 * MU_SPREAD * ti), lam=LAMBDA,
                            scale_bound=SCALE_BOUND, likelihood_bound=LIKELIHOOD_BOUND)
             for ti in t]
    return {k: float(sum(0.5 * wi * gr[k] for wi, gr in zip(w, grads))) for k in PARAMS}


def per_sample_gradients(point, x, delta, mode, temperature, zero_center, stop_gradient, seed):
    params = {k: torch.full_like(x, point[k], requires_grad=True) for k in PARAMS}
    mu = params["mu"] + delta
    y_hat, lik = lq.gaussian_quantize(
        params["theta"] * x, params["sigma"], mu, mode=mode, temperature=temperature,
        scale_bound=SCALE_BOUND, likelihood_bound=LIKELIHOOD_BOUND, zero_center=zero_center,
        seed=seed)
    if not stop_gradient:
        y_hat = y_hat + (mu - mu.detach())
    loss = -torch.log2(lik) + LAMBDA * (x - params["g"] * y_hat) ** 2
    loss.sum().backward()
    return torch.stack([params[k].grad for k in PARAMS]).detach()


def run(profile: str, out_dir: str, device: torch.device | None = None, seed: int = 0) -> dict:
    n = SIZES[profile]["samples"]
    out = common.ensure_dir(os.path.join(out_dir, "zero_center"))
    g = torch.Generator().manual_seed(common.study_seed(seed, "zero-center-x"))
    x = torch.randn(n, generator=g, dtype=torch.float64)
    delta = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * MU_SPREAD
    x, delta = x.to(device or "cpu"), delta.to(device or "cpu")
    rows = []
    jobs = [(p, m, t, s) for p in POINTS for m, t in SURROGATES for s in SETTINGS]
    truths = {p: true_gradient(POINTS[p]) for p in POINTS}
    for point, mode, t, setting in common.progress(jobs, desc="zero-centre"):
        zc, sg = SETTINGS[setting]
        grads = per_sample_gradients(POINTS[point], torch.cat([x, x]), torch.cat([delta, delta]),
                                     mode, t, zc, sg,  # one noise stream for every setting
                                     common.study_seed(seed, "zero-center", point, mode))
        first, second = grads[:, :n], grads[:, n:]
        for i, name in enumerate(PARAMS):
            mean = float(grads[i].mean())
            a, b = first[i] - mean, second[i] - mean
            rows.append({
                "point": point, "mode": mode, "temperature": t, "setting": setting,
                "zero_center": zc, "stop_gradient": sg, "param": name,
                "true_grad": truths[point][name], "mean_grad": mean,
                "bias": mean - truths[point][name],
                "bias_stderr": float((0.5 * (first[i] + second[i])).std() / n**0.5),
                "variance": float(grads[i].var()),
                "data_variance": float((a * b).mean()),
                "noise_variance": float(((first[i] - second[i]) ** 2).mean() / 2),
            })
    csv_path = common.write_csv(os.path.join(out, "zero_center.csv"), rows)
    json_path = common.write_json(os.path.join(out, "zero_center.json"), {
        "points": POINTS, "lambda": LAMBDA, "scale_bound": SCALE_BOUND, "mu_spread": MU_SPREAD,
        "samples_per_setting": 2 * n, "true_gradient": truths})
    return {"csv": csv_path, "json": json_path}


def main(argv=None):
    common.study_main(__doc__, run, argv)


if __name__ == "__main__":
    main()

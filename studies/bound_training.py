#!/usr/bin/env python
"""Study 1b: the lower bound b_sigma on the scale, applied during training.

A synthetic source whose entropy model is miscalibrated by a known factor. Groups j = 1..G with
true scales sigma_j log-uniform in [0.05, 5] and means mu_j uniform in [-1/2, 1/2]; per element
x ~ N(0, sigma_j^2), encoder y = a * x + mu_j, decoder x_hat = g * (y_hat - mu_j), with a and g
learned (shared). The model's scale of y is c times the true one: sigma_model = c * a * sigma_j,
c < 1 overconfident, c = 1 exact, c > 1 underconfident. Training cannot learn c away (only a
and g are free), as a hyperprior cannot fix a systematic error of its own; it can only move a,
which is how a bound reshapes what the model learns.

Each (c, b_sigma, surrogate) trains from the same start with the same data: `noise`, and `sua`
with T annealed 1 -> 0 on the zero-centre lattice (common.sua_schedule). The trained model is then
measured on fresh samples with rounding and the same bound: the actual rate (ideal code length
-log2 P of the rounded value, bits per element), the distortion, J = R + lambda * D, and the
mismatch of the noise surrogate at that model (its rate minus the rounded rate: the mean and the
mean absolute value per element).

    python studies/bound_training.py --quick --out studies_out
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import lic_quant as lq  # noqa: E402
from studies import common  # noqa: E402

CS = (0.5, 1.0, 2.0)
BOUNDS = (0.0, 0.11, 0.5)
SURROGATES = ("noise", "sua")
LAMBDA = 4.0
GROUPS = 24
SIZES = {
    "tiny": {"steps": 10, "per_group": 64, "eval_per_group": 500},
    "quick": {"steps": 1500, "per_group": 256, "eval_per_group": 40_000},
    "full": {"steps": 6000, "per_group": 1024, "eval_per_group": 200_000},
}


def source(seed: int):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.linspace(math.log(0.05), math.log(5.0), GROUPS, dtype=torch.float64))
    mu = torch.rand(GROUPS, generator=g, dtype=torch.float64) - 0.5
    return sigma, mu


def code(a, gain, x, sigma_t, mu, c, bound, mode, temperature, zero_center, seed):
    """(y_hat, bits per element, squared error) of the toy codec on x (groups x n)."""
    y = a * x + mu[:, None]
    scales = (c * a * sigma_t)[:, None].expand_as(y)
    y_hat, lik = lq.gaussian_quantize(y, scales, mu[:, None].expand_as(y), mode=mode,
                                      temperature=temperature, scale_bound=bound,
                                      zero_center=zero_center, seed=seed)
    bits = -torch.log2(lik)
    err = (x - gain * (y_hat - mu[:, None])) ** 2
    return y_hat, bits, err


def train(c: float, bound: float, mode: str, sizes: dict, sigma_t, mu, seed: int):
    torch.manual_seed(seed)
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)
    gain = torch.ones((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_a, gain], lr=0.01)
    schedule = common.sua_schedule(sizes["steps"]) if mode == "sua" else None
    g = torch.Generator().manual_seed(seed)
    for step in range(sizes["steps"]):
        x = torch.randn(GROUPS, sizes["per_group"], generator=g, dtype=torch.float64)
        x = x * sigma_t[:, None]
        t = schedule.value_at(step) if schedule else 0.0
        _, bits, err = code(torch.exp(log_a), gain, x, sigma_t, mu, c, bound, mode, t,
                            mode == "sua", None)
        loss = bits.mean() + LAMBDA * err.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(torch.exp(log_a.detach())), float(gain.detach())


@torch.no_grad()
def measure(a, gain, c, bound, sizes, sigma_t, mu, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(GROUPS, sizes["eval_per_group"], generator=g, dtype=torch.float64)
    x = x * sigma_t[:, None]
    a_t, g_t = torch.tensor(a, dtype=torch.float64), torch.tensor(gain, dtype=torch.float64)
    _, bits_round, err = code(a_t, g_t, x, sigma_t, mu, c, bound, "ste", 0.0, True, 0)
    _, bits_noise, _ = code(a_t, g_t, x, sigma_t, mu, c, bound, "noise", 0.0, True, seed)
    # the same source coded with the exact model (c = 1) and no bound: the rate to aim for
    _, bits_exact, _ = code(a_t, g_t, x, sigma_t, mu, 1.0, 0.0, "ste", 0.0, True, 0)
    gap = bits_noise - bits_round
    rate, dist = float(bits_round.mean()), float(err.mean())
    return {"rate": rate, "distortion": dist, "J": rate + LAMBDA * dist,
            "rate_exact_model": float(bits_exact.mean()),
            "noise_rate_gap": float(gap.mean()), "noise_abs_rate_gap": float(gap.abs().mean()),
            "bound_active": float((c * a * sigma_t < bound).double().mean())}


def run(profile: str, out_dir: str, device: torch.device | None = None, seed: int = 0) -> dict:
    sizes = SIZES[profile]
    out = common.ensure_dir(os.path.join(out_dir, "bound_training"))
    sigma_t, mu = source(common.study_seed(seed, "bound-source"))
    rows = []
    jobs = [(c, b, m) for c in CS for b in BOUNDS for m in SURROGATES]
    for c, b, mode in common.progress(jobs, desc="sigma bound in training"):
        a, gain = train(c, b, mode, sizes, sigma_t, mu, common.study_seed(seed, "bound-train"))
        rows.append({"c": c, "scale_bound": b, "mode": mode, "a": a, "g": gain,
                     **measure(a, gain, c, b, sizes, sigma_t, mu,
                               common.study_seed(seed, "bound-eval"))})
    csv_path = common.write_csv(os.path.join(out, "bound_training.csv"), rows)
    json_path = common.write_json(os.path.join(out, "bound_training.json"), {
        "lambda": LAMBDA, "groups": GROUPS, "sigma_range": [0.05, 5.0], "sizes": sizes,
        "cs": list(CS), "bounds": list(BOUNDS)})
    return {"csv": csv_path, "json": json_path}


def main(argv=None):
    common.study_main(__doc__, run, argv)


if __name__ == "__main__":
    main()

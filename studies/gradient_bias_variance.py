#!/usr/bin/env python
"""Study 2: bias and variance of each surrogate's gradient against the true gradient.

Toy (studies/toy_gradient.py): y = theta * x with x ~ N(0, 1), a Gaussian entropy model N(mu,
sigma^2) with learned mu and sigma, decoder x_hat = g * y_hat, loss L = R + lam * D in bits. The
target is the gradient of the expected loss under test-time hard rounding (lattice centred on mu,
as CompressAI's eval and entropy coder), computed exactly from its closed form and cross-checked
by central finite differences, by autograd through a quadrature, and (the loss value only) by
Monte Carlo through lic_quant's rounding.

The bias splits in two: estimation bias, the surrogate's mean gradient minus the gradient of its
own expected objective (E[L] with L evaluated at the surrogate's forward values: a quadrature,
toy_gradient.own_objective), and mismatch, that own objective's gradient minus the rounding
objective's. The quadrature's autograd gradient of ste's own objective (which is the rounding
objective) is a third, independent computation of the true gradient.

Each surrogate's estimate is lic_quant's autograd gradient of L on one sample: every sample gets
its own copy of the parameters, so one backward gives N per-sample gradients. Each x is used
twice with independent noise, which splits the variance into the part due to x and the part due
to the quantization noise (E_x Var_u). Reported per parameter: bias^2 = (mean - true)^2, the
per-sample variance (a batch of B divides it by B) and its noise part, for noise/ste/mixed/sua
over T, with and without zero_center.

    python studies/gradient_bias_variance.py --quick --out studies_out
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lic_quant as lq  # noqa: E402
from studies import common  # noqa: E402
from studies.toy_gradient import (PARAMS, exact_gradient, expected_loss,  # noqa: E402
                                  expected_rate_distortion, finite_difference_gradient,
                                  own_gradient)

# Two operating points. "narrow": y = 0.4 x has a spread of 0.4 bins, like most channels of a
# learned latent at low rate; the rounding error is far from uniform there, which is where
# surrogates can be biased. "wide": y spans several bins, the error is uniform to ~1e-6 (its
# Fourier coefficients are exp(-2 pi^2 theta^2)) and every smooth surrogate is nearly unbiased.
# In both the mean sits between lattice points (so zero_center matters) and the model is off its
# optimum (all gradients nonzero).
POINTS = {
    "narrow": {"theta": 0.4, "mu": 0.3, "sigma": 0.4, "g": 1.5},
    "wide": {"theta": 1.2, "mu": 0.3, "sigma": 1.1, "g": 0.7},
}
LAMBDA = 8.0
SCALE_BOUND = 0.11
LIKELIHOOD_BOUND = 1e-9

SIZES = {
    "tiny": {"samples": 4_000, "temperatures": [0.0, 0.5, 1.0]},
    "quick": {"samples": 400_000, "temperatures": [round(0.1 * i, 2) for i in range(11)]},
    "full": {"samples": 4_000_000, "temperatures": [round(0.05 * i, 2) for i in range(21)]},
}


def per_sample_gradients(point: dict, x: torch.Tensor, mode: str, temperature: float,
                         zero_center: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradients (4, n), losses (n,)) of L per sample through lic_quant's autograd."""
    params = {k: torch.full_like(x, point[k], requires_grad=True) for k in PARAMS}
    y = params["theta"] * x
    y_hat, lik = lq.gaussian_quantize(
        y, params["sigma"], params["mu"], mode=mode, temperature=temperature,
        scale_bound=SCALE_BOUND, likelihood_bound=LIKELIHOOD_BOUND, zero_center=zero_center,
        seed=seed)
    loss = -torch.log2(lik) + LAMBDA * (x - params["g"] * y_hat) ** 2
    loss.sum().backward()
    return torch.stack([params[k].grad for k in PARAMS]).detach(), loss.detach()


def estimate(point_name: str, x: torch.Tensor, mode: str, temperature: float, zero_center: bool,
             seed: int, true_grad: dict) -> list[dict]:
    """Bias and variance of one surrogate's gradient, and the bias split in two with the gradient
    of the surrogate's own expected objective (toy_gradient.own_objective):

        bias = (mean surrogate gradient - own objective's gradient)     estimation bias
             + (own objective's gradient - rounding objective's gradient)   mismatch"""
    n = x.numel()
    own = own_gradient(POINTS[point_name], mode=mode, temperature=temperature,
                       zero_center=zero_center, lam=LAMBDA, scale_bound=SCALE_BOUND,
                       likelihood_bound=LIKELIHOOD_BOUND)
    grads, losses = per_sample_gradients(POINTS[point_name], torch.cat([x, x]), mode, temperature,
                                         zero_center, seed)
    first, second = grads[:, :n], grads[:, n:]
    pair_mean = 0.5 * (first + second)
    rows = []
    for i, name in enumerate(PARAMS):
        mean = float(grads[i].mean())
        bias = mean - true_grad[name]
        stderr = float(pair_mean[i].std() / n**0.5)
        rows.append({
            "point": point_name, "mode": mode, "temperature": temperature,
            "zero_center": zero_center,
            "param": name, "true_grad": true_grad[name], "mean_grad": mean, "bias": bias,
            "bias2": bias * bias,
            "bias_stderr": stderr,
            "own_grad": own[name], "estimation_bias": mean - own[name],
            "estimation_z": (mean - own[name]) / stderr if stderr > 0 else 0.0,
            "mismatch": own[name] - true_grad[name],
            "variance": float(grads[i].var()),
            "noise_variance": float(((first[i] - second[i]) ** 2).mean() / 2),
            "mse": bias * bias + float(grads[i].var()),
            "surrogate_loss": float(losses.mean()),
        })
    return rows


def run(profile: str, out_dir: str, device: torch.device | None = None, seed: int = 0) -> dict:
    sizes = SIZES[profile]
    out = common.ensure_dir(os.path.join(out_dir, "gradient"))
    kw = dict(lam=LAMBDA, scale_bound=SCALE_BOUND, likelihood_bound=LIKELIHOOD_BOUND)
    # The Monte Carlo samples, float64 (the op computes float64 in float64), drawn on the CPU so
    # that every device sees the same x.
    g = torch.Generator().manual_seed(common.study_seed(seed, "gradient-x"))
    x = torch.randn(sizes["samples"], generator=g, dtype=torch.float64).to(device or "cpu")
    settings = [(p, m, t, zc) for p in POINTS for zc in (True, False) for m in common.MODES
                for t in (sizes["temperatures"] if m == "sua" else [0.0])]
    checks, rows, exact = {}, [], {}
    for name, point in POINTS.items():
        exact[name] = exact_gradient(**point, **kw)
        fd = finite_difference_gradient(**point, **kw)
        true_loss = expected_loss(**point, **kw)
        rate, dist = expected_rate_distortion(**point, scale_bound=SCALE_BOUND,
                                              likelihood_bound=LIKELIHOOD_BOUND)
        _, hard = per_sample_gradients(point, x, "ste", 0.0, True, seed=0)  # test-time rounding
        mc_loss, mc_stderr = float(hard.mean()), float(hard.std() / hard.numel() ** 0.5)
        quad = own_gradient(point, mode="ste", zero_center=True, **kw)
        checks[name] = {
            "true_gradient_quadrature_autograd": {k: quad[k] for k in PARAMS},
            "max_abs_exact_minus_quadrature": max(abs(exact[name][k] - quad[k]) for k in PARAMS),
            "point": point, "true_gradient_exact": exact[name],
            "true_gradient_finite_difference": fd,
            "max_abs_exact_minus_fd": max(abs(exact[name][k] - fd[k]) for k in PARAMS),
            "expected_loss_exact": true_loss, "expected_rate_bits": rate, "expected_mse": dist,
            "expected_loss_monte_carlo": mc_loss, "monte_carlo_stderr": mc_stderr,
            "monte_carlo_z": (mc_loss - true_loss) / mc_stderr,
        }
    for name, mode, t, zc in common.progress(settings, desc="gradient bias/variance"):
        rows += estimate(name, x, mode, t, zc,
                         common.study_seed(seed, "gradient", name, mode, t, zc), exact[name])
    repeats = noise_repeats(sizes["samples"], seed, exact, device)
    csv_path = common.write_csv(os.path.join(out, "gradient_bias_variance.csv"), rows)
    json_path = common.write_json(os.path.join(out, "true_gradient_check.json"), {
        "lambda": LAMBDA, "scale_bound": SCALE_BOUND, "likelihood_bound": LIKELIHOOD_BOUND,
        "samples_per_setting": 2 * sizes["samples"], "points": checks,
        "noise_repeats_wide": repeats})
    paths = {"csv": csv_path, "json": json_path}
    for name in POINTS:
        paths[f"png_{name}"] = plot([r for r in rows if r["point"] == name], name,
                                    os.path.join(out, f"gradient_bias_variance_{name}.png"))
    return paths


def noise_repeats(samples: int, seed: int, exact: dict, device, count: int = 4) -> list[dict]:
    """noise's estimation bias at the wide point again, with fresh x and noise each time: noise's
    pathwise gradient is unbiased for its own objective, so these show the spread of chance."""
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(common.study_seed(seed, "gradient-repeat", i))
        x = torch.randn(samples, generator=g, dtype=torch.float64).to(device or "cpu")
        for zc in (True, False):
            rows = estimate("wide", x, "noise", 0.0, zc,
                            common.study_seed(seed, "gradient-repeat-noise", i, zc), exact["wide"])
            out += [{"repeat": i, "zero_center": zc, "param": r["param"],
                     "estimation_bias": r["estimation_bias"], "stderr": r["bias_stderr"],
                     "z": r["estimation_z"]} for r in rows if r["param"] in ("theta", "g")]
    return out


def plot(rows: list[dict], point_name: str, path: str) -> str:
    plt = common.pyplot()
    metrics = (("bias2", "bias$^2$"), ("variance", "variance (per sample)"),
               ("noise_variance", "variance from the noise"))
    fig, axes = plt.subplots(len(metrics), len(PARAMS), figsize=(13, 8.5), sharex=True)
    for col, param in enumerate(PARAMS):
        for row, (key, label) in enumerate(metrics):
            ax = axes[row, col]
            for zc, style in ((True, "-"), (False, "--")):
                for mode in common.MODES:
                    sel = [r for r in rows if r["param"] == param and r["mode"] == mode
                           and r["zero_center"] == zc]
                    vals = np.array([r[key] for r in sel])
                    zc_label = "zc" if zc else "no zc"
                    if mode == "sua":
                        ax.plot([r["temperature"] for r in sel], vals, style, marker=".",
                                color=common.MODE_COLORS[mode], label=f"sua ({zc_label})")
                    else:
                        ax.axhline(vals[0], ls=style, color=common.MODE_COLORS[mode], lw=1,
                                   label=f"{mode} ({zc_label})")
            if key == "bias2":  # below this a bias^2 is not distinguishable from 0
                sel = [r for r in rows if r["param"] == param and r["mode"] == "sua"
                       and r["zero_center"]]
                ax.plot([r["temperature"] for r in sel], [(2 * r["bias_stderr"]) ** 2 for r in sel],
                        ":", color="gray", label="(2 std. err.)$^2$")
            if key == "noise_variance":  # exactly 0 for ste (and sua at T = 0)
                ax.set_yscale("symlog", linthresh=1e-3)
                ax.set_ylim(bottom=0)
            else:
                ax.set_yscale("log")
            if row == 0:
                ax.set_title(f"d/d{param}")
            if col == 0:
                ax.set_ylabel(label)
            if row == len(metrics) - 1:
                ax.set_xlabel("SUA temperature T")
    axes[0, 0].legend(fontsize=7, ncol=2)
    p = POINTS[point_name]
    fig.suptitle(f"Gradient of E[R + {LAMBDA:g} D] under hard rounding, toy '{point_name}' "
                 f"(theta={p['theta']}, mu={p['mu']}, sigma={p['sigma']}, g={p['g']}): "
                 f"surrogate bias$^2$ and variance")
    return common.save_figure(fig, path)


def main(argv=None):
    common.study_main(__doc__, run, argv)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Study 1: train-test mismatch of each surrogate against rounding, over T and the scale bound.

Latent sources (residual r = y - mu, model scale sigma):
  trained    y, mu, sigma of the held-out photos under the MeanScaleHyperprior that
             studies/rate_distortion.py trains with mode=mixed at its middle lambda (reused from
             the checkpoint cache when that study ran first, trained here otherwise);
  gaussian   sigma log-uniform in [0.05, 5], mu uniform in [-2, 2], y = mu + sigma * N(0, 1):
             the entropy model is exact;
  laplacian  the same with Laplacian y of standard deviation sigma: the Gaussian model is not.

For every mode (sua over T in [0, 1]) and scale bound b_sigma in {0, 0.11, 0.25, 0.5}, with the
zero-centre lattice (the test-time one):
  mismatch_D  E|r~_D - round(r)|, decoder path (what the synthesis transform sees);
  mismatch_R  E|r~_R - round(r)|, rate path (what the entropy model sees);
  rate_gap    bits per element under the surrogate minus bits under rounding, both with s =
              max(sigma, b_sigma): how far the training rate is from the coded one;
  rate_round  bits per element under rounding: what the bound costs at test time.
All values come from lic_quant.gaussian_quantize (r~_R of noise/mixed from mode="noise" with the
same seed, i.e. the same u).

    python studies/mismatch.py --quick --out studies_out
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lic_quant as lq  # noqa: E402
from studies import common, rate_distortion  # noqa: E402

SCALE_BOUNDS = (0.0, 0.11, 0.25, 0.5)
PLOT_BOUND = 0.11  # the module default: the bound of the mismatch-vs-T figure
SOURCES = ("trained", "gaussian", "laplacian")

SIZES = {
    "tiny": {"synthetic": 4_000, "temperatures": [0.0, 0.5, 1.0]},
    "quick": {"synthetic": 1_000_000, "temperatures": [round(0.1 * i, 2) for i in range(11)]},
    "full": {"synthetic": 10_000_000, "temperatures": [round(0.05 * i, 2) for i in range(21)]},
}


def synthetic_latents(kind: str, n: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.empty(n).uniform_(math.log(0.05), math.log(5.0), generator=g))
    mu = torch.empty(n).uniform_(-2.0, 2.0, generator=g)
    if kind == "gaussian":
        z = torch.randn(n, generator=g)
    elif kind == "laplacian":  # unit variance: Laplace(0, 1/sqrt(2)) by inverse CDF
        u = torch.rand(n, generator=g).clamp(1e-12, 1 - 1e-12) - 0.5
        z = -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2.0)
    else:
        raise ValueError(kind)
    return (mu + sigma * z).to(device), mu.to(device), sigma.to(device)


def trained_latents(profile: str, device: torch.device, seed: int, cache_dir: str):
    sizes = rate_distortion.SIZES[profile]
    lmbda = sizes["lambdas"][len(sizes["lambdas"]) // 2]
    cfg = rate_distortion.job_config(profile, "mixed", lmbda, seed)
    model, _ = common.train_model(cfg, device, cache_dir, desc=f"train mixed lambda={lmbda}")
    parts = [common.latents(model, common.center_crop(common.photo(n), sizes["eval_size"])
                            .to(device)) for n in common.HELD_OUT_PHOTOS]
    y, mu, sigma = (torch.cat([p[i].flatten() for p in parts]) for i in range(3))
    return y, mu, sigma, {"model": cfg, "photos": list(common.HELD_OUT_PHOTOS)}


@torch.no_grad()
def measure(y, mu, sigma, mode: str, temperature: float, bound: float, seed: int) -> dict:
    kw = dict(scale_bound=bound, zero_center=True, seed=seed)
    y_hat, lik = lq.gaussian_quantize(y, sigma, mu, mode=mode, temperature=temperature, **kw)
    y_round, lik_round = lq.gaussian_quantize(y, sigma, mu, mode="ste", **kw)
    # Differences of outputs on the same lattice: y_hat - y_round = r~_D - round(r) up to one
    # float rounding of the shared centre, and exactly 0 where the surrogate rounds.
    mismatch_d = (y_hat - y_round).abs()
    if mode in ("noise", "mixed"):  # the rate path's value: c + r + u with the same u
        y_noise, _ = lq.gaussian_quantize(y, sigma, mu, mode="noise", **kw)
        mismatch_r = (y_noise - y_round).abs()
    else:
        mismatch_r = mismatch_d
    bits = -torch.log2(lik)
    bits_round = -torch.log2(lik_round)
    return {
        "mismatch_D": float(mismatch_d.double().mean()),
        "mismatch_R": float(mismatch_r.double().mean()),
        "rate_surrogate": float(bits.mean()),
        "rate_round": float(bits_round.mean()),
        "rate_gap": float((bits - bits_round).mean()),
        "abs_rate_gap": float((bits - bits_round).abs().mean()),
        "finite": bool(torch.isfinite(bits).all() and torch.isfinite(bits_round).all()),
    }


SIGMA_EDGES = np.geomspace(0.05, 5.0, 13)


@torch.no_grad()
def gap_by_sigma(src: str, y, mu, sigma, mode: str, temperature: float, seed: int) -> list[dict]:
    """Rate gap per element against the model scale, unbounded (b_sigma = 0): where in sigma the
    surrogate's rate departs from the rounded one, hence which bound would remove it."""
    kw = dict(scale_bound=0.0, zero_center=True, seed=seed)
    _, lik = lq.gaussian_quantize(y, sigma, mu, mode=mode, temperature=temperature, **kw)
    _, lik_round = lq.gaussian_quantize(y, sigma, mu, mode="ste", **kw)
    gap = (torch.log2(lik_round) - torch.log2(lik)).double().cpu()
    s = sigma.double().cpu()
    rows = []
    for lo, hi in zip(SIGMA_EDGES[:-1], SIGMA_EDGES[1:]):
        inside = (s >= lo) & (s < hi)
        count = int(inside.sum())
        if count == 0:
            continue
        rows.append({"source": src, "mode": mode, "temperature": temperature,
                     "sigma_lo": float(lo), "sigma_hi": float(hi), "elements": count,
                     "rate_gap": float(gap[inside].mean()),
                     "abs_rate_gap": float(gap[inside].abs().mean())})
    return rows


def run(profile: str, out_dir: str, device: torch.device | None = None, seed: int = 0,
        cache_dir: str | None = None) -> dict:
    device = device or torch.device("cpu")
    sizes = SIZES[profile]
    out = common.ensure_dir(os.path.join(out_dir, "mismatch"))
    cache_dir = cache_dir or os.path.join(out_dir, "models")
    y, mu, sigma, trained_info = trained_latents(profile, device, seed, cache_dir)
    sources = {"trained": (y, mu, sigma)}
    for kind in ("gaussian", "laplacian"):
        sources[kind] = synthetic_latents(kind, sizes["synthetic"],
                                          common.study_seed(seed, "mismatch", kind), device)
    info = {"trained": trained_info, "scale_bounds": list(SCALE_BOUNDS), "sources": {}}
    for name, (yy, mm, ss) in sources.items():
        info["sources"][name] = {
            "elements": yy.numel(),
            "fraction_sigma_below": {str(b): float((ss < b).float().mean()) for b in SCALE_BOUNDS},
            "sigma_quantiles_10_50_90": [float(q) for q in torch.quantile(
                ss.double().cpu()[:1_000_000], torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))],
            "residual_std": float((yy - mm).std()),
        }

    settings = [(src, b, mode, t) for src in sources for b in SCALE_BOUNDS for mode in common.MODES
                for t in (sizes["temperatures"] if mode == "sua" else [math.nan])]
    rows = []
    for src, b, mode, t in common.progress(settings, desc="mismatch"):
        # One seed per (source, T): every mode and bound sees the same u, so their differences
        # are not noise.
        s = common.study_seed(seed, "mismatch-u", src, 1.0 if math.isnan(t) else t)
        temp = 1.0 if math.isnan(t) else t
        rows.append({"source": src, "scale_bound": b, "mode": mode,
                     "temperature": "" if math.isnan(t) else t,
                     **measure(*sources[src], mode, temp, b, s)})
    csv_path = common.write_csv(os.path.join(out, "mismatch.csv"), rows)
    by_sigma = []
    for src in SOURCES:
        for mode, t in (("noise", 1.0), ("sua", 0.5)):
            by_sigma += gap_by_sigma(src, *sources[src], mode, t,
                                     common.study_seed(seed, "mismatch-u", src, t))
    by_sigma_path = common.write_csv(os.path.join(out, "rate_gap_by_sigma.csv"), by_sigma)
    json_path = common.write_json(os.path.join(out, "mismatch_sources.json"), info)
    return {"csv": csv_path, "csv_by_sigma": by_sigma_path, "json": json_path,
            "png_mismatch": plot_mismatch(rows, os.path.join(out, "mismatch_vs_T.png")),
            "png_bound": plot_bound(rows, by_sigma, os.path.join(out, "sigma_bound.png"))}


def _sua(rows, src, b, key):
    sel = [r for r in rows if r["source"] == src and r["scale_bound"] == b and r["mode"] == "sua"]
    return [r["temperature"] for r in sel], [r[key] for r in sel]


def _fixed(rows, src, b, mode, key):
    return next(r[key] for r in rows
                if r["source"] == src and r["scale_bound"] == b and r["mode"] == mode)


def plot_mismatch(rows, path: str) -> str:
    plt = common.pyplot()
    metrics = (("mismatch_D", "E|r~_D - round(r)| (decoder)"),
               ("mismatch_R", "E|r~_R - round(r)| (rate)"),
               ("rate_gap", f"mean rate gap, bits/elem. (b_sigma={PLOT_BOUND})"),
               ("abs_rate_gap", f"mean |rate gap|, bits/elem. (b_sigma={PLOT_BOUND})"))
    fig, axes = plt.subplots(len(metrics), len(SOURCES), figsize=(12, 10), sharex=True)
    for col, src in enumerate(SOURCES):
        for row, (key, label) in enumerate(metrics):
            ax = axes[row, col]
            t, v = _sua(rows, src, PLOT_BOUND, key)
            ax.plot(t, v, marker=".", color=common.MODE_COLORS["sua"], label="sua")
            for mode, ls in (("noise", "-"), ("ste", "--"), ("mixed", ":")):
                ax.axhline(_fixed(rows, src, PLOT_BOUND, mode, key), ls=ls, lw=1.2,
                           color=common.MODE_COLORS[mode], label=mode)
            if row == 0:
                ax.set_title(f"{src} latents")
            if col == 0:
                ax.set_ylabel(label)
            if row == len(metrics) - 1:
                ax.set_xlabel("SUA temperature T")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Train-test mismatch of each surrogate against rounding (zero-centre lattice)")
    return common.save_figure(fig, path)


def plot_bound(rows, by_sigma, path: str) -> str:
    plt = common.pyplot()
    fig, axes = plt.subplots(3, len(SOURCES), figsize=(12, 9.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(SCALE_BOUNDS)))
    for col, src in enumerate(SOURCES):
        ax = axes[0, col]
        for b, c in zip(SCALE_BOUNDS, colors):
            t, v = _sua(rows, src, b, "abs_rate_gap")
            ax.plot(t, v, marker=".", color=c, label=f"sua, b_sigma={b}")
            ax.plot([1.0], [_fixed(rows, src, b, "noise", "abs_rate_gap")], "x", color=c, ms=8)
        ax.set_title(f"{src} latents")
        ax.set_xlabel("SUA temperature T (x: noise and mixed)")
        if col == 0:
            ax.set_ylabel("mean |rate gap|, bits/element")
        ax = axes[1, col]
        x = np.arange(len(SCALE_BOUNDS))
        cost = [_fixed(rows, src, b, "ste", "rate_round") for b in SCALE_BOUNDS]
        bars = (("abs_rate_gap", "noise: mean |rate gap|"), ("rate_gap", "noise: mean rate gap"))
        for i, (key, label) in enumerate(bars):
            ax.bar(x - 0.27 + 0.27 * i, [_fixed(rows, src, b, "noise", key) for b in SCALE_BOUNDS],
                   0.27, label=label)
        ax.bar(x + 0.27, [c - cost[0] for c in cost], 0.27,
               label="rate under rounding minus b_sigma=0's")
        ax.set_xticks(x, [str(b) for b in SCALE_BOUNDS])
        ax.set_ylim(top=ax.get_ylim()[1] * 1.4)  # room for the legend
        ax.set_xlabel("scale bound b_sigma")
        if col == 0:
            ax.set_ylabel("bits/element")
        ax = axes[2, col]
        for mode, t in (("noise", 1.0), ("sua", 0.5)):
            sel = [r for r in by_sigma if r["source"] == src and r["mode"] == mode]
            mid = [math.sqrt(r["sigma_lo"] * r["sigma_hi"]) for r in sel]
            label = mode if mode == "noise" else f"sua T={t}"
            ax.plot(mid, [r["abs_rate_gap"] for r in sel], marker="o",
                    color=common.MODE_COLORS[mode], label=f"{label}: mean |gap|")
            ax.plot(mid, [r["rate_gap"] for r in sel], marker=".", ls="--",
                    color=common.MODE_COLORS[mode], label=f"{label}: mean gap")
        for b in SCALE_BOUNDS[1:]:
            ax.axvline(b, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("model scale sigma (unbounded); dotted: the bounds")
        if col == 0:
            ax.set_ylabel("rate gap by sigma, bits/element")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=6, loc="upper left")
    axes[2, 0].legend(fontsize=7)
    fig.suptitle("Lower bound on sigma: rate mismatch of the surrogates vs the rate the bound "
                 "costs at test time")
    return common.save_figure(fig, path)


def main(argv=None):
    common.study_main(__doc__, run, argv)


if __name__ == "__main__":
    main()

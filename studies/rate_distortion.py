#!/usr/bin/env python
"""Study 3: rate-distortion of a small MeanScaleHyperprior trained with each surrogate.

CompressAI's MeanScaleHyperprior(N, M), its y-path GaussianConditional replaced by lic_quant's
(scale bound b_sigma = 0.11, zero-centre lattice), trained on random crops of scikit-image's
bundled photos with mode noise, mixed, ste and sua (T annealed exponentially from 1 to 0 with
lic_quant.schedules), at several lambda. The same seed, data order and initial weights for every
mode; in the quick profile all start from one common model trained with noise (SIZES).
Evaluated on held-out photos with real rounding and the actual bitstream
(``model.update(force=True)``, ``compress()``/``decompress()``): bpp from the bytes, PSNR of the
decoded image. BD-rate against ``mixed``; ``mixed`` trained again from a second seed gives the
BD-rate that training noise alone produces.

    python studies/rate_distortion.py --quick --out studies_out
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from studies import common  # noqa: E402
from studies.bd_rate import bd_rate, psnr_overlap  # noqa: E402

# base_steps > 0: every (surrogate, lambda) model starts from one common model trained that many
# steps with mode=noise at the middle lambda, then trains `steps` with its own surrogate and
# lambda (a CPU budget compromise: from scratch, 600 steps left seed-to-seed differences larger
# than the differences between surrogates). base_steps = 0: each model from scratch.
SIZES = {
    "tiny": {"N": 8, "M": 8, "base_steps": 2, "steps": 3, "batch": 2, "crop": 64,
             "lambdas": [0.005, 0.02, 0.08], "eval_size": 128},
    "quick": {"N": 32, "M": 48, "base_steps": 2000, "steps": 400, "batch": 8, "crop": 64,
              "lambdas": [0.004, 0.015, 0.05], "eval_size": 512},
    "full": {"N": 128, "M": 192, "base_steps": 0, "steps": 20_000, "batch": 16, "crop": 256,
             "lambdas": [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483], "eval_size": 768},
}
LR = 1e-3
REFERENCE_MODE = "mixed"
# The reference trained again from another seed (initial weights, crops, noise): its BD-rate
# against the reference is the training noise, the yardstick of the other BD-rates.
REPLICATE = "mixed (seed 2)"


def model_config(profile: str, mode: str, lmbda: float, seed: int, base_seed: int) -> dict:
    s = SIZES[profile]
    cfg = {"N": s["N"], "M": s["M"], "mode": mode, "lmbda": lmbda, "steps": s["steps"],
           "batch": s["batch"], "crop": s["crop"], "lr": LR, "seed": seed, "scale_bound": 0.11}
    if s["base_steps"]:
        middle = s["lambdas"][len(s["lambdas"]) // 2]
        cfg["init"] = dict(cfg, mode="noise", lmbda=middle, steps=s["base_steps"], seed=base_seed)
    return cfg


def job_config(profile: str, curve: str, lmbda: float, seed: int) -> dict:
    """The cfg of one R-D point; the replicate differs from the reference only in its seed."""
    mode = REFERENCE_MODE if curve == REPLICATE else curve
    extra = ("replicate",) if curve == REPLICATE else ()
    return model_config(profile, mode, lmbda, common.study_seed(seed, "rd-model", *extra),
                        common.study_seed(seed, "rd-base"))


@torch.no_grad()
def evaluate(model, image: torch.Tensor) -> dict:
    """Real rounding (eval forward: estimated bits) and the actual bitstream."""
    model.eval()
    x = image[None]
    out = model(x)
    n_pixels = x.shape[2] * x.shape[3]
    est_bits = sum(float(-torch.log2(lik).sum()) for lik in out["likelihoods"].values())
    enc = model.compress(x)
    dec = model.decompress(enc["strings"], enc["shape"])
    n_bytes = sum(len(s) for strings in enc["strings"] for s in strings)
    mse = float(torch.mean((dec["x_hat"].clamp(0, 1) - x) ** 2))
    mse_forward = float(torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2))
    return {"bpp": 8 * n_bytes / n_pixels, "psnr": common.psnr(mse),
            "bpp_estimated": est_bits / n_pixels, "psnr_forward": common.psnr(mse_forward),
            "height": x.shape[2], "width": x.shape[3]}


def run(profile: str, out_dir: str, device: torch.device | None = None, seed: int = 0,
        cache_dir: str | None = None) -> dict:
    device = device or torch.device("cpu")
    sizes = SIZES[profile]
    out = common.ensure_dir(os.path.join(out_dir, "rd"))
    cache_dir = cache_dir or os.path.join(out_dir, "models")
    held_out = {n: common.center_crop(common.photo(n), sizes["eval_size"]).to(device)
                for n in common.HELD_OUT_PHOTOS}
    rows = []
    jobs = [(mode, lmbda) for lmbda in sizes["lambdas"] for mode in common.MODES + (REPLICATE,)]
    for i, (curve, lmbda) in enumerate(jobs):
        cfg = job_config(profile, curve, lmbda, seed)
        mode = cfg["mode"]
        model, log = common.train_model(
            cfg, device, cache_dir, desc=f"[{i + 1}/{len(jobs)}] train {curve} lambda={lmbda}")
        model.update(force=True)
        per_image = [dict(evaluate(model, img), image=name) for name, img in held_out.items()]
        for r in per_image:
            rows.append({"curve": curve, "mode": mode, "lambda": lmbda, **r, **log})
        mean = {k: float(np.mean([r[k] for r in per_image]))
                for k in ("bpp", "psnr", "bpp_estimated")}
        print(f"  {curve:14s} lambda={lmbda:<7g} bpp={mean['bpp']:.4f} "
              f"(estimated {mean['bpp_estimated']:.4f}) PSNR={mean['psnr']:.2f} dB "
              f"train loss {log['final_train_loss']:.3f}", file=sys.stderr)
    csv_path = common.write_csv(os.path.join(out, "rd_points.csv"), rows)
    summary = summarize(rows, sizes)
    json_path = common.write_json(os.path.join(out, "rd_summary.json"), summary)
    png_path = plot(summary, os.path.join(out, "rd_curves.png"))
    return {"csv": csv_path, "json": json_path, "png": png_path}


def summarize(rows: list[dict], sizes: dict) -> dict:
    """Per mode and lambda the mean bpp and PSNR over the held-out photos; BD-rates vs mixed."""
    curves = {}
    for curve in common.MODES + (REPLICATE,):
        pts = []
        for lmbda in sizes["lambdas"]:
            sel = [r for r in rows if r["curve"] == curve and r["lambda"] == lmbda]
            pts.append({"lambda": lmbda,
                        "bpp": float(np.mean([r["bpp"] for r in sel])),
                        "psnr": float(np.mean([r["psnr"] for r in sel])),
                        "bpp_estimated": float(np.mean([r["bpp_estimated"] for r in sel])),
                        "final_train_loss": sel[0]["final_train_loss"]})
        curves[curve] = pts
    ref = curves[REFERENCE_MODE]
    bd = {}
    for curve, test in curves.items():
        by_lambda = sorted(test, key=lambda p: p["lambda"])
        bd[curve] = {
            # a sane R-D curve gains rate and PSNR with lambda; an undertrained one may not
            "monotone": all(a["bpp"] < b["bpp"] and a["psnr"] < b["psnr"]
                            for a, b in zip(by_lambda, by_lambda[1:])),
            "bd_rate_percent": bd_rate([p["bpp"] for p in ref], [p["psnr"] for p in ref],
                                       [p["bpp"] for p in test], [p["psnr"] for p in test]),
            "psnr_overlap_db": psnr_overlap([p["psnr"] for p in ref], [p["psnr"] for p in test]),
        }
    return {"reference": REFERENCE_MODE, "replicate": REPLICATE,
            "held_out_photos": list(common.HELD_OUT_PHOTOS),
            "train_photos": list(common.TRAIN_PHOTOS), "sizes": sizes, "lr": LR,
            "curves": curves, "bd_rate_vs_reference": bd}


def plot(summary: dict, path: str) -> str:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for curve, pts in summary["curves"].items():
        bd = summary["bd_rate_vs_reference"][curve]["bd_rate_percent"]
        label = curve if curve == summary["reference"] else f"{curve} (BD-rate {bd:+.1f}%)"
        style = (dict(color="gray", ls="--", marker="s") if curve == summary["replicate"]
                 else dict(color=common.MODE_COLORS[curve], marker="o"))
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], label=label, **style)
    ax.set_xlabel("bits per pixel (actual bitstream)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"MeanScaleHyperprior N={summary['sizes']['N']} M={summary['sizes']['M']}, "
                 f"{summary['sizes']['steps']} steps; held-out "
                 + ", ".join(summary["held_out_photos"]), fontsize=8)
    ax.legend(title=f"BD-rate vs {summary['reference']}")
    return common.save_figure(fig, path)


def main(argv=None):
    common.study_main(__doc__, run, argv)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Study 4: one paired rate-distortion test of the paper's headline claim.

Zhang, Li and Liu (2023) claim that SUA with their two tricks (a larger lower bound b_sigma on the
scale, zero-centre quantization around the predicted mean) trains better codecs than the usual
practice. This study sets up that contrast directly, with one lambda and paired seeds:

    noise        CompressAI practice: additive uniform noise for rate and decoder, b_sigma = 0.11
    mixed        noise for the rate, rounding for the decoder, without the tricks (b_sigma = 0.11,
                 lattice at 0: zero_center=False)
    sua_tricks   SUA, T annealed 1 -> 0 over the run, b_sigma = SUA_BOUND, zero-centre lattice

Every arm trains CompressAI's MeanScaleHyperprior from scratch. Within one seed all arms start
from the same initial weights, see the same crops in the same order and draw the same noise
stream (common.train_model: the seed fixes all three); only the quantization differs. Each model
is then measured with real rounding and its actual bitstream (``update(force=True)``,
``compress()``/``decompress()``) on held-out photos: J = bpp + lambda * 255^2 * MSE, per photo,
averaged over the photos. The test is the paired difference J(arm) - J(noise) over seeds, with a
Student t confidence interval.

Rows go to OUT/rd/paired_rd.csv (one per seed and arm) and OUT/rd/paired_rd_images.csv (one per
seed, arm and photo) as soon as a model is measured; a rerun skips the (seed, arm) pairs already
in the CSV, so an interrupted run resumes. ``--summarize`` only rewrites the summary JSON.

    python studies/paired_rd.py --cpu  --out docs/studies      # 2 shared CPU cores, ~1 h
    python studies/paired_rd.py --gpu  --out DIR               # all runs as parallel processes
    python studies/paired_rd.py --tiny --out DIR               # seconds (smoke test)
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from studies import common  # noqa: E402

LMBDA = 0.013
LR = 1e-3
# b_sigma of the SUA arm (see docs/studies.md, section "The sigma bound during training").
SUA_BOUND = 0.11
ARMS = {
    "noise": {"mode": "noise", "scale_bound": 0.11, "zero_center": False},
    "mixed": {"mode": "mixed", "scale_bound": 0.11, "zero_center": False},
    "sua_tricks": {"mode": "sua", "scale_bound": SUA_BOUND, "zero_center": True},
}
BASELINE = "noise"
TRAIN = ("astronaut", "coffee", "immunohistochemistry", "hubble_deep_field", "motorcycle_left")
HELD_OUT = ("chelsea", "retina", "rocket")
SIZES = {
    "tiny": {"N": 8, "M": 8, "steps": 3, "batch": 2, "crop": 64, "seeds": 2, "eval_size": 128},
    "cpu": {"N": 32, "M": 48, "steps": 3000, "batch": 8, "crop": 64, "seeds": 6, "eval_size": 512},
    # One H200, all 18 runs at once as processes (16 CPU cores): sized by estimate to finish
    # in under 10 minutes, not yet measured on a GPU; each worker's log shows its step rate.
    "gpu": {"N": 64, "M": 96, "steps": 4000, "batch": 16, "crop": 128, "seeds": 6,
            "eval_size": 768},
}
FIELDS = ("seed", "arm", "bpp", "psnr", "J", "bpp_estimated", "mse", "final_train_loss",
          "train_seconds", "nonfinite_losses", "N", "M", "steps", "batch", "crop", "lmbda",
          "mode", "scale_bound", "zero_center", "device")
IMAGE_FIELDS = ("seed", "arm", "image", "height", "width", "bpp", "psnr", "J", "bpp_estimated")


def arm_config(sizes: dict, arm: str, seed: int) -> dict:
    return {"N": sizes["N"], "M": sizes["M"], "lmbda": LMBDA, "steps": sizes["steps"],
            "batch": sizes["batch"], "crop": sizes["crop"], "lr": LR,
            "seed": common.study_seed(seed, "paired-rd"), "train_photos": list(TRAIN),
            **ARMS[arm]}


@torch.no_grad()
def measure(model, image: torch.Tensor) -> dict:
    x = image[None]
    out = model(x)  # eval forward: rounding, estimated bits
    n_pixels = x.shape[2] * x.shape[3]
    est_bits = sum(float(-torch.log2(lik).sum()) for lik in out["likelihoods"].values())
    enc = model.compress(x)
    dec = model.decompress(enc["strings"], enc["shape"])
    n_bytes = sum(len(s) for strings in enc["strings"] for s in strings)
    mse = float(torch.mean((dec["x_hat"].clamp(0, 1) - x) ** 2))
    bpp = 8 * n_bytes / n_pixels
    return {"height": x.shape[2], "width": x.shape[3], "bpp": bpp, "psnr": common.psnr(mse),
            "mse": mse, "J": bpp + LMBDA * 255**2 * mse, "bpp_estimated": est_bits / n_pixels}


def append_row(path: str, fields, row: dict) -> None:
    """One line, appended under a lock: parallel workers share the file."""
    line = ",".join(str(common._fmt(row.get(k, ""))) for k in fields) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if f.tell() == 0:
            f.write(",".join(fields) + "\n")
        f.write(line)
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def done_pairs(path: str) -> set:
    if not os.path.exists(path):
        return set()
    return {(int(r["seed"]), r["arm"]) for r in common.read_csv(path)}


def run_one(sizes: dict, seed: int, arm: str, out: str, device: torch.device,
            model_dir: str | None) -> dict:
    cfg = arm_config(sizes, arm, seed)
    model, log = common.train_model(cfg, device, model_dir, desc=f"seed {seed} {arm}")
    model.update(force=True)
    per_image = []
    for name in HELD_OUT:
        img = common.center_crop(common.photo(name), sizes["eval_size"]).to(device)
        r = measure(model, img)
        per_image.append(r)
        append_row(os.path.join(out, "paired_rd_images.csv"), IMAGE_FIELDS,
                   {"seed": seed, "arm": arm, "image": name, **r})
    row = {"seed": seed, "arm": arm, **{k: float(np.mean([r[k] for r in per_image]))
                                        for k in ("bpp", "psnr", "J", "bpp_estimated", "mse")},
           **log, **{k: cfg[k] for k in ("N", "M", "steps", "batch", "crop", "lmbda", "mode",
                                         "scale_bound", "zero_center")}, "device": str(device)}
    append_row(os.path.join(out, "paired_rd.csv"), FIELDS, row)
    print(f"  seed {seed} {arm:10s} bpp={row['bpp']:.4f} PSNR={row['psnr']:.2f} J={row['J']:.4f} "
          f"({log['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
    return row


def t_interval(d, level: float = 0.95):
    from scipy import stats

    d = np.asarray(d, dtype=float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci_low": None, "ci_high": None, "p": None}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)) if sd > 0 else None
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "p": p}


def summarize(out: str) -> dict:
    rows = common.read_csv(os.path.join(out, "paired_rd.csv"))
    by = {(int(r["seed"]), r["arm"]): r for r in rows}
    seeds = sorted({s for s, _ in by})
    arms = [a for a in ARMS if any(a == b for _, b in by)]
    summary = {"lmbda": LMBDA, "lr": LR, "arms": {a: ARMS[a] for a in arms},
               "train_photos": list(TRAIN), "held_out_photos": list(HELD_OUT),
               "seeds_per_arm": {a: sum((s, a) in by for s in seeds) for a in arms},
               "means": {}, "paired": {}}
    for a in arms:
        sel = [by[(s, a)] for s in seeds if (s, a) in by]
        summary["means"][a] = {k: float(np.mean([float(r[k]) for r in sel]))
                               for k in ("bpp", "psnr", "J")}
    pairs = [(a, BASELINE) for a in arms if a != BASELINE] + [("sua_tricks", "mixed")]
    for a, b in pairs:
        if a not in arms or b not in arms:
            continue
        common_seeds = [s for s in seeds if (s, a) in by and (s, b) in by]
        summary["paired"][f"{a} - {b}"] = {}
        for k in ("J", "bpp", "psnr"):
            d = [float(by[(s, a)][k]) - float(by[(s, b)][k]) for s in common_seeds]
            summary["paired"][f"{a} - {b}"][k] = dict(t_interval(d), seeds=common_seeds,
                                                      differences=d)
    return summary


def launch_parallel(args, sizes: dict, todo) -> None:
    """One process per (seed, arm), all at once (the GPU profile: one device, many streams)."""
    procs = []
    threads = max(1, (os.cpu_count() or 1) // max(1, len(todo)))
    for seed, arm in todo:
        cmd = [sys.executable, os.path.abspath(__file__), f"--{args.profile}", "--out", args.out,
               "--device", args.device, "--seeds", str(seed), "--arms", arm, "--worker",
               "--threads", str(threads)] + _override_args(args)
        log = open(os.path.join(args.out, "rd", f"paired_rd_worker_{seed}_{arm}.log"), "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    for p in procs:
        p.wait()


PROFILE_OF_RUN_ALL = {"tiny": "tiny", "quick": "cpu", "full": "gpu"}


def run(profile: str, out_dir: str, device: torch.device | None = None, seed: int = 0) -> dict:
    """run_all's entry: tiny -> tiny, quick -> cpu, full -> gpu (parallel processes)."""
    name = PROFILE_OF_RUN_ALL[profile]
    argv = [f"--{name}", "--out", out_dir, "--device", str(device or "cpu")]
    if seed:
        argv += ["--seeds", ",".join(str(seed + i) for i in range(SIZES[name]["seeds"]))]
    main(argv)
    out = os.path.join(out_dir, "rd")
    return {"csv": os.path.join(out, "paired_rd.csv"),
            "csv_images": os.path.join(out, "paired_rd_images.csv"),
            "json": os.path.join(out, "paired_rd_summary.json")}


def _override_args(args):
    extra = []
    for k in ("N", "M", "steps", "batch", "crop", "eval_size"):
        v = getattr(args, k)
        if v is not None:
            extra += [f"--{k.replace('_', '-')}", str(v)]
    if args.model_dir:
        extra += ["--model-dir", args.model_dir]
    return extra


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    for name in SIZES:
        g.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    p.set_defaults(profile="cpu")
    p.add_argument("--out", default="studies_out")
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (default: 0..profile's count - 1)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", action="store_true",
                   help="one process per (seed, arm), all at once (default for --gpu)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--summarize", action="store_true", help="only rewrite the summary")
    p.add_argument("--model-dir", default=None, help="keep the trained models here")
    for k in ("N", "M", "steps", "batch", "crop", "eval_size"):
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=int, default=None,
                       help="override the profile's size")
    args = p.parse_args(argv)
    if args.threads and argv is None:  # run from run_all: keep its thread setting
        torch.set_num_threads(args.threads)
    sizes = dict(SIZES[args.profile])
    for k in ("N", "M", "steps", "batch", "crop", "eval_size"):
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    out = common.ensure_dir(os.path.join(args.out, "rd"))
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else list(range(sizes["seeds"])))
    arms = args.arms.split(",")
    device = common.pick_device(args.device)
    if not args.summarize:
        done = done_pairs(os.path.join(out, "paired_rd.csv"))
        # seed-major: an interrupted run leaves complete pairs
        todo = [(s, a) for s in seeds for a in arms if (s, a) not in done]
        print(f"paired R-D ({args.profile}, {sizes}): {len(todo)} runs to do, "
              f"{len(done)} already in the CSV", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if (args.parallel or args.profile == "gpu") and not args.worker and len(todo) > 1:
            launch_parallel(args, sizes, todo)
        else:
            for seed, arm in todo:
                run_one(sizes, seed, arm, out, device, args.model_dir)
        print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if not args.worker:
        summary = summarize(out)
        summary["sizes"] = sizes
        common.write_json(os.path.join(out, "paired_rd_summary.json"), summary)
        if argv is None:
            print(json.dumps(summary["paired"], indent=1))


if __name__ == "__main__":
    main()

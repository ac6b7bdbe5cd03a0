"""What the studies share: profiles, output files, progress bars, photos, the small model.

Every study is a module with ``run(profile, out_dir, device, seed) -> dict`` (paths of what it
wrote) and a ``main()`` for its own command line; ``studies/run_all.py`` runs them all.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
import warnings

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # run from a source checkout: use this checkout's lic_quant

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices from compressai
warnings.filterwarnings("ignore", category=UserWarning, module="compressai")

PROFILES = ("tiny", "quick", "full")
MODES = ("noise", "ste", "mixed", "sua")
MODE_COLORS = {"noise": "tab:blue", "ste": "tab:red", "mixed": "tab:green", "sua": "tab:purple"}


# ------------------------------------------------------------------------------------------------
# Command line, seeding, devices
# ------------------------------------------------------------------------------------------------

def parse_args(description: str, argv=None, default_out: str = "studies_out"):
    p = argparse.ArgumentParser(description=description)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick",
                       help="CPU profile (default): minutes on 2 cores")
    group.add_argument("--full", dest="profile", action="store_const", const="full",
                       help="GPU profile: bigger models, more samples and steps")
    group.add_argument("--tiny", dest="profile", action="store_const", const="tiny",
                       help="smoke-test sizes: seconds, numbers are not meaningful")
    p.add_argument("--out", default=default_out, help="output folder")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine two threads "
                        "ran ~10x slower per training step than one; 0: torch's default)")
    p.set_defaults(profile="quick")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def study_seed(base: int, *keys) -> int:
    """A seed per (study, setting), independent of the order the settings run in."""
    digest = hashlib.sha256(repr((base,) + keys).encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ------------------------------------------------------------------------------------------------
# Output files
# ------------------------------------------------------------------------------------------------

def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def write_csv(path: str, rows: list[dict]) -> str:
    if not rows:
        raise ValueError(f"write_csv: no rows for {path}")
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    return path


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: str, obj) -> str:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)
        f.write("\n")
    return path


def pyplot():
    """matplotlib's pyplot with the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9,
                         "axes.grid": True, "grid.alpha": 0.3})
    return plt


def save_figure(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def progress(iterable=None, total=None, desc: str = ""):
    """tqdm on stderr (progress bars on anything long)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False,
                mininterval=1.0, file=sys.stderr)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# ------------------------------------------------------------------------------------------------
# Photos (scikit-image's bundled ones; nothing is downloaded)
# ------------------------------------------------------------------------------------------------

# All of these ship inside the scikit-image wheel (no pooch download).
TRAIN_PHOTOS = ("astronaut", "rocket", "coffee", "immunohistochemistry", "hubble_deep_field",
                "colorwheel")
HELD_OUT_PHOTOS = ("chelsea", "retina")


def photo(name: str) -> torch.Tensor:
    """One bundled RGB photo as a float tensor (3, H, W) in [0, 1]."""
    import skimage.data

    if name == "motorcycle_left":  # the left view of the bundled stereo pair
        array = skimage.data.stereo_motorcycle()[0]
    else:
        array = getattr(skimage.data, name)()
    if array.ndim != 3 or array.shape[2] < 3:
        raise ValueError(f"skimage.data.{name} is not an RGB photo")
    return torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def photos(names) -> list[torch.Tensor]:
    return [photo(n) for n in names]


def random_crops(images, batch: int, crop: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(batch):
        img = images[int(torch.randint(len(images), (), generator=g))]
        _, h, w = img.shape
        top = int(torch.randint(h - crop + 1, (), generator=g))
        left = int(torch.randint(w - crop + 1, (), generator=g))
        patch = img[:, top:top + crop, left:left + crop]
        if torch.rand((), generator=g) < 0.5:
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out)


def center_crop(img: torch.Tensor, size: int, multiple: int = 64) -> torch.Tensor:
    """The centre of ``img``, at most ``size`` per side, cut to a multiple of ``multiple``."""
    _, h, w = img.shape
    hh = min(h, size) // multiple * multiple
    ww = min(w, size) // multiple * multiple
    top, left = (h - hh) // 2, (w - ww) // 2
    return img[:, top:top + hh, left:left + ww]


# ------------------------------------------------------------------------------------------------
# The small model: CompressAI's MeanScaleHyperprior with lic_quant's GaussianConditional
# ------------------------------------------------------------------------------------------------

def build_model(N: int, M: int, mode: str, scale_bound: float = 0.11, zero_center: bool = True):
    """MeanScaleHyperprior(N, M) whose y-path GaussianConditional is lic_quant's (``mode``). The
    hyper-latent z keeps CompressAI's EntropyBottleneck (additive noise in training)."""
    import lic_quant.nn as lqnn
    from compressai.models import MeanScaleHyperprior

    model = MeanScaleHyperprior(N=N, M=M)
    model.gaussian_conditional = lqnn.GaussianConditional(
        None, scale_bound=scale_bound, mode=mode, zero_center=zero_center)
    return model


def rd_loss(out, x, lmbda: float):
    """CompressAI's RateDistortionLoss: lambda * 255^2 * MSE + bpp."""
    n_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()) / n_pixels
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return lmbda * 255**2 * mse + bpp, bpp, mse


def psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def sua_schedule(steps: int):
    """The annealing schedule of the SUA runs: exponential decay of T from 1 to 0 over training
    (T < 0.08 after half the steps, exactly 0 at the end)."""
    from lic_quant.schedules import ExponentialSchedule

    return ExponentialSchedule(1.0, 0.0, steps=steps, rate=5.0)


def train_model(cfg: dict, device: torch.device, cache_dir: str | None = None, desc: str = ""):
    """Train a MeanScaleHyperprior as ``cfg`` says (keys: N, M, mode, lmbda, steps, batch, crop,
    lr, seed, scale_bound, and optionally zero_center (default True), train_photos and init: the
    cfg of a model to start from, trained or taken from the cache first); reuse a cached
    checkpoint of the same cfg when there is one.

    ``seed`` alone fixes the initial weights, the crop order and the quantization noise stream:
    two cfgs that differ only in mode, scale_bound or zero_center start from the same weights and
    see the same crops in the same order (the pairing of studies/paired_rd.py).

    Returns (model in eval mode, training log dict)."""
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"msh_{cfg['mode']}_{key}.pt") if cache_dir else None
    zero_center = cfg.get("zero_center", True)
    model = build_model(cfg["N"], cfg["M"], cfg["mode"], cfg.get("scale_bound", 0.11), zero_center)
    if path and os.path.exists(path):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["state"], strict=False)
        return model.to(device).eval(), saved["log"]

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["N"], cfg["M"], cfg["mode"], cfg.get("scale_bound", 0.11),
                        zero_center).to(device)
    if cfg.get("init"):
        base, _ = train_model(cfg["init"], device, cache_dir,
                              desc=f"train the common start ({cfg['init']['mode']})")
        model.load_state_dict(base.state_dict(), strict=False)
        torch.manual_seed(cfg["seed"])
    images = [im.to(device) for im in photos(cfg.get("train_photos", TRAIN_PHOTOS))]
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=cfg["lr"])
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3)
    lr_decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(cfg["steps"] * 0.8)], 0.3)
    schedule = sua_schedule(cfg["steps"]).attach(model) if cfg["mode"] == "sua" else None
    g = torch.Generator().manual_seed(cfg["seed"])
    losses = []
    start = time.perf_counter()
    model.train()
    bar = progress(range(cfg["steps"]), desc=desc or f"train {cfg['mode']}")
    for _ in bar:
        x = random_crops(images, cfg["batch"], cfg["crop"], g)
        loss, bpp, mse = rd_loss(model(x), x, cfg["lmbda"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        optimizer.step()
        lr_decay.step()
        aux_optimizer.zero_grad()
        model.aux_loss().backward()
        aux_optimizer.step()
        if schedule is not None:
            schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix_str(f"loss={losses[-1]:.3f} bpp={float(bpp.detach()):.3f}", refresh=False)
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    log = {"final_train_loss": float(np.mean(tail)), "train_seconds": time.perf_counter() - start,
           "nonfinite_losses": int(sum(not math.isfinite(v) for v in losses))}
    if path:
        ensure_dir(cache_dir)
        torch.save({"state": model.state_dict(), "log": log, "cfg": cfg}, path)
    return model, log


@torch.no_grad()
def latents(model, image: torch.Tensor):
    """(y, means, scales) of ``image`` (3, H, W) under a trained hyperprior, with z rounded as
    at test time."""
    model.eval()
    x = image[None]
    y = model.g_a(x)
    z = model.h_a(y)
    z_hat, _ = model.entropy_bottleneck(z)
    scales, means = model.h_s(z_hat).chunk(2, 1)
    return y, means, scales


def study_main(doc: str, run, argv=None) -> None:
    """The command line of one study: parse the common arguments, run it, print its files."""
    args = parse_args(doc.split("\n")[0], argv)
    paths = run(args.profile, args.out, pick_device(args.device), args.seed)
    for k, v in paths.items():
        print(f"{k}: {v}")

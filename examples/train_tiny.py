#!/usr/bin/env python
"""Train a small mean-scale hyperprior with lic_quant's GaussianConditional, on a CPU, in minutes.

Images: the photos that ship inside scikit-image's wheel (skimage.data: astronaut, rocket, coffee,
...), or generated textures when scikit-image is absent; nothing is downloaded. One photo
(chelsea) is held out for the evaluation.

Model: CompressAI's MeanScaleHyperprior with its GaussianConditional swapped for lic_quant's
(``replace_gaussian_conditionals``); without compressai a self-contained model of the same shape
whose hyper-latents use a learned zero-mean Gaussian prior.

Quantization: ``--mode sua`` (default) anneals the temperature from ``--t0`` to ``--t-min`` with
a schedule; ``noise``, ``mixed`` and ``ste`` are the other surrogates.

At the end: bpp and PSNR measured with real rounding (eval mode), and with compressai the size of
the actual bitstreams of model.compress() and the PSNR of model.decompress().

    python examples/train_tiny.py                       # ~1-2 minutes on 2 CPU cores
    python examples/train_tiny.py --steps 3000 --N 64 --M 96 --crop 128
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import torch
from torch import nn

# The installed lic_quant (pip install, or scripts/setup_env.sh's in-place build of a checkout),
# never a source tree put first on sys.path: an unbuilt tree has no kernels.
import lic_quant  # noqa: E402
import lic_quant.nn as lqnn  # noqa: E402
from lic_quant.schedules import CosineSchedule, ExponentialSchedule, LinearSchedule  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices from compressai

TRAIN_IMAGES = ("astronaut", "rocket", "coffee", "immunohistochemistry", "hubble_deep_field",
                "retina", "colorwheel")
EVAL_IMAGE = "chelsea"
SCHEDULES = {"exponential": ExponentialSchedule, "linear": LinearSchedule, "cosine": CosineSchedule}


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def skimage_photo(name: str) -> torch.Tensor | None:
    try:
        import skimage.data
    except ImportError:
        return None
    try:
        array = getattr(skimage.data, name)()
    except Exception:  # a photo that is not in the wheel (fetched on demand): skip it
        return None
    if array.ndim != 3 or array.shape[2] < 3:
        return None
    return torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def generated_image(seed: int, size: int = 384) -> torch.Tensor:
    """A smooth random texture with edges: sums of oriented sinusoids and a few discs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.zeros(3, size, size)
    for _ in range(6):
        freq, angle, phase = torch.rand(3, generator=g) * torch.tensor([12.0, math.pi, 6.28])
        wave = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) * 6.28 + phase)
        img += torch.rand(3, 1, 1, generator=g) * wave
    for _ in range(8):
        cx, cy, r = torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 0.2])
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2).float()
        img = img * (1 - disc) + disc * torch.rand(3, 1, 1, generator=g) * 2
    img -= img.amin(dim=(1, 2), keepdim=True)
    return img / img.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)


def load_images() -> tuple[list[torch.Tensor], torch.Tensor, str]:
    train = [im for im in (skimage_photo(n) for n in TRAIN_IMAGES) if im is not None]
    held_out = skimage_photo(EVAL_IMAGE)
    if len(train) < 2 or held_out is None:
        return [generated_image(s) for s in range(8)], generated_image(99), "generated textures"
    return train, held_out, f"skimage.data photos ({len(train)} train, '{EVAL_IMAGE}' held out)"


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


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

def conv(cin, cout, k=5, s=2):
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def deconv(cin, cout, k=5, s=2):
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2, output_padding=s - 1)


class TinyMeanScaleHyperprior(nn.Module):
    """A compressai-free mean-scale hyperprior: both latents go through lic_quant's module; the
    hyper-latent z has a learned zero-mean Gaussian prior per channel."""

    def __init__(self, N: int, M: int, **settings):
        super().__init__()
        act = nn.LeakyReLU
        self.g_a = nn.Sequential(conv(3, N), act(), conv(N, N), act(), conv(N, N), act(),
                                 conv(N, M))
        self.g_s = nn.Sequential(deconv(M, N), act(), deconv(N, N), act(), deconv(N, N), act(),
                                 deconv(N, 3))
        self.h_a = nn.Sequential(conv(M, N, 3, 1), act(), conv(N, N), act(), conv(N, N))
        self.h_s = nn.Sequential(deconv(N, M), act(), deconv(M, M * 3 // 2), act(),
                                 conv(M * 3 // 2, 2 * M, 3, 1))
        self.z_log_scale = nn.Parameter(torch.zeros(1, N, 1, 1))
        self.gaussian_conditional = lqnn.GaussianConditional(None, **settings)
        self.z_conditional = lqnn.GaussianConditional(None, **settings)

    def forward(self, x):
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_lik = self.z_conditional(z, self.z_log_scale.exp().expand_as(z))
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        y_hat, y_lik = self.gaussian_conditional(y, scales_hat, means=means_hat)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_lik, "z": z_lik}}


def build_model(args):
    settings = dict(mode=args.mode, backend=args.backend)
    if args.model == "compressai":
        from compressai.models import MeanScaleHyperprior

        model = MeanScaleHyperprior(N=args.N, M=args.M)
        return lqnn.replace_gaussian_conditionals(model, **settings)
    return TinyMeanScaleHyperprior(args.N, args.M, **settings)


# ------------------------------------------------------------------------------------------------
# Training and evaluation
# ------------------------------------------------------------------------------------------------

class ProgressBar:
    """tqdm when it is installed, else a one-line text bar."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, dynamic_ncols=True)
        except ImportError:
            self._tqdm = None
        self.total, self.n, self.start = total, 0, time.time()

    def update(self, **info):
        self.n += 1
        text = " ".join(f"{k}={v}" for k, v in info.items())
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=False)
            self._tqdm.update(1)
            return
        if self.n % max(1, self.total // 50) == 0 or self.n == self.total:
            done = int(30 * self.n / self.total)
            rate = self.n / max(time.time() - self.start, 1e-9)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total} "
                             f"{rate:.1f} it/s {text}")
            sys.stderr.flush()

    def close(self):
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            sys.stderr.write("\n")


def rate_distortion(out, x, lmbda):
    n_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()) / n_pixels
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return lmbda * 255**2 * mse + bpp, bpp, mse


def psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train(model, images, args):
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=args.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3) if aux_params else None
    lr_decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(args.steps * 0.8)], 0.3)
    schedule = None
    if args.mode == "sua":
        schedule = SCHEDULES[args.schedule](args.t0, args.t_min, steps=args.steps).attach(model)

    g = torch.Generator().manual_seed(args.seed)
    bar = ProgressBar(args.steps)
    model.train()
    for step in range(args.steps):
        x = random_crops(images, args.batch, args.crop, g)
        loss, bpp, mse = rate_distortion(model(x), x, args.lmbda)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        optimizer.step()
        lr_decay.step()
        if aux_optimizer is not None:
            aux_optimizer.zero_grad()
            model.aux_loss().backward()
            aux_optimizer.step()
        info = dict(loss=f"{loss.item():.3f}", bpp=f"{bpp.item():.3f}",
                    psnr=f"{psnr(mse.item()):.2f}")
        if schedule is not None:
            info["T"] = f"{schedule.value:.3f}"
            schedule.step()
        bar.update(**info)
    bar.close()


@torch.no_grad()
def evaluate(model, image, args):
    _, h, w = image.shape
    x = image[None, :, : h // 64 * 64, : w // 64 * 64]
    model.eval()
    out = model(x)  # real rounding: lic_quant's eval path, CompressAI's "dequantize"
    _, bpp, mse = rate_distortion(out, x, args.lmbda)
    print(f"eval ({x.shape[2]}x{x.shape[3]}, real rounding): "
          f"estimated bpp {bpp.item():.4f}  PSNR {psnr(torch.mean((out['x_hat'].clamp(0, 1) - x) ** 2).item()):.2f} dB")
    if args.model != "compressai":
        return
    model.update(force=True)
    enc = model.compress(x)
    dec = model.decompress(enc["strings"], enc["shape"])
    n_bytes = sum(len(s) for strings in enc["strings"] for s in strings)
    actual_bpp = 8 * n_bytes / (x.shape[2] * x.shape[3])
    actual_mse = torch.mean((dec["x_hat"] - x) ** 2).item()
    print(f"eval (compress/decompress bitstream): {n_bytes} bytes = {actual_bpp:.4f} bpp  "
          f"PSNR {psnr(actual_mse):.2f} dB")


def parse_args(argv=None):
    try:
        import compressai  # noqa: F401

        default_model = "compressai"
    except ImportError:
        default_model = "tiny"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64, help="training crop size (multiple of 64)")
    p.add_argument("--N", type=int, default=32)
    p.add_argument("--M", type=int, default=48)
    p.add_argument("--lmbda", type=float, default=0.01, help="rate-distortion trade-off")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mode", choices=["sua", "mixed", "noise", "ste"], default="sua")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="exponential")
    p.add_argument("--t0", type=float, default=1.0, help="SUA start temperature")
    p.add_argument("--t-min", type=float, default=0.0, help="SUA final temperature")
    p.add_argument("--backend", default="auto", help="lic_quant backend (auto, reference, ...)")
    p.add_argument("--model", choices=["compressai", "tiny"], default=default_model)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, held_out, source = load_images()
    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data: {source}; model: {type(model).__name__} N={args.N} M={args.M} "
          f"({n_params / 1e3:.0f}k params); mode={args.mode}"
          + (f" ({args.schedule} T {args.t0} -> {args.t_min})" if args.mode == "sua" else "")
          + f"; {args.steps} steps of {args.batch}x{args.crop}x{args.crop}")
    if args.backend == "auto" and not lic_quant.extension_available():
        print("lic_quant's compiled kernels are not available here, so the pure-PyTorch reference "
              f"runs instead ({lic_quant._ops.EXTENSION_ERROR}); build them with "
              "`pip install --no-build-isolation .` or `bash scripts/setup_env.sh`")
    print(f"lic_quant {lic_quant.__file__}, backend {args.backend}")
    start = time.time()
    train(model, images, args)
    print(f"trained in {time.time() - start:.1f} s")
    evaluate(model, held_out, args)


if __name__ == "__main__":
    main()

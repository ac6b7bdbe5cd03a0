#!/usr/bin/env python
"""End to end: what lic_quant changes in a real training step of CompressAI models.

For each model, the same training step (forward, rate-distortion loss, backward, Adam step) with
CompressAI's own GaussianConditional and with lic_quant's (`replace_gaussian_conditionals(model,
mode=...)`; with --replace all also lic_quant's EntropyBottleneck, `replace_entropy_models`), eager
and under torch.compile. Reported per configuration: step time (median and
20/80 % quantiles over the timed steps) and, on CUDA, the peak memory a step allocates
(torch.cuda.max_memory_allocated above what is allocated before the step).

Models: MeanScaleHyperprior (mbt2018-mean), JointAutoregressiveHierarchicalPriors (mbt2018,
masked-convolution context model), Elic2022Official (ELIC: uneven channel groups, each with a
checkerboard context; CompressAI's latent-codec API) and Cheng2020GMM (CompressAI's
Cheng2020Anchor with Cheng et al.'s K = 3 Gaussian mixture: its entropy parameters widened to
3*K*M outputs, CompressAI's GaussianMixtureConditional against lic_quant's).

    python benchmarks/bench_e2e.py            # batch 16 of 256x256 on the GPU (CUDA if present)
    python benchmarks/bench_e2e.py --quick    # tiny sizes; about 2 minutes on 2 CPU cores

--quick compiles only the first model (torch.compile of each model costs tens of seconds on a
small CPU). Appends the rows to benchmarks/results/scratch/e2e.csv (ignored by git) or to --csv,
e.g. --csv benchmarks/results/e2e.csv to commit them; benchmarks/plot.py draws that file.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices from compressai
warnings.filterwarnings("ignore", category=UserWarning, module="torch._inductor")
# inductor's C++ backend imports cpp_extension, which logs a CUDA_HOME guess on GPU-less machines
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import lic_quant  # noqa: E402
import lic_quant.nn as lqnn  # noqa: E402
import results_csv  # noqa: E402  (benchmarks/ is the script's own directory)
from report import quantile  # noqa: E402
from compressai.entropy_models import GaussianMixtureConditional  # noqa: E402
from compressai.models import (  # noqa: E402
    Cheng2020Anchor,
    Elic2022Official,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
)
from torch import nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Cheng2020GMM(Cheng2020Anchor):
    """Cheng2020Anchor with the discretized Gaussian mixture of Cheng et al. (2020): the last
    layer of entropy_parameters gives 3*K*M channels (scales, means and weight logits, each in
    CompressAI's channel-blocked layout), the weights are softmaxed over the K components, and
    CompressAI's GaussianMixtureConditional gives the likelihoods of y."""

    def __init__(self, N=192, K=3):
        super().__init__(N=N)
        M = N
        self.K = K
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(M * 12 // 3, M * 10 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, 3 * K * M, 1),
        )
        self.gaussian_conditional = GaussianMixtureConditional(K=K)

    def forward(self, x):
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        params = self.h_s(z_hat)
        y_hat = self.gaussian_conditional.quantize(y, "noise" if self.training else "dequantize")
        ctx_params = self.context_prediction(y_hat)
        mixture_params = self.entropy_parameters(torch.cat((params, ctx_params), dim=1))
        scales, means, logits = mixture_params.chunk(3, 1)
        weights = logits.unflatten(1, (self.K, self.M)).softmax(1).flatten(1, 2)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means, weights)
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

# name -> (constructor at full size, constructor at --quick size)
MODELS = {
    "MeanScaleHyperprior": (lambda: MeanScaleHyperprior(N=128, M=192),
                            lambda: MeanScaleHyperprior(N=32, M=48)),
    "JointAutoregressive": (lambda: JointAutoregressiveHierarchicalPriors(N=192, M=192),
                            lambda: JointAutoregressiveHierarchicalPriors(N=32, M=48)),
    "ELIC": (lambda: Elic2022Official(N=192, M=320),
             lambda: Elic2022Official(N=32, M=64, groups=[8, 8, 16, 32])),
    "Cheng2020GMM": (lambda: Cheng2020GMM(N=192), lambda: Cheng2020GMM(N=32)),
}
MIXTURE_MODELS = {"Cheng2020GMM"}


def lic_quant_runs(model_name, device):
    """Whether lic_quant has kernels for this model's entropy model on `device` (the mixture
    kernels' backends are lic_quant.api.MIXTURE_BACKENDS)."""
    if model_name not in MIXTURE_MODELS:
        return True
    return ("cuda" if device.type == "cuda" else "cpu") in lic_quant.api.MIXTURE_BACKENDS


def all_likelihoods(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_likelihoods(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_likelihoods(v)


def rd_loss(out, x, lmbda=0.01):
    """CompressAI's RateDistortionLoss: bits per pixel of the image + lambda * 255^2 * MSE."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-torch.log2(lik).sum() for lik in all_likelihoods(out["likelihoods"])) / pixels
    return bpp + lmbda * 255**2 * torch.mean((out["x_hat"] - x) ** 2)


def build(model_name, quick, entropy, mode, device, replace="conditionals"):
    torch.manual_seed(0)  # the same weights for both entropy models
    model = MODELS[model_name][1 if quick else 0]()
    if entropy == "lic_quant":
        if replace == "all":  # the EntropyBottleneck too (docs/spec.md section 9)
            lqnn.replace_entropy_models(model, mode=mode)
        else:
            lqnn.replace_gaussian_conditionals(model, mode=mode)
    model = model.to(device).train()
    # The main parameters, as CompressAI's examples train them (the entropy bottleneck's
    # quantiles belong to a separate auxiliary loss that both variants share unchanged).
    params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    return model, torch.optim.Adam(params, lr=1e-4)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(model_name, entropy, compiled, args, device, batch):
    """The training step of one configuration, warmed up; its CUDA peak memory."""
    model, optimizer = build(model_name, args.quick, entropy, args.mode, device, args.replace)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    forward = torch.compile(model) if compiled else model

    def step():
        loss = rd_loss(forward(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # compilation, allocator, Adam's state
        loss = step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"{model_name}/{entropy}: the loss is {float(loss)}")
    peak_mib = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return {
        "step": step,
        "model": model_name,
        "entropy_model": ("compressai" if entropy == "compressai" else
                          f"lic_quant-{args.mode}" + ("+eb" if args.replace == "all" else "")),
        "compiled": compiled,
        "peak_mib": peak_mib,
        "warmup_s": warmup_s,
    }


def run_pair(model_name, compiled, args, device, batch):
    """CompressAI's entropy model and lic_quant's, timed step by step in alternation (the order
    flips every round), so load from other processes hits both alike."""
    configs = [prepare(model_name, entropy, compiled, args, device, batch)
               for entropy in ("compressai", "lic_quant")]
    times = [[], []]
    for k in range(args.steps):
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            sync(device)
            t = time.perf_counter()
            configs[i]["step"]()
            sync(device)
            times[i].append(time.perf_counter() - t)
    rows = []
    for config, ts in zip(configs, times):
        row = {k: v for k, v in config.items() if k != "step"}
        row.update(median_ms=statistics.median(ts) * 1e3, p20_ms=quantile(ts, 0.2) * 1e3,
                   p80_ms=quantile(ts, 0.8) * 1e3)
        rows.append(row)
    # Each round times both back to back: the median of the per-round ratios cancels load that
    # drifts between rounds better than the ratio of the two medians does.
    rows[1]["speedup"] = statistics.median(a / b for a, b in zip(*times))
    return rows


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def print_table(rows, header):
    """speedup: CompressAI's step time over lic_quant's, the median over rounds of the ratio of
    the two steps timed back to back (> 1: lic_quant faster)."""
    print(header)
    print(f"{'model':<20} {'entropy model':<18} {'compiled':<8} {'median ms':>10} "
          f"{'p20 ms':>9} {'p80 ms':>9} {'speedup':>8} {'peak MiB':>9}")
    for r in rows:
        speed = f"{r['speedup']:.3f}x" if r.get("speedup") else ""
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        print(f"{r['model']:<20} {r['entropy_model']:<18} {str(r['compiled']):<8} "
              f"{r['median_ms']:>10.2f} {r['p20_ms']:>9.2f} {r['p80_ms']:>9.2f} {speed:>8} "
              f"{peak:>9}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny models, batch 2 of 64x64, few steps (about 2 min on 2 CPU cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="images per step (default 16; --quick 2)")
    p.add_argument("--size", type=int, help="image side in pixels (default 256; --quick 64)")
    p.add_argument("--mode", default="mixed", choices=lic_quant.MODES,
                   help="lic_quant's training surrogate (default mixed)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", type=int, help="timed steps (default 30; --quick 8)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; --quick 3)")
    p.add_argument("--compile", choices=["all", "first", "none"],
                   help="which models also run under torch.compile (default all; --quick first)")
    p.add_argument("--csv", default=os.path.join(HERE, "results", "scratch", "e2e.csv"),
                   help="append the rows here (default benchmarks/results/scratch/e2e.csv; "
                        "benchmarks/results/e2e.csv is the committed one)")
    p.add_argument("--replace", choices=["conditionals", "all"], default="conditionals",
                   help="lic_quant's GaussianConditional only (replace_gaussian_conditionals), or "
                        "its EntropyBottleneck too (replace_entropy_models; entropy model "
                        "'lic_quant-<mode>+eb')")
    p.add_argument("--label", default="", help="what the commit does not say")
    args = p.parse_args(argv)
    q = args.quick
    args.batch = args.batch or (2 if q else 16)
    args.size = args.size or (64 if q else 256)
    args.steps = args.steps or (8 if q else 30)
    args.warmup = args.warmup or (3 if q else 10)
    args.compile = args.compile or ("first" if q else "all")

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    batch = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    backend = "CUDA kernels" if device.type == "cuda" else "C++ kernels"
    if not lic_quant.extension_available():
        backend = "the pure-PyTorch reference (the extension is not built!)"
    header = (f"# {device_name(device)}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; batch {args.batch} of {args.size}x"
              f"{args.size}; {args.steps} timed steps after {args.warmup}; lic_quant mode "
              f"{args.mode} on {backend}")
    print(header, flush=True)

    rows = []
    for i, model_name in enumerate(args.models):
        if not lic_quant_runs(model_name, device):
            print(f"  {model_name:<20} skipped: lic_quant has no mixture kernels for "
                  f"{device.type} tensors (lic_quant.api.MIXTURE_BACKENDS = "
                  f"{lic_quant.api.MIXTURE_BACKENDS})", flush=True)
            continue
        compile_it = args.compile == "all" or (args.compile == "first" and i == 0)
        for compiled in ([False, True] if compile_it else [False]):
            t0 = time.perf_counter()
            pair = run_pair(model_name, compiled, args, device, batch)
            rows += pair
            print(f"  {model_name:<20} compiled={compiled!s:<5} compressai "
                  f"{pair[0]['median_ms']:8.2f} ms/step, {pair[1]['entropy_model']} "
                  f"{pair[1]['median_ms']:8.2f} ms/step  ({time.perf_counter() - t0:.0f}s "
                  f"with warm-up)", flush=True)

    print()
    print_table(rows, header)
    fields = ["model", "entropy_model", "compiled", "median_ms", "p20_ms", "p80_ms", "speedup",
              "peak_mib", "warmup_s"]
    run = {"device": device.type, "threads": torch.get_num_threads(), "batch": args.batch,
           "size": args.size, "steps": args.steps, "warmup": args.warmup, "mode": args.mode}
    results_csv.append(args.csv, [{**run, **{k: r.get(k) for k in fields}} for r in rows],
                       label=args.label or ("--quick" if q else ""), device=str(device))
    print(f"\nappended {len(rows)} rows to {args.csv} (plots: python benchmarks/plot.py)")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""The op per likelihood family, forward + backward, side by side in one run (issue 16, item 5).

For each family (docs/spec.md section 6) three providers compute the same (y_hat, likelihoods)
and the gradients of y, scales and means for fixed upstream gradients (g_yhat ~ N(0, 1),
g_P = -1/P, the gradient of the rate term):

- eager:    lic_quant.reference's math for that family in eager PyTorch, noise by torch.rand_like
            (what a hand-written training step runs);
- compiled: the same function under torch.compile (Inductor);
- fused:    lq.quantize(..., family=...) (the C++ kernels on CPU tensors, CUDA on CUDA tensors).

and for a K-component Gaussian mixture (family column gmm<K>, docs/spec.md section 7; mixture
parameters K times y's size, CompressAI's channel-blocked layout, mode noise): eager and compiled
are CompressAI's GaussianMixtureConditional in training, fused is lq.mixture_quantize on views of
the same tensors.

The rounds interleave the providers (so a shared machine's load hits all of them alike), each
round is timed alone, and the table gives medians, 20/80 % quantiles and the speedup of the fused
op over each other provider measured in the same run.

The rate output (docs/spec.md section 8), same shape and mode, Gaussian, forward + backward of
loss = sum(bits) + <g_yhat, y_hat>:

- likelihoods+sum: lq.quantize, then bits = -likelihoods.log2().sum((1, 2, 3)) (what trainers
                   write after the op);
- rate:            lq.quantize(..., rate=True), the per-sample bits from the kernels.

The factorized prior (docs/spec.md section 9, --parts eb), forward + backward of the whole module
(gradients of z and of every parameter; g_zhat ~ N(0, 1), g_P = -1/P) at each of --eb-shapes,
mode noise, with the same parameters in all three:

- eager:    CompressAI's EntropyBottleneck in training;
- compiled: the same module under torch.compile;
- fused:    lic_quant.nn.EntropyBottleneck (one op each way).

Beside the time, each gets the peak memory of one step above what the inputs hold: on CUDA from
torch.cuda.max_memory_allocated, on the CPU from torch.profiler's allocation events (the running
sum of allocations and frees, its maximum).

    python benchmarks/bench_entropy_models.py [--shape 8x192x32x32] [--rounds 15]
        [--parts families,rate,eb] [--csv benchmarks/results/entropy_models.csv]
        [--rate-csv benchmarks/results/rate_output.csv]
        [--eb-shapes 16x128x4x4,16x192x8x8,16x192x16x16]
        [--eb-csv benchmarks/results/entropy_bottleneck.csv] [--label TEXT]
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lic_quant as lq  # noqa: E402
import results_csv  # noqa: E402
from lic_quant.reference import quantize_reference  # noqa: E402

MODE, TEMPERATURE = "mixed", 0.5


def make_case(shape, dtype, device, family):
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)
    scales = (torch.rand(shape, generator=g) * 2 + 0.05).to(device=device, dtype=dtype)
    means = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    _, lik = lq.quantize(y, scales, means, family=family, mode=MODE, seed=1, backend="reference")
    g_yhat = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    return (y, scales, means), g_yhat, (-1.0 / lik).detach()


def blocked_view(t, k):
    """CompressAI's channel-blocked (N, K*M, H, W) parameters as lic_quant's (K, N, M, H, W)."""
    return t.unflatten(1, (k, t.shape[1] // k)).movedim(1, 0)


def make_mixture_case(shape, device, k):
    """y and CompressAI's channel-blocked scales, means and weights (probabilities) of a K-component
    Gaussian mixture, mixture parameters K times y's size."""
    g = torch.Generator().manual_seed(0)
    full = (shape[0], k * shape[1], *shape[2:])
    y = (torch.randn(shape, generator=g) * 3).to(device)
    scales = (torch.rand(full, generator=g) * 2 + 0.05).to(device)
    means = torch.randn(full, generator=g).to(device)
    weights = torch.softmax(blocked_view(torch.randn(full, generator=g), k), 0)
    weights = weights.movedim(0, 1).flatten(1, 2).contiguous().to(device)
    _, lik = lq.mixture_quantize(y, *(blocked_view(t, k) for t in (scales, means, weights)),
                                 seed=1, backend="reference")
    g_yhat = torch.randn(shape, generator=g).to(device)
    return (y, scales, means, weights), g_yhat, (-1.0 / lik).detach()


def compressai_mixture_fn(k, device):
    from compressai.entropy_models import GaussianMixtureConditional

    module = GaussianMixtureConditional(K=k).to(device).train()  # its bounds are buffers
    return lambda y, scales, means, weights: module(y, scales, means, weights)


def fused_mixture_fn(k):
    def fn(y, scales, means, weights):
        return lq.mixture_quantize(y, *(blocked_view(t, k) for t in (scales, means, weights)))
    return fn


def eager_fn(family):
    def fn(y, scales, means):
        u = torch.rand_like(y, dtype=torch.float32) - 0.5
        return quantize_reference(y, scales, means, u, family=family, mode=MODE,
                                  temperature=TEMPERATURE)
    return fn


def fused_fn(family):
    def fn(y, scales, means):
        return lq.quantize(y, scales, means, family=family, mode=MODE, temperature=TEMPERATURE)
    return fn


def train_step(fn, case):
    if isinstance(fn, _Whole):
        fn.step(case)
        return
    inputs, g_yhat, g_lik = case
    leaves = [t.detach().requires_grad_() for t in inputs]
    y_hat, lik = fn(*leaves)
    torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])


def measure(cases: dict, rounds: int, sync) -> dict:
    """cases: name -> (fn, case). Median and quantiles of per-round times in ms."""
    for fn, case in cases.values():  # warm-up: compilation, allocator, first touch
        for _ in range(2):
            train_step(fn, case)
    times = {name: [] for name in cases}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, (fn, case) in cases.items():
                sync()
                t0 = time.perf_counter()
                train_step(fn, case)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        gc.enable()
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=5)
        out[name] = (statistics.median(ts), q[0], q[-1])
    return out


# ---------------------------------------------------------------------------------------------
# The rate output.


def likelihoods_sum_fn(y, scales, means):
    y_hat, lik = lq.quantize(y, scales, means, mode=MODE, temperature=TEMPERATURE)
    return y_hat, -lik.log2().sum(tuple(range(1, lik.dim())))


def rate_fn(y, scales, means):
    return lq.quantize(y, scales, means, mode=MODE, temperature=TEMPERATURE, rate=True)


def rate_step(fn, case):
    y, scales, means, g_yhat = case
    leaves = [t.detach().requires_grad_() for t in (y, scales, means)]
    y_hat, bits = fn(*leaves)
    torch.autograd.backward([y_hat, bits], [g_yhat, torch.ones_like(bits)])


def cpu_peak_bytes(step) -> int:
    """Peak of the running sum of the CPU allocations and frees while step() runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    # The raw allocation events (the per-op view of prof.events() nets them out within each op).
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def cuda_peak_bytes(step) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def rate_comparison(shape, device, rounds, sync):
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(shape, generator=g) * 3).to(device)
    scales = (torch.rand(shape, generator=g) * 2 + 0.05).to(device)
    means = torch.randn(shape, generator=g).to(device)
    g_yhat = torch.randn(shape, generator=g).to(device)
    case = (y, scales, means, g_yhat)
    providers = {"likelihoods+sum": likelihoods_sum_fn, "rate": rate_fn}
    for fn in providers.values():  # warm-up
        for _ in range(2):
            rate_step(fn, case)
    peak = cuda_peak_bytes if device.type == "cuda" else cpu_peak_bytes
    peaks = {name: peak(lambda fn=fn: rate_step(fn, case)) for name, fn in providers.items()}
    times = {name: [] for name in providers}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in providers.items():
                sync()
                t0 = time.perf_counter()
                rate_step(fn, case)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        gc.enable()
    stats = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=5)
        stats[name] = (statistics.median(ts), q[0], q[-1])
    return stats, peaks


# ---------------------------------------------------------------------------------------------
# The factorized prior.


def eb_modules(channels: int, device):
    """CompressAI's EntropyBottleneck with perturbed parameters (not the flat initial CDF) and
    lic_quant's with the same state, both in training."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from compressai.entropy_models import EntropyBottleneck
    import lic_quant.nn as lqnn

    torch.manual_seed(0)
    reference = EntropyBottleneck(channels)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    fused = lqnn.EntropyBottleneck(channels, mode="noise")
    fused.load_state_dict(reference.state_dict())
    return reference.to(device).train(), fused.to(device).train()


def make_eb_case(shape, device, module):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(shape, generator=g) * 3).to(device)
    g_zhat = torch.randn(shape, generator=g).to(device)
    with torch.no_grad():
        _, lik = module(z)
    return z, g_zhat, (-1.0 / lik).detach()


def eb_step(module, case):
    z, g_zhat, g_lik = case
    for p in module.parameters():
        p.grad = None
    z_hat, lik = module(z.detach().requires_grad_())
    torch.autograd.backward([z_hat, lik], [g_zhat, g_lik])


def run_eb(args, device, sync) -> None:
    cases = {}
    for text in args.eb_shapes.split(","):
        shape = tuple(int(d) for d in text.split("x"))
        reference, fused = eb_modules(shape[1], device)
        case = make_eb_case(shape, device, reference)
        compiled = torch.compile(reference)
        providers = [("eager", reference), ("compiled", compiled), ("fused", fused)]
        if device.type == "cuda":  # fused: the CUDA kernels (auto); fused-triton: the Triton ones
            fused_triton = copy.deepcopy(fused)
            fused_triton.backend = "triton"
            providers.append(("fused-triton", fused_triton))
        for provider, module in providers:
            cases[(text, provider)] = (lambda c, m=module: eb_step(m, c), case)
    # measure() calls fn(*inputs) through train_step; the EB steps take the case whole.
    result = measure_steps(cases, args.rounds, sync)
    print(f"EntropyBottleneck forward + backward, float32, mode=noise, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, {results_csv.machine_name(str(device))}")
    print(f"{'shape':14s} {'provider':10s} {'median ms':>10s} {'q20':>8s} {'q80':>8s} "
          f"{'fused speedup':>14s}")
    rows = []
    for (shape, provider), (med, q20, q80) in result.items():
        fused = result[(shape, "fused")][0]
        print(f"{shape:14s} {provider:10s} {med:10.2f} {q20:8.2f} {q80:8.2f} "
              f"{med / fused:13.2f}x")
        rows.append({"device": str(device), "shape": shape, "dtype": "float32",
                     "step": "forward+backward", "mode": "noise", "provider": provider,
                     "threads": torch.get_num_threads(), "rounds": args.rounds,
                     "median_ms": f"{med:.4f}", "q20_ms": f"{q20:.4f}", "q80_ms": f"{q80:.4f}",
                     "fused_speedup": f"{med / fused:.3f}"})
    if args.eb_csv:
        results_csv.append(args.eb_csv, rows, label=args.label, device=str(device))
        print(f"appended {len(rows)} rows to {args.eb_csv}")


def measure_steps(cases: dict, rounds: int, sync) -> dict:
    """As measure(), for cases name -> (step, case) whose step(case) runs one training step."""
    wrapped = {name: (_Whole(step), case) for name, (step, case) in cases.items()}
    return measure(wrapped, rounds, sync)


class _Whole:
    """Lets measure()'s train_step run a step that takes its case whole."""

    def __init__(self, step):
        self.step = step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8x192x32x32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=",".join(lq.FAMILIES))
    ap.add_argument("--mixture-k", type=int, default=3,
                    help="with families: also a K-component Gaussian mixture vs CompressAI's "
                         "GaussianMixtureConditional (0: none)")
    ap.add_argument("--parts", default="families,rate",
                    help="families (the op per family, and the mixture), rate (the rate "
                         "output) and/or eb (the EntropyBottleneck), run in this order")
    ap.add_argument("--csv", help="append the family and mixture rows to this CSV")
    ap.add_argument("--rate-csv", help="append the rate rows to this CSV")
    ap.add_argument("--eb-shapes", default="16x128x4x4,16x192x8x8,16x192x16x16",
                    help="with eb: the shapes (N x C x H x W) of z")
    ap.add_argument("--eb-csv", help="append the EntropyBottleneck rows to this CSV")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    shape = tuple(int(d) for d in args.shape.split("x"))
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    families = args.families.split(",")
    runs = {"families": lambda: run_families(args, shape, device, sync, families),
            "rate": lambda: run_rate(args, shape, device, sync),
            "eb": lambda: run_eb(args, device, sync)}
    for part in args.parts.split(","):  # in the order given; each appends its rows when done
        if part not in runs:
            ap.error(f"--parts: unknown part {part!r} (families, rate, eb)")
        runs[part]()


def run_rate(args, shape, device, sync) -> None:
    stats, peaks = rate_comparison(shape, device, args.rounds, sync)
    print(f"rate output: forward + backward, float32, {args.shape}, gaussian, mode={MODE}, "
          f"{args.rounds} rounds, {torch.get_num_threads()} threads, "
          f"{results_csv.machine_name(str(device))}")
    print(f"{'provider':16s} {'median ms':>10s} {'q20':>8s} {'q80':>8s} {'peak MiB':>9s} "
          f"{'rate speedup':>13s}")
    rows = []
    fused = stats["rate"][0]
    for name, (med, q20, q80) in stats.items():
        mib = peaks[name] / 2**20
        print(f"{name:16s} {med:10.2f} {q20:8.2f} {q80:8.2f} {mib:9.1f} {med / fused:12.2f}x")
        rows.append({"device": str(device), "shape": args.shape, "dtype": "float32",
                     "step": "forward+backward", "mode": MODE, "family": "gaussian",
                     "provider": name, "threads": torch.get_num_threads(),
                     "rounds": args.rounds, "median_ms": f"{med:.4f}", "q20_ms": f"{q20:.4f}",
                     "q80_ms": f"{q80:.4f}", "peak_mib": f"{mib:.2f}",
                     "rate_speedup": f"{med / fused:.3f}"})
    if args.rate_csv:
        results_csv.append(args.rate_csv, rows, label=args.label, device=str(device))
        print(f"appended {len(rows)} rows to {args.rate_csv}")


def run_families(args, shape, device, sync, families) -> None:
    cases = {}
    for family in families:
        case = make_case(shape, torch.float32, device, family)
        cases[(family, "eager")] = (eager_fn(family), case)
        cases[(family, "compiled")] = (torch.compile(eager_fn(family)), case)
        cases[(family, "fused")] = (fused_fn(family), case)
    if args.mixture_k:
        k = args.mixture_k
        case = make_mixture_case(shape, device, k)
        name = f"gmm{k}"  # provider names: CompressAI's module eager and under torch.compile
        cases[(name, "eager")] = (compressai_mixture_fn(k, device), case)
        cases[(name, "compiled")] = (torch.compile(compressai_mixture_fn(k, device)), case)
        cases[(name, "fused")] = (fused_mixture_fn(k), case)
    result = measure(cases, args.rounds, sync)

    print(f"forward + backward, float32, {args.shape}, mode={MODE}, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, {results_csv.machine_name(str(device))}")
    print(f"{'family':10s} {'provider':10s} {'median ms':>10s} {'q20':>8s} {'q80':>8s} "
          f"{'fused speedup':>14s}")
    rows = []
    for (family, provider), (med, q20, q80) in result.items():
        fused = result[(family, "fused")][0]
        speedup = med / fused
        print(f"{family:10s} {provider:10s} {med:10.2f} {q20:8.2f} {q80:8.2f} {speedup:13.2f}x")
        rows.append({"device": str(device), "shape": args.shape, "dtype": "float32",
                     "step": "forward+backward", "mode": MODE, "family": family,
                     "provider": provider, "threads": torch.get_num_threads(),
                     "rounds": args.rounds, "median_ms": f"{med:.4f}", "q20_ms": f"{q20:.4f}",
                     "q80_ms": f"{q80:.4f}", "fused_speedup": f"{speedup:.3f}"})
    if args.csv:
        results_csv.append(args.csv, rows, label=args.label, device=str(device))
        print(f"appended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()

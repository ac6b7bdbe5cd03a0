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

    python benchmarks/bench_entropy_models.py [--shape 8x192x32x32] [--rounds 15]
        [--csv benchmarks/results/entropy_models.csv] [--label TEXT]
"""
from __future__ import annotations

import argparse
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


def compressai_mixture_fn(k):
    from compressai.entropy_models import GaussianMixtureConditional

    module = GaussianMixtureConditional(K=k).train()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8x192x32x32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=",".join(lq.FAMILIES))
    ap.add_argument("--mixture-k", type=int, default=3,
                    help="also a K-component Gaussian mixture vs CompressAI's "
                         "GaussianMixtureConditional (0: none)")
    ap.add_argument("--csv", help="append the rows to this CSV")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    shape = tuple(int(d) for d in args.shape.split("x"))
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    families = args.families.split(",")

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
        cases[(name, "eager")] = (compressai_mixture_fn(k), case)
        cases[(name, "compiled")] = (torch.compile(compressai_mixture_fn(k)), case)
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

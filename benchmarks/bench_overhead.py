"""Host overhead of one eager call: the fused op against a built-in op, on the CPU (issue 9).

With 64-element tensors the kernels' arithmetic is a few hundred nanoseconds, so what is timed is
the host work around it: argument checks, the seed and temperature, dispatch, autograd. The
yardstick is torch.mul, the cheapest differentiable built-in, forward and forward +
torch.autograd.grad, on the same inputs in the same run. The cases are interleaved round by round
so that the load of a shared machine hits all of them alike, every call is timed on its own, and
Python's garbage collector is off (as timeit does); the table gives medians and 20/80 % quantiles
of the per-call times, and the ratio of medians to torch.mul.

    python benchmarks/bench_overhead.py            # about 30 s
    python benchmarks/bench_overhead.py --quick    # about 5 s
    python benchmarks/bench_overhead.py --csv benchmarks/results/overhead.csv [--label TEXT]

The bar of issue 9: forward + autograd.grad of gaussian_quantize(backend="cpu", seed=None) at
most 1.5x that of torch.mul. gaussian_quantize has two outputs; a gradient of both through
torch.autograd.grad pays per output in autograd.grad's own Python, so the table also times two
built-in ops with two outputs (torch.mul + torch.add) and the fused op's likelihoods alone.
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


def make_cases(n: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(n, generator=g, dtype=dtype).requires_grad_()
    s = (torch.rand(n, generator=g, dtype=dtype) + 0.2).requires_grad_()
    m = torch.randn(n, generator=g, dtype=dtype).requires_grad_()
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g_y, g_lik = torch.ones(n, dtype=dtype), torch.ones(n, dtype=lik_dtype)

    def mul_fwd():
        torch.mul(y, s)

    def mul_step():
        torch.autograd.grad(torch.mul(y, s), (y, s), g_y)

    def mul_add_step():  # two built-in outputs: what a second output costs in autograd.grad
        a, b = torch.mul(y, s), torch.add(y, s)
        torch.autograd.grad((a, b), (y, s), (g_y, g_y))

    def fused_fwd():
        lq.gaussian_quantize(y, s, backend="cpu", seed=None)

    def fused_step():
        y_hat, lik = lq.gaussian_quantize(y, s, backend="cpu", seed=None)
        torch.autograd.grad((y_hat, lik), (y, s), (g_y, g_lik))

    def fused_step_rate():  # the likelihoods alone (y_hat unused)
        _, lik = lq.gaussian_quantize(y, s, backend="cpu", seed=None)
        torch.autograd.grad(lik, (y, s), g_lik)

    def fused_step_means():
        y_hat, lik = lq.gaussian_quantize(y, s, m, backend="cpu", seed=None)
        torch.autograd.grad((y_hat, lik), (y, s, m), (g_y, g_lik))

    seed_t = torch.tensor(7)
    temp_t = torch.tensor(0.5, dtype=torch.float64)

    def fused_step_tensors():
        y_hat, lik = lq.gaussian_quantize(y, s, backend="cpu", seed=seed_t, temperature=temp_t)
        torch.autograd.grad((y_hat, lik), (y, s), (g_y, g_lik))

    module = lq.nn.GaussianConditional(None, mode="sua", backend="cpu").train()

    def module_step():  # the CompressAI drop-in, as a model calls it
        y_hat, lik = module(y, s)
        torch.autograd.grad((y_hat, lik), (y, s), (g_y, g_lik))

    def reference_step():
        y_hat, lik = lq.gaussian_quantize(y, s, backend="reference", seed=None)
        torch.autograd.grad((y_hat, lik), (y, s), (g_y, g_lik))

    return {
        "torch.mul forward": mul_fwd,
        "gaussian_quantize forward": fused_fwd,
        "torch.mul fwd + autograd.grad": mul_step,
        "torch.mul + torch.add (2 outputs)": mul_add_step,
        "gaussian_quantize fwd + autograd.grad": fused_step,
        "  likelihoods only (1 output)": fused_step_rate,
        "  with means (3 grads)": fused_step_means,
        "  seed and T as tensors": fused_step_tensors,
        "  nn.GaussianConditional": module_step,
        "  backend='reference'": reference_step,
    }


def measure(cases: dict, rounds: int, calls: int) -> dict:
    """Per-call times (us) of each case, `rounds` x `calls` calls each, every call timed on its
    own: on a shared machine a loop of many calls is almost always preempted somewhere, a single
    call mostly not, so medians of single calls measure the host work, not the neighbours."""
    for fn in cases.values():  # warm-up: first-call costs (dispatch caches, allocator)
        for _ in range(50):
            fn()
    samples = {name: [] for name in cases}
    clock = time.perf_counter
    # As timeit does: Python's cyclic garbage collector off while timing. A full collection walks
    # every object torch has created (milliseconds) and lands in whichever case happens to run.
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in cases.items():
                out = samples[name]
                for _ in range(calls):
                    t0 = clock()
                    fn()
                    out.append((clock() - t0) * 1e6)
    finally:
        gc.enable()
    return samples


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report(samples: dict) -> list[dict]:
    """Prints the table; returns its rows (case names without the table's indentation)."""
    med = {name: statistics.median(v) for name, v in samples.items()}
    base = {"forward": med["torch.mul forward"], "step": med["torch.mul fwd + autograd.grad"]}
    print(f"{'case':40s} {'median us':>10s} {'q20':>8s} {'q80':>8s} {'vs torch.mul':>13s}")
    rows = []
    for name, v in samples.items():
        ref = base["forward"] if "forward" in name else base["step"]
        rows.append({"case": name.strip(), "median_us": round(med[name], 3),
                     "q20_us": round(quantile(v, 0.2), 3), "q80_us": round(quantile(v, 0.8), 3),
                     "vs_torch_mul": round(med[name] / ref, 4)})
        print(f"{name:40s} {med[name]:10.2f} {quantile(v, 0.2):8.2f} {quantile(v, 0.8):8.2f} "
              f"{med[name] / ref:12.2f}x")
    ratio = med["gaussian_quantize fwd + autograd.grad"] / base["step"]
    print(f"\nbar (issue 9): fused fwd + autograd.grad / torch.mul = {ratio:.2f}x (at most 1.5x); "
          f"two built-in outputs (mul + add): "
          f"{med['torch.mul + torch.add (2 outputs)'] / base['step']:.2f}x")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 5 s)")
    parser.add_argument("--numel", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--csv", help="append the rows to this CSV, e.g. "
                        "benchmarks/results/overhead.csv (date, commit and machine added)")
    parser.add_argument("--label", default="", help="what the commit does not say")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not lq.extension_available():
        print(f"lic_quant: {lq._ops.missing_extension_message()}", file=sys.stderr)
        return 1
    rounds, calls = (20, 100) if args.quick else (100, 200)
    print(f"lic_quant host overhead, {args.numel} float32 elements, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {rounds} rounds x {calls} calls per case")
    rows = report(measure(make_cases(args.numel, torch.float32), rounds, calls))
    if args.csv:
        run = {"threads": torch.get_num_threads(), "numel": args.numel, "rounds": rounds,
               "calls": calls}
        results_csv.append(args.csv, [{**run, **r} for r in rows], label=args.label)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

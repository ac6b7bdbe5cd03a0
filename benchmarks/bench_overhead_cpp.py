"""Host overhead below Python: where the microseconds of an eager call go (issue 9).

bench_overhead.py times what a user sees from Python, where torch.autograd.grad's own Python
(argument checks per output, about 10 us for each output on the development VM) is a large part
of every case. This script times the same work from C++, with no Python in the loop, so the op's
own costs can be read apart: the forward with and without autograd recording, the backward kernel
alone, the autograd engine's backward on a kept graph (retain_graph) with one and with two roots,
and whole steps; torch.mul and torch.mul + torch.add alongside. It compiles a small C++ module
with torch.utils.cpp_extension (about 30 s; needs the compiler the extension was built with).

    python benchmarks/bench_overhead_cpp.py [--numel 64] [--calls 20000]
        [--csv benchmarks/results/overhead_cpp.csv] [--label TEXT]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import lic_quant as lq  # noqa: E402
import results_csv  # noqa: E402

SOURCE = r"""
#include <torch/extension.h>
#include <torch/csrc/autograd/autograd.h>
#include <ATen/ScalarOps.h>

#include <algorithm>
#include <chrono>

#include "lic_quant/op_handles.h"

using at::Tensor;

// Best of 7 rounds of `calls` calls, in us per call: the least disturbed round of a shared VM.
template <class F>
double per_call_us(F f, int calls) {
  for (int i = 0; i < std::min(calls, 1000); ++i) f();
  double best = 1e30;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::micro>(t1 - t0).count() / calls);
  }
  return best;
}

std::vector<std::pair<std::string, double>> measure(Tensor y, Tensor s, int64_t calls) {
  pybind11::gil_scoped_release no_gil;  // the autograd engine refuses to run holding the GIL
  const auto& fwd = lic_quant::forward_op();
  const auto& bwd = lic_quant::backward_op();
  const int n = static_cast<int>(calls);
  const Tensor seed = at::detail::scalar_tensor_static(7, at::kLong, at::kCPU);
  const Tensor temp = at::detail::scalar_tensor_static(1.0, at::kDouble, at::kCPU);
  const Tensor g = at::ones_like(y).detach();
  const Tensor yd = y.detach(), sd = s.detach();
  auto op = [&](const Tensor& a, const Tensor& b) {
    return fwd.call(a, b, std::nullopt, seed, temp, "sua", 0.11, 1e-9, true, "gaussian", false);
  };
  std::vector<std::pair<std::string, double>> out;
  auto add = [&](const char* name, double us) { out.emplace_back(name, us); };
  add("torch.mul, no grad", per_call_us([&] { at::mul(yd, sd); }, n));
  add("fused forward, no grad", per_call_us([&] { op(yd, sd); }, n));
  add("torch.mul, recorded", per_call_us([&] { at::mul(y, s); }, n));
  add("fused forward, recorded", per_call_us([&] { op(y, s); }, n));
  add("fused backward kernel", per_call_us([&] {
        at::AutoDispatchBelowADInplaceOrView below;
        bwd.call(g, g, yd, sd, std::nullopt, seed, temp, "sua", 0.11, 1e-9, true,
                 {true, true, false}, "gaussian", false);
      }, n));
  {
    const Tensor m = at::mul(y, s), a = at::add(y, s);
    auto [y_hat, lik] = op(y, s);
    add("engine: mul graph", per_call_us([&] {
          torch::autograd::grad({m}, {y, s}, {g}, /*retain_graph=*/true);
        }, n));
    add("engine: mul + add graph", per_call_us([&] {
          torch::autograd::grad({m, a}, {y, s}, {g, g}, true);
        }, n));
    add("engine: fused, likelihoods", per_call_us([&] {
          torch::autograd::grad({lik}, {y, s}, {g}, true);
        }, n));
    add("engine: fused, both outputs", per_call_us([&] {
          torch::autograd::grad({y_hat, lik}, {y, s}, {g, g}, true);
        }, n));
  }
  add("step: torch.mul", per_call_us([&] {
        torch::autograd::grad({at::mul(y, s)}, {y, s}, {g});
      }, n));
  add("step: torch.mul + torch.add", per_call_us([&] {
        torch::autograd::grad({at::mul(y, s), at::add(y, s)}, {y, s}, {g, g});
      }, n));
  add("step: fused, both outputs", per_call_us([&] {
        auto [y_hat, lik] = op(y, s);
        torch::autograd::grad({y_hat, lik}, {y, s}, {g, g});
      }, n));
  return out;
}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=64)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--csv", help="append the rows to this CSV, e.g. "
                        "benchmarks/results/overhead_cpp.csv (date, commit and machine added)")
    parser.add_argument("--label", default="", help="what the commit does not say")
    args = parser.parse_args(argv)
    if not lq.extension_available():
        print(f"lic_quant: {lq._ops.missing_extension_message()}", file=sys.stderr)
        return 1
    from torch.utils.cpp_extension import load_inline

    build = os.path.join(tempfile.gettempdir(), "lic_quant_bench_overhead_cpp")
    os.makedirs(build, exist_ok=True)
    module = load_inline("lic_quant_bench_overhead_cpp", cpp_sources=SOURCE,
                         functions=["measure"], extra_cflags=["-O2"], build_directory=build,
                         extra_include_paths=[os.path.join(ROOT, "csrc")])
    g = torch.Generator().manual_seed(0)
    y = torch.randn(args.numel, generator=g).requires_grad_()
    s = (torch.rand(args.numel, generator=g) + 0.2).requires_grad_()
    print(f"lic_quant host overhead from C++, {args.numel} float32 elements, torch "
          f"{torch.__version__}; best of 7 rounds of {args.calls} calls, us per call")
    rows = module.measure(y, s, args.calls)
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:{width}s} {us:8.3f}")
    if args.csv:
        results_csv.append(args.csv, [{"numel": args.numel, "rounds": 7, "calls": args.calls,
                                       "case": name, "us_per_call": round(us, 4)}
                                      for name, us in rows], label=args.label)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU kernel benchmark (pytest-benchmark): eager reference vs torch.compile(reference) vs the
fused C++ op, forward and forward+backward. Run through scripts/bench_cpu.sh, which prints the
table (benchmarks/report.py); kept out of the test run (testpaths = tests)."""
from __future__ import annotations

import pytest
import torch

from providers import forward_step, make_case, providers, train_step

SHAPES = {"16x320x16x16": (16, 320, 16, 16), "8x192x64x64": (8, 192, 64, 64)}
PROVIDERS = providers()
_cases = {}


def case_for(shape_name):
    if shape_name not in _cases:
        _cases[shape_name] = make_case(SHAPES[shape_name])
    return _cases[shape_name]


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("step", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cpu(benchmark, shape, step, provider):
    fn = PROVIDERS[provider]
    case = case_for(shape)
    run = forward_step if step == "forward" else train_step
    for _ in range(2):  # warm-up: compilation, allocator, first-touch
        run(fn, case)
    benchmark.group = f"{shape} {step}"
    benchmark.extra_info.update(shape=shape, step=step, provider=provider,
                                threads=torch.get_num_threads())
    benchmark.pedantic(run, args=(fn, case), rounds=15, iterations=1, warmup_rounds=1)

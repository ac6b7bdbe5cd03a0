"""Smoke test of benchmarks/bench_e2e.py (run by hand, so CI keeps it working): the Cheng2020 GMM
model builds with CompressAI's and lic_quant's mixture conditional, and a tiny eager run prints
and appends its rows with the columns of benchmarks/results/e2e.csv. No timing is asserted."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

import lic_quant as lq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built")
pytest.importorskip("compressai")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_e2e
    finally:
        sys.path.pop(0)
    return bench_e2e


def test_cheng2020_gmm_swaps_its_mixture(bench):
    import lic_quant.nn as lnn

    cpu = torch.device("cpu")
    theirs, _ = bench.build("Cheng2020GMM", True, "compressai", "mixed", cpu)
    ours, _ = bench.build("Cheng2020GMM", True, "lic_quant", "mixed", cpu)
    assert type(theirs.gaussian_conditional).__module__.startswith("compressai")
    assert type(ours.gaussian_conditional) is lnn.GaussianMixtureConditional
    assert ours.gaussian_conditional.mode == "mixed" and ours.gaussian_conditional.K == 3
    assert ours.entropy_parameters[-1].out_channels == 3 * 3 * ours.M
    x = torch.rand(1, 3, 64, 64)
    for model in (theirs, ours):
        out = model(x)
        assert out["x_hat"].shape == x.shape
        assert out["likelihoods"]["y"].shape == (1, model.M, 4, 4)


def test_bench_e2e_runs_the_gmm_model(tmp_path):
    out = tmp_path / "e2e.csv"
    # The worktree's lic_quant first (the script's own directory comes first on sys.path).
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_e2e.py"), "--quick",
         "--models", "Cheng2020GMM", "--compile", "none", "--batch", "1", "--steps", "1",
         "--warmup", "1", "--csv", str(out), "--label", "smoke"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Cheng2020GMM" in result.stdout and "lic_quant-mixed" in result.stdout
    rows = list(csv.DictReader(open(out)))
    with open(os.path.join(ROOT, "benchmarks", "results", "e2e.csv"), newline="") as f:
        assert list(rows[0]) == next(csv.reader(f))
    assert [(r["model"], r["entropy_model"], r["compiled"]) for r in rows] == [
        ("Cheng2020GMM", "compressai", "False"), ("Cheng2020GMM", "lic_quant-mixed", "False")]
    assert all(float(r["median_ms"]) > 0 for r in rows) and {r["label"] for r in rows} == {"smoke"}


def test_replace_all_swaps_both_entropy_models(bench):
    """--replace all: lic_quant's conditional and its EntropyBottleneck, and a training step runs
    with gradients reaching the bottleneck's parameters."""
    import lic_quant.nn as lnn

    model, _ = bench.build("Cheng2020GMM", True, "lic_quant", "mixed", torch.device("cpu"),
                           replace="all")
    assert type(model.gaussian_conditional) is lnn.GaussianMixtureConditional
    assert type(model.entropy_bottleneck) is lnn.EntropyBottleneck
    assert model.entropy_bottleneck.mode == "mixed"
    out = model(torch.rand(1, 3, 64, 64))
    sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.entropy_bottleneck.matrices)

"""Smoke test of benchmarks/bench_entropy_models.py (run by hand and by scripts/gpu_run.sh, so CI
keeps it working): every part (families and the mixture against CompressAI's
GaussianMixtureConditional, the rate output, the EntropyBottleneck) runs on tiny shapes and
appends rows with the columns of the committed CSVs. No timing is asserted."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

import lic_quant as lq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built")
pytest.importorskip("compressai")


def test_every_part_appends_rows_with_the_committed_columns(tmp_path):
    paths = {name: tmp_path / f"{name}.csv"
             for name in ("entropy_models", "rate_output", "entropy_bottleneck")}
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_entropy_models.py"),
         "--shape", "2x4x3x3", "--rounds", "2", "--families", "laplace", "--mixture-k", "2",
         "--parts", "families,rate,eb", "--eb-shapes", "2x3x2x2",
         "--csv", str(paths["entropy_models"]), "--rate-csv", str(paths["rate_output"]),
         "--eb-csv", str(paths["entropy_bottleneck"]), "--label", "smoke"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {
        "entropy_models": {(f, p) for f in ("laplace", "gmm2")
                           for p in ("eager", "compiled", "fused")},
        "rate_output": {("gaussian", "likelihoods+sum"), ("gaussian", "rate")},
        "entropy_bottleneck": {("2x3x2x2", p) for p in ("eager", "compiled", "fused")},
    }
    for name, path in paths.items():
        rows = list(csv.DictReader(open(path)))
        with open(os.path.join(ROOT, "benchmarks", "results", f"{name}.csv"), newline="") as f:
            assert list(rows[0]) == next(csv.reader(f)), name
        key = "shape" if name == "entropy_bottleneck" else "family"
        assert {(r[key], r["provider"]) for r in rows} == expected[name]
        assert all(float(r["median_ms"]) > 0 for r in rows) and {r["label"] for r in rows} == {
            "smoke"}
